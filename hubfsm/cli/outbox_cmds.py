"""The commands that work on outboxes: ``hubfsm sync``, ``status`` and ``discard``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hubfsm import env
from hubfsm.cli.args import KEY_ENV, key_from


def _missing(directory: str | None) -> bool:
    """True (having said so) when the directory given does not exist."""
    if directory and not Path(directory).is_dir():
        what = "is not a directory" if Path(directory).exists() else "does not exist"
        print(f"error: {directory} {what}", file=sys.stderr)
        return True
    return False


def cmd_sync(args: argparse.Namespace) -> int:
    """Send what the outboxes hold."""
    from hubfsm.durable.survey import survey
    from hubfsm.runtime.sync import root_of, sync

    if _missing(args.dir):
        return 2
    key = key_from(args)
    # A damaged outbox is for sync to report and set aside: it must not stop the others.
    waiting = [i for i in survey(root_of(args.dir)).infos if any(i.pending.values())]
    if waiting and not key:
        print(
            f"error: sync needs the hub's API key: {KEY_ENV}, --key-file FILE or --key",
            file=sys.stderr,
        )
        return 2
    return sync(
        root_of(args.dir),
        api_key=key,
        api_root=env.api_root(),
        hub=args.hub,
        timeout=args.timeout,
        out=sys.stdout,
    )


def cmd_status(args: argparse.Namespace) -> int:
    """List the outboxes and what each holds."""
    from hubfsm.runtime.sync import root_of, status

    if _missing(args.dir):
        return 2
    return status(root_of(args.dir), out=sys.stdout, as_json=args.json)


def cmd_discard(args: argparse.Namespace) -> int:
    """Delete an outbox and what it holds, after asking."""
    from hubfsm.cli.discard import discard

    return discard(args.target, root=args.root, yes=args.yes, rejected_only=args.rejected)
