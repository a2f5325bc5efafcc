"""What a session trains from: its plan, and the weights the plan starts from.

Kept apart from :class:`hubfsm.runtime.session.Session` because it knows the hub
record's download fields (``weights_*`` and ``resume_*``), which the session does not
need to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hubfsm.core import protocol
from hubfsm.core.answers import TrainingPlan, plan_for_file, plan_from_record
from hubfsm.core.identifier import Identifier
from hubfsm.logs import get_logger
from hubfsm.transport import Downloader, Transport, TransportError

log = get_logger("hubfsm")


def plan_of(
    identifier: Identifier, create_args: Mapping[str, Any], record: Mapping[str, Any]
) -> TrainingPlan:
    """The plan of a session: a local file's with its arguments, else the record's."""
    filename = identifier.filename
    if filename is not None:
        return plan_for_file(filename, dict(create_args))
    return plan_from_record(record)


def _download(
    plan: TrainingPlan,
    record: Mapping[str, Any],
    transport: Transport,
    *,
    model_id: str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    deadline: float,
    offline: bool = False,
) -> Path | None:
    """Download (or reuse from the cache) the weights ``plan`` starts from, if any.

    The size and digest the record gives are checked; the transport fetches the file
    when it is a :class:`~hubfsm.transport.Downloader`, else it goes without a key.
    """
    from hubfsm.runtime.download import download

    if plan.weights_url is None:
        return None
    prefix = "resume" if plan.kind == "resume" else "weights"
    size = record.get(f"{prefix}_size")
    sha = record.get(f"{prefix}_sha256")
    return download(
        plan.weights_url,
        cache_dir=cache_dir,
        downloader=transport if isinstance(transport, Downloader) else None,
        expected_size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        expected_sha256=sha if isinstance(sha, str) else None,
        # The last weights change behind one URL as training goes on.
        tag=f"{model_id}:{plan.kind}:{plan.resume_epoch}",
        progress=progress,
        deadline=deadline,
        offline=offline,
    )


def download_newest_weights(
    identifier: Identifier,
    create_args: Mapping[str, Any],
    record: Mapping[str, Any],
    transport: Transport,
    *,
    model_id: str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    deadline: float,
    offline: bool = False,
) -> tuple[Path | None, Mapping[str, Any]]:
    """Download the weights the plan from ``record`` names, or newer ones that replaced them.

    A resumed session delivers what the last run left in its outbox, a pending checkpoint
    too, possibly before the trainer asks for the weights: the hub then keeps newer last
    weights than the record read at opening names, and the old ones may be gone. So when
    last weights fail to download, the record is read again, and if it names other
    weights, those are downloaded: training resumes from the newest checkpoint.

    Returns:
        The weights file (None when the plan needs none) and the record it planned from.

    Offline, only the cache is looked at, and the hub is not asked again.

    Raises:
        DownloadError: The download failed, and the hub names no other weights.
    """
    from hubfsm.runtime.download import DownloadError

    plan = plan_of(identifier, create_args, record)
    options: dict[str, Any] = {
        "model_id": model_id,
        "cache_dir": cache_dir,
        "progress": progress,
        "deadline": deadline,
        "offline": offline,
    }
    try:
        return _download(plan, record, transport, **options), record
    except DownloadError:
        if plan.kind != "resume" or model_id is None or offline:
            raise
        fresh = _read_record(transport, model_id)
        if fresh is None:
            raise
        fresh_plan = plan_of(identifier, create_args, fresh)
        names = (fresh_plan.weights_url, fresh.get("resume_sha256"))
        if fresh_plan.kind != "resume" or names == (plan.weights_url, record.get("resume_sha256")):
            raise
    log.info("weights.replaced", model_id=model_id, resume_epoch=fresh_plan.resume_epoch)
    return _download(fresh_plan, fresh, transport, **options), fresh


def _read_record(transport: Transport, model_id: str) -> dict[str, Any] | None:
    """The model record as the hub has it now, or None when it does not give it."""
    try:
        response = transport.send(protocol.get_model(model_id))
    except TransportError:
        return None
    if not response.ok or not isinstance(response.data, Mapping):
        return None
    try:
        protocol.check_record(response.data, model_id, response=response)
    except protocol.HubProtocolError:
        return None
    return dict(response.data)
