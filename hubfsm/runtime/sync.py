"""``hubfsm sync`` and ``hubfsm status``: send what outboxes hold, or list it.

Sync opens each model's outbox through an ordinary :class:`~hubfsm.runtime.session.Session`, so
it sends the same operations with the same keys as the session that left them; an
interrupted sync leaves everything unsent in place, and running it again is safe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from hubfsm.core.changes import describe_pending
from hubfsm.durable.outbox import (
    OutboxDamaged,
    OutboxInfo,
    report_damage,
    set_aside_reporting,
    survey,
)
from hubfsm.errors import HubfsmError
from hubfsm.runtime.session import Session
from hubfsm.transport import Transport


def status(root: str | os.PathLike[str] | None, *, out: TextIO) -> int:
    """Print a table of outboxes and what each holds; 1 when any of them is damaged."""
    found = survey(root)
    infos = found.infos
    damaged = report_damage(found, out=out, repair=False)
    if not infos:
        print("no outboxes" if not damaged else "no readable outboxes", file=out)
        return 1 if damaged else 0
    print("| model | metrics | checkpoint | final | in use | directory |", file=out)
    print("|---|---:|---:|---:|---|---|", file=out)
    for info in infos:
        p = info.pending
        print(
            f"| {info.model_id} | {p['metrics']} | {p['checkpoint']} | {p['final']} | "
            f"{'yes' if info.in_use else 'no'} | {info.directory} |",
            file=out,
        )
    return 1 if damaged else 0


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
    try:
        if session.state != "failed" and session.pending()["final"]:
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
    """Send every pending outbox under ``root``; 0 when all of them are empty afterwards.

    A damaged outbox is reported and set aside, and the others are sent; the exit
    status is then 1, as it is when a journal was damaged.
    """
    found = survey(root)
    damaged = report_damage(found, out=out, repair=True)
    todo = [i for i in found.infos if any(i.pending.values())]
    if not todo:
        print("nothing to send", file=out)
        return 1 if damaged else 0
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
        except OutboxDamaged as exc:
            print(f"damaged: {exc}", file=out)
            set_aside_reporting(exc, out=out)
            damaged += 1
        except HubfsmError as exc:
            print(f"model {info.model_id}: {exc}; its records stay in {info.directory}", file=out)
    print(f"synced {ok} of {len(todo)} outboxes", file=out)
    if damaged:
        print(f"{damaged} damaged outbox(es) or journal(s): see above", file=out)
    return 0 if ok == len(todo) and not damaged else 1


def root_of(path: str | None) -> Path | None:
    """The argument as a path, or None for the default root."""
    return Path(path) if path else None
