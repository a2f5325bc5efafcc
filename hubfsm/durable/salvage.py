"""What an outbox can never send as it was handed over, set aside so the rest goes on.

A row that no longer reads back (a power cut, an edit by hand) and a weight snapshot
that is missing or changed move to the rejected records with the status
:data:`~hubfsm.core.values.KEPT_ASIDE` and the reason, for ``hubfsm status`` to show and
``hubfsm discard --rejected`` to remove. Each function runs inside the caller's
transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import attrs

from hubfsm.core.values import KEPT_ASIDE
from hubfsm.durable.rows import request_from_json, request_to_json, slot_from_json, slot_to_json
from hubfsm.transport import FilePart, Request

#: How much of an unreadable record's text is kept with it.
_KEPT_TEXT = 4000


def set_aside_unreadable(db: sqlite3.Connection) -> int:
    """Keep aside every pending record that does not read back; how many there were."""
    moved = 0
    for key, channel, request, payload in db.execute(
        "SELECT key, channel, request, payload FROM ops ORDER BY seq"
    ).fetchall():
        try:
            request_from_json(request)
            json.loads(payload)
        except (ValueError, TypeError, KeyError) as error:
            db.execute("DELETE FROM ops WHERE key = ?", (key,))
            _keep_unreadable(db, key, channel, request, _epochs_in(payload, channel), error)
            moved += 1
    for kind, value in db.execute("SELECT kind, value FROM slots").fetchall():
        try:
            slot_from_json(value)
        except (ValueError, TypeError, KeyError, AssertionError) as error:
            db.execute("DELETE FROM slots WHERE kind = ?", (kind,))
            key = f"unreadable-{kind}-{time.time_ns()}"
            _keep_unreadable(db, key, kind, value, None, error)
            moved += 1
    return moved


def check_files(db: sqlite3.Connection, check: Callable[[FilePart, bool], FilePart | str]) -> int:
    """Hand every weight file a record names to ``check``; how many records changed.

    ``check(file, pending)`` returns the file as it now is (a snapshot found in another
    place: the record is rewritten to name it), or for a pending record the reason it can
    never be sent as handed over: the record is then kept aside with that reason, its
    weights with it, and the rest goes on.
    """
    changed = 0
    for table in ("ops", "rejected"):
        pending = table == "ops"
        for key, channel, text, payload in db.execute(
            f"SELECT key, channel, request, payload FROM {table} WHERE channel != 'metrics'"
        ).fetchall():
            request = request_from_json(text)
            if request.file is None:
                continue
            found = check(request.file, pending)
            if isinstance(found, FilePart):
                if found != request.file:
                    kept = request_to_json(attrs.evolve(request, file=found))
                    db.execute(f"UPDATE {table} SET request = ? WHERE key = ?", (kept, key))
                    changed += 1
            elif pending:
                db.execute("DELETE FROM ops WHERE key = ?", (key,))
                _keep(db, key, channel, text, payload, found)
                changed += 1
    for kind, value in db.execute("SELECT kind, value FROM slots").fetchall():
        epoch, file, extra = slot_from_json(value)
        found = check(file, True)
        if isinstance(found, FilePart):
            if found != file:
                db.execute(
                    "UPDATE slots SET value = ? WHERE kind = ?",
                    (slot_to_json((epoch, found, extra)), kind),
                )
                changed += 1
            continue
        db.execute("DELETE FROM slots WHERE kind = ?", (kind,))
        # Named by what it holds, so a simulated seed keeps the same trace.
        key = f"kept-aside-{kind}-{epoch}-{file.sha256[:16]}"
        request = Request("POST", "", file=file, idempotency_key=key)
        _keep(db, key, kind, request_to_json(request), json.dumps(epoch), found)
        changed += 1
    return changed


def _epochs_in(payload: str, channel: str) -> Any:
    """The epochs a metrics record's payload names, if they read back; else None."""
    try:
        epochs = json.loads(payload)
    except ValueError:
        return None
    if channel == "metrics" and isinstance(epochs, list):
        return [e for e in epochs if isinstance(e, int)]
    return epochs if isinstance(epochs, int) else None


def _keep_unreadable(
    db: sqlite3.Connection, key: str, channel: str, text: str, payload: Any, error: Exception
) -> None:
    """Keep an unreadable record aside with its text as it was found."""
    kept = Request("POST", "", json={"unreadable": str(text)[:_KEPT_TEXT]}, idempotency_key=key)
    reason = f"its record in the outbox cannot be read ({type(error).__name__}); kept as found"
    _keep(db, key, channel, request_to_json(kept), json.dumps(payload), reason)


def _keep(
    db: sqlite3.Connection, key: str, channel: str, request: str, payload: str, reason: str
) -> None:
    """Write a record that can never be sent as handed over as one kept aside."""
    db.execute(
        "INSERT OR IGNORE INTO rejected (key, channel, request, payload, status, reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key, channel, request, payload, KEPT_ASIDE, reason),
    )
