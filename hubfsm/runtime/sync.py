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
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import attrs

from hubfsm.core.changes import describe_pending
from hubfsm.durable.outbox import Outbox, OutboxDamaged
from hubfsm.durable.recovery import fold
from hubfsm.durable.survey import OutboxInfo, report_damage, set_aside_reporting, survey
from hubfsm.errors import HubfsmError, HubUnavailableError, ModelNotFoundError
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.transport import Transport

#: Opens the session that sends one outbox.
SessionOpener = Callable[[OutboxInfo], Session]


def fold_journals(infos: list[OutboxInfo], *, damaged: bool) -> None:
    """Fold each outbox's journal into it, under its lock; skip an outbox in use.

    Damage is for the survey taken before to report: what a damaged journal lost is
    judged against the outbox as it was. So a damaged journal is folded only with
    ``damaged`` (by sync, once it has kept a copy), and ``status`` leaves it for sync
    to report again.
    """
    for info in infos:
        if info.in_use or (info.journal_damage is not None and not damaged):
            continue
        try:
            outbox = Outbox(info.directory, info.model_id)
        except (HubfsmError, OSError):  # a session took it since, or it is damaged
            continue
        try:
            fold(outbox)
        except (HubfsmError, OSError, ValueError):
            continue
        finally:
            outbox.close()


def status(root: str | os.PathLike[str] | None, *, out: TextIO) -> int:
    """Print a table of outboxes and what each holds; 1 when any of them is damaged.

    Rejected records (the hub refused their payload) and records held by a refusal
    (sending stopped; ``hubfsm sync`` delivers them once the cause is fixed) are listed
    under the table.
    """
    found = survey(root)
    damaged = report_damage(found, out=out, repair=False)
    fold_journals(found.infos, damaged=False)
    infos = survey(root).infos
    if not infos:
        print("no outboxes" if not damaged else "no readable outboxes", file=out)
        return 1 if damaged else 0
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
    if any(any(info.pending.values()) for info in infos):
        print(
            "`hubfsm sync` sends what they hold; `hubfsm discard MODEL_ID` deletes one you "
            "no longer want",
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
    open_session: SessionOpener | None = None,
) -> bool:
    print(f"model {info.model_id}: sending {describe_pending(info.pending)} ...", file=out)
    if open_session is not None:
        session = open_session(info)
    else:
        settings = Settings.resolve(
            info.model_id,
            api_key=api_key,
            api_root=api_root,
            outbox_dir=info.directory.parent,
            offline=False,
        )
        # Sync reports a refusal on its own output; the session's stderr notice is for
        # trainers.
        settings = attrs.evolve(settings, notify_refusal=False)
        session = Session.compose(build(settings, transport=transport))
    try:
        if session.pending()["final"]:
            session.finish_pending(timeout=timeout)
        else:
            session.flush(timeout=timeout)
        left = session.pending()
    finally:
        session.close(timeout=min(timeout, 10.0))
    kept = session.kept
    if kept is not None:
        # What is still on disk counts, even if the hub has it: a write that failed
        # left it there, and the next sync sends it again under the same key.
        left = {kind: max(n, kept.get(kind, 0)) for kind, n in left.items()}
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
    open_session: SessionOpener | None = None,
) -> int:
    """Send every pending outbox under ``root``; 0 when all of them are empty afterwards.

    A damaged outbox is reported and set aside, and the others are sent; the exit
    status is then 1, as it is when a journal was damaged, or while any record the hub
    rejected is held (``hubfsm discard`` removes those). ``open_session`` opens the
    session that sends one outbox (the simulator composes one on its virtual clock); by
    default an ordinary :class:`Session`.
    """
    found = survey(root)
    damaged = report_damage(found, out=out, repair=True)
    fold_journals(found.infos, damaged=True)
    infos = survey(root).infos
    todo = [i for i in infos if any(i.pending.values())]
    if not todo:
        print("nothing to send", file=out)
        held = _report_rejected(infos, out=out)
        return 1 if damaged or held else 0
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
                open_session=open_session,
            )
        except ModelNotFoundError as exc:
            print(
                f"model {info.model_id}: the hub says this model is gone ({exc}); its records "
                f"stay in {info.directory} until `hubfsm discard {info.model_id}` deletes them",
                file=out,
            )
        except HubUnavailableError as exc:
            print(
                f"model {info.model_id}: could not reach the hub ({exc}); its records stay in "
                f"{info.directory}; run sync again when the hub is back",
                file=out,
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
    held = _report_rejected(survey(root).infos, out=out)
    return 0 if ok == len(todo) and not damaged and not held else 1


def _report_rejected(infos: list[OutboxInfo], *, out: TextIO) -> int:
    """List the rejected records held; 1 if there are any (they are not delivered)."""
    held = 0
    for info in infos:
        if not info.rejected:
            continue
        held += len(info.rejected)
        print(
            f"model {info.model_id}: {len(info.rejected)} records the hub rejected are kept "
            f"in {info.directory} (`hubfsm discard {info.model_id} --rejected` removes them):",
            file=out,
        )
        for record in info.rejected:
            print(f"  {record}", file=out)
    return 1 if held else 0


def root_of(path: str | None) -> Path | None:
    """The argument as a path, or None for the default root."""
    return Path(path) if path else None
