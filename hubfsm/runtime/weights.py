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

from hubfsm.core.identifier import Identifier
from hubfsm.core.plan import TrainingPlan, plan_for_file, plan_from_record
from hubfsm.transport import Downloader, Transport


def plan_of(
    identifier: Identifier, create_args: Mapping[str, Any], record: Mapping[str, Any]
) -> TrainingPlan:
    """The plan of a session: a local file's with its arguments, else the record's."""
    filename = identifier.filename
    if filename is not None:
        return plan_for_file(filename, dict(create_args))
    return plan_from_record(record)


def download_plan_weights(
    plan: TrainingPlan,
    record: Mapping[str, Any],
    transport: Transport,
    *,
    model_id: str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    deadline: float,
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
    )
