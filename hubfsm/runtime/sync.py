"""``hubfsm sync`` and ``hubfsm status``: send what outboxes hold, or list it.

Sync opens each model's outbox through an ordinary :class:`~hubfsm.runtime.session.Session`, so
it sends the same operations with the same keys as the session that left them; an
interrupted sync leaves everything unsent in place, and running it again is safe.

Both first fold each outbox's journal in: what a killed process had only journaled (its
worker stuck in a request) is pending like the rest. That needs the outbox's lock, so an
outbox a running session holds is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from hubfsm.core.changes import describe_pending
from hubfsm.durable.outbox import (
    DATABASE,
    Outbox,
    OutboxInfo,
    OutboxLockedError,
    find,
    inspect,
)
from hubfsm.durable.recovery import fold
from hubfsm.errors import HubfsmError
from hubfsm.runtime.session import Session
from hubfsm.transport import Transport


def fold_journals(directories: list[Path]) -> None:
    """Fold each outbox's journal into it, under its lock; skip an outbox in use."""
    for info in inspect(directories):
        if info.in_use:
            continue
        try:
            outbox = Outbox(info.directory, info.model_id)
        except OutboxLockedError:  # a session took it since
            continue
        try:
            fold(outbox)
        finally:
            outbox.close()


def status(root: str | os.PathLike[str] | None, *, out: TextIO) -> int:
    """Print a table of outboxes and what each holds, then the records held back.

    Rejected records (the hub refused their payload) and records held by a refusal
    (sending stopped; ``hubfsm sync`` delivers them once the cause is fixed) are listed
    under the table.
    """
    directories = find(root)
    fold_journals(directories)
    infos = inspect(directories)
    if not infos:
        print("no outboxes", file=out)
        return 0
    print(
        "| model | metrics | checkpoint | final | rejected | held by a refusal | in use "
        "| directory |",
        file=out,
    )
    print("|---|---:|---:|---:|---:|---|---|---|", file=out)
    for info in infos:
        p = info.pending
        held = "yes" if info.refusal else "no"
        print(
            f"| {info.model_id} | {p['metrics']} | {p['checkpoint']} | {p['final']} | "
            f"{len(info.rejected)} | {held} | {'yes' if info.in_use else 'no'} "
            f"| {info.directory} |",
            file=out,
        )
    for info in infos:
        if info.refusal:
            print(
                f"model {info.model_id}: sending stopped: {info.refusal}; "
                f"{describe_pending(info.pending)} held for `hubfsm sync`",
                file=out,
            )
        for record in info.rejected:
            print(f"model {info.model_id}: rejected by the hub: {record}", file=out)
    return 0


def _sync_one(
    info: OutboxInfo,
    *,
    api_key: str | None,
    api_root: str | None,
    transport: Transport | None,
    timeout: float,
    out: TextIO,
) -> bool:
    print(f"model {info.model_id}: sending {describe_pending(info.pending)} ...", file=out)
    session = Session(
        info.model_id,
        api_key=api_key,
        api_root=api_root,
        transport=transport,
        outbox_dir=info.directory.parent,
        offline=False,
    )
    # Sync reports a refusal on its own output; the session's stderr notice is for trainers.
    session._refusal_noticed = True
    try:
        if session.pending()["final"]:
            session.finish_pending(timeout=timeout)
        else:
            session.flush(timeout=timeout)
        left = session.pending()
    finally:
        session.close(timeout=min(timeout, 10.0))
    stats = session.stats()
    sent = sum(stats["sent"].values())
    if any(left.values()):
        print(
            f"model {info.model_id}: {describe_pending(left)} still pending "
            f"({sent} requests, {stats['retries']} retries); run sync again",
            file=out,
        )
        return False
    print(
        f"model {info.model_id}: all sent ({sent} requests, {stats['retries']} retries)",
        file=out,
    )
    return True


def sync(
    root: str | os.PathLike[str] | None,
    *,
    api_key: str | None = None,
    api_root: str | None = None,
    transport: Transport | None = None,
    timeout: float = 600.0,
    out: TextIO,
) -> int:
    """Send every pending outbox under ``root``.

    Returns:
        0 when every outbox is empty afterwards; 1 while anything is still pending or
        any rejected record is held (``hubfsm discard`` removes those).
    """
    directories = find(root)
    fold_journals(directories)
    infos = inspect(directories)
    todo = [i for i in infos if any(i.pending.values())]
    if not todo:
        print("nothing to send", file=out)
        return _report_rejected(infos, out=out)
    ok = 0
    for info in todo:
        if info.in_use:
            print(f"model {info.model_id}: skipped, a running session holds it", file=out)
            continue
        try:
            ok += _sync_one(
                info,
                api_key=api_key,
                api_root=api_root,
                transport=transport,
                timeout=timeout,
                out=out,
            )
        except HubfsmError as exc:
            print(f"model {info.model_id}: {exc}; its records stay in {info.directory}", file=out)
    print(f"synced {ok} of {len(todo)} outboxes", file=out)
    left = [d for d in directories if (d / DATABASE).exists()]
    held = _report_rejected(inspect(left), out=out)
    return 0 if ok == len(todo) and not held else 1


def _report_rejected(infos: list[OutboxInfo], *, out: TextIO) -> int:
    """List the rejected records held; 1 if there are any (they are not delivered)."""
    held = 0
    for info in infos:
        if not info.rejected:
            continue
        held += len(info.rejected)
        print(
            f"model {info.model_id}: {len(info.rejected)} records the hub rejected are kept "
            f"in {info.directory} (`hubfsm discard` removes them):",
            file=out,
        )
        for record in info.rejected:
            print(f"  {record}", file=out)
    return 1 if held else 0


def root_of(path: str | None) -> Path | None:
    """The argument as a path, or None for the default root."""
    return Path(path) if path else None
