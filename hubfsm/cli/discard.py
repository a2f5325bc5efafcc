"""``hubfsm discard``: delete an outbox, or its rejected records, after asking.

An outbox holds what a hub has not acknowledged; deleting it loses that for good, so the
command shows what it holds and asks, refuses an outbox a running session holds (it
takes the outbox's lock for the whole time), and deletes only the files an outbox makes,
inside its root, after symbolic links are resolved.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hubfsm.core.identifier import OUTBOX_ID
from hubfsm.core.values import describe_pending
from hubfsm.durable.layout import DATABASE, OutboxDamaged, OutboxLockedError, default_root
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.survey import inspect


def _target(text: str, root: str | None) -> tuple[Path, Path] | str:
    """(outbox directory, its root), both resolved; or why there is none."""
    given = Path(text)
    if given.is_dir() and (given / DATABASE).exists():
        directory = given.resolve()
        if not OUTBOX_ID.fullmatch(directory.name):
            return f"{text} is not an outbox directory (its name is not a model id)"
        return directory, directory.parent
    if not OUTBOX_ID.fullmatch(text):
        return f"{text} is neither a model id nor an outbox directory (with an {DATABASE})"
    base = (Path(root) if root else default_root()).resolve()
    directory = (base / text).resolve()
    if directory.parent != base or not (directory / DATABASE).exists():
        return f"no outbox for model {text} in {base}"
    return directory, base


def _confirmed(question: str, yes: bool) -> bool | None:
    """True to go on; False when the user said no; None when nobody can answer."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def discard(text: str, *, root: str | None, yes: bool, rejected_only: bool = False) -> int:
    """Delete the outbox named by ``text`` (or only its rejected records); the exit status."""
    found = _target(text, root)
    if isinstance(found, str):
        print(f"error: {found}", file=sys.stderr)
        return 1
    directory, base = found
    (info,) = inspect([directory])
    try:
        outbox = Outbox(directory, info.model_id, root=base)
    except OutboxLockedError:
        print(
            f"error: a running session holds the outbox of model {info.model_id}; stop it first",
            file=sys.stderr,
        )
        return 1
    except OutboxDamaged as exc:
        print(f"error: {exc}; delete {directory} by hand if you no longer want it", file=sys.stderr)
        return 1
    done = False
    try:
        pending = describe_pending(info.pending)
        # Records kept aside unsent are set aside like rejected ones, and go with them.
        held = len(info.rejected) + len(info.kept_aside)
        if rejected_only:
            what = f"{held} rejected record(s)"
        else:
            what = f"{pending} not on the hub" + (
                f", and {held} rejected record(s)" if held else ""
            )
        answer = _confirmed(
            f"model {info.model_id}: {what}, in {directory}.\nDelete for good?", yes
        )
        if answer is None:
            print(
                f"error: the outbox of model {info.model_id} holds {what}; pass --yes to "
                "delete without a question",
                file=sys.stderr,
            )
            return 1
        if not answer:
            print("kept", file=sys.stderr)
            return 1
        if rejected_only:
            count = outbox.drop_rejected()
            print(f"discarded {count} rejected record(s) of model {info.model_id}")
        else:
            outbox.discard()
            done = True
            print(f"discarded the outbox of model {info.model_id} ({what})")
        return 0
    finally:
        if not done:
            outbox.close()
