"""``hubfsm discard``: delete an outbox the user no longer wants, after asking.

An outbox holds what a hub has not acknowledged; deleting it loses that for good, so the
command shows what it holds and asks, refuses an outbox that a running session holds,
and deletes nothing but an outbox directory: one that holds the outbox database and
lies directly in an outbox root, after symbolic links are resolved.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

from hubfsm.core.changes import describe_pending
from hubfsm.durable.outbox import DATABASE, default_root, inspect


def _target(text: str, root: str | None) -> tuple[Path, Path] | str:
    """(outbox directory, its root), both resolved; or why there is none."""
    given = Path(text)
    if given.is_dir() and (given / DATABASE).exists():
        directory = given.resolve()
        return directory, directory.parent
    if given.exists() or os.sep in text or text in (".", ".."):
        return f"{text} is not an outbox directory (it has no {DATABASE})"
    base = (Path(root) if root else default_root()).resolve()
    directory = (base / text).resolve()
    if directory.parent != base or not (directory / DATABASE).exists():
        return f"no outbox for model {text} in {base}"
    return directory, base


def discard(text: str, *, root: str | None, yes: bool) -> int:
    """Delete the outbox named by ``text`` (a model id or a directory); the exit status."""
    found = _target(text, root)
    if isinstance(found, str):
        print(f"error: {found}", file=sys.stderr)
        return 1
    directory, _ = found
    (info,) = inspect([directory])
    left = describe_pending(info.pending) if any(info.pending.values()) else "nothing"
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # Held until the directory is gone, so no session opens it in between.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"error: a running session holds the outbox of model {info.model_id}; "
                "stop it first",
                file=sys.stderr,
            )
            return 1
        if not yes:
            if not sys.stdin.isatty():
                print(
                    f"error: the outbox of model {info.model_id} holds {left}; pass --yes "
                    "to delete it without a question",
                    file=sys.stderr,
                )
                return 1
            answer = input(
                f"model {info.model_id}: {left} not on the hub, in {directory}.\n"
                "Delete it for good? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("kept", file=sys.stderr)
                return 1
        shutil.rmtree(directory)
    finally:
        os.close(fd)
    print(f"discarded the outbox of model {info.model_id} ({left})")
    return 0
