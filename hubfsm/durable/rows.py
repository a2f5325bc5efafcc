"""The outbox's rows: its tables, the core's values as JSON text and back, what a batch writes.

A request, a weight slot or an operation's payload is kept as the JSON text these give,
and read back by the inverse.
Which changes of one batch need a row at all is decided here too, before
:meth:`~hubfsm.durable.outbox_db.OutboxDB.apply` writes any.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hubfsm.core.plain import json_text
from hubfsm.core.values import Change, Offered, OpOpened, Rejected
from hubfsm.transport import FilePart, Request

#: The outbox database's tables.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (epoch INTEGER PRIMARY KEY, encoded TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    request TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS slots (kind TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    request TEXT NOT NULL,
    payload TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


def _file_to_json(file: FilePart | None) -> dict[str, Any] | None:
    # Spelled out rather than attrs.asdict, which walks the class's fields on every call.
    if file is None:
        return None
    return {"name": file.name, "path": file.path, "size": file.size, "sha256": file.sha256}


def _file_from_json(data: dict[str, Any] | None) -> FilePart | None:
    return None if data is None else FilePart(**data)


def request_to_json(request: Request) -> str:
    """A request as the text an ``ops`` or ``rejected`` row keeps."""
    return json_text(
        {
            "method": request.method,
            "path": request.path,
            "json": request.json,
            "fields": request.fields,
            "file": _file_to_json(request.file),
            "idempotency_key": request.idempotency_key,
        }
    )


def request_from_json(text: str) -> Request:
    """The request a row's text gives back."""
    data = json.loads(text)
    data["file"] = _file_from_json(data["file"])
    return Request(**data)


def slot_to_json(value: tuple[int, FilePart, Any]) -> str:
    """A weight slot (epoch, file, extra) as a ``slots`` row's text."""
    epoch, file, extra = value
    return json_text({"epoch": epoch, "file": _file_to_json(file), "extra": extra})


def slot_from_json(text: str) -> tuple[int, FilePart, Any]:
    """The weight slot a row's text gives back."""
    data = json.loads(text)
    file = _file_from_json(data["file"])
    assert file is not None
    return data["epoch"], file, data["extra"]


def writes_more_than_one(change: Change, queued: set[int]) -> bool:
    """True when :meth:`OutboxDB.apply` writes ``change`` with more than one statement.

    ``queued`` holds the epochs that may have a row in ``metrics``.
    """
    if type(change) is OpOpened:
        return change.channel == "metrics" and any(e in queued for e in change.payload)
    return type(change) is Rejected


def superseded(changes: Sequence[Change]) -> tuple[dict[int, int], dict[str, int]]:
    """Where a later change in ``changes`` makes an earlier one's write needless.

    Returns each epoch a metrics operation opens, with the last such position (an epoch
    queued before it needs no row: the operation's request carries it), and each slot's
    last offer's position (an earlier offer of that slot would be overwritten at once).
    """
    sent: dict[int, int] = {}
    offered: dict[str, int] = {}
    for at, change in enumerate(changes):
        if type(change) is OpOpened:
            if change.channel == "metrics":
                for epoch in change.payload:
                    sent[epoch] = at
        elif type(change) is Offered:
            offered[change.kind] = at
    return sent, offered


def payload_json(payload: Any) -> str:
    """An operation's payload as JSON: the tuple of epochs of a metrics one, or an epoch."""
    # Spelled out for the tuple of plain ints every metrics operation carries (once an
    # epoch): the same text json.dumps gives, without its encoder's set-up.
    if type(payload) is tuple and all(type(e) is int for e in payload):
        return f"[{', '.join(map(str, payload))}]"
    return json.dumps(payload)
