"""Model records kept beside the outboxes, for offline runs of a hub model.

Offline, a session reads nothing from the hub, but training a hub model needs its
record: the training arguments, the dataset, the weights to start from. A session that
loads a model online keeps the record here (``<outbox root>/records/<model id>.json``,
owner-only); an offline session of the same model reads it back. An outbox itself is
no place for it: an outbox with nothing pending is removed.

What is read back is untrusted like anything on disk: it must be a JSON object naming
this model, or it counts as absent (the plan checks its fields as it checks the hub's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hubfsm.core.protocol import HUB_ID
from hubfsm.durable.layout import FILE_MODE, default_root, log, private_dir

RECORDS = "records"
#: A record bigger than this is not a model record (the hub's are a few kilobytes).
MAX_BYTES = 1 << 20


def record_path(model_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the record of ``model_id`` is kept under the outbox ``root``.

    Raises:
        ValueError: ``model_id`` is not a hub id.
    """
    if not HUB_ID.fullmatch(model_id):
        raise ValueError(f"{model_id[:24]!r} is not a model id")
    base = Path(root) if root is not None else default_root()
    return base / RECORDS / f"{model_id}.json"


def keep_record(
    model_id: str, record: Mapping[str, Any], root: str | os.PathLike[str] | None = None
) -> None:
    """Keep the record the hub sent, replacing an older one; a failure is only logged.

    Training goes on without it: only a later offline run would miss it.
    """
    try:
        path = record_path(model_id, root)
        private_dir(path.parent)
        data = json.dumps(dict(record), sort_keys=True).encode()
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except (OSError, TypeError, ValueError) as exc:
        log.warning("record.not_kept", model_id=model_id, error=f"{type(exc).__name__}: {exc}")


def kept_record(
    model_id: str, root: str | os.PathLike[str] | None = None
) -> dict[str, Any] | None:
    """The record kept for ``model_id``, or None when there is none that can be read."""
    try:
        path = record_path(model_id, root)
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        record = json.loads(data) if len(data) <= MAX_BYTES else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("record.unreadable", model_id=model_id, error=f"{type(exc).__name__}: {exc}")
        return None
    if not isinstance(record, dict) or record.get("id", model_id) != model_id:
        log.warning("record.unreadable", model_id=model_id, error="not this model's record")
        return None
    return record
