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
    """Send what the outboxes hold, each dialect's with its own key."""
    from hubfsm.durable.survey import survey
    from hubfsm.runtime.sync import root_of, sync

    if _missing(args.dir):
        return 2
    # A damaged outbox is for sync to report and set aside: it must not stop the others.
    waiting = [i for i in survey(root_of(args.dir)).infos if any(i.pending.values())]
    chosen = getattr(args, "protocol", None)
    spoken = sorted({i.protocol for i in waiting}) or ["hub"]
    names = [chosen] if chosen else spoken
    given = key_from(args) if (args.key or args.key_file) else None
    code = 0
    for name in names:
        key, root, key_env = _endpoint(name, given, only=chosen is not None)
        mine = [i for i in waiting if i.protocol == name]
        if mine and not key:
            print(
                f"error: sync needs the {name} API key: {key_env}, --key-file FILE or --key",
                file=sys.stderr,
            )
            return 2
        code = max(
            code,
            sync(
                root_of(args.dir),
                api_key=key,
                api_root=root,
                hub=args.hub,
                timeout=args.timeout,
                out=sys.stdout,
                # One dialect in play: every outbox, as before dialects (rejected ones too).
                protocol=name if chosen or len(spoken) > 1 else None,
            ),
        )
    return code


def _endpoint(name: str, given: str | None, *, only: bool) -> tuple[str | None, str | None, str]:
    """The key, the API root the environment names, and the key's variable, for a dialect.

    A key given on the command line goes to the dialect it is for (a ``ul_`` key to
    Platform): never a HUB key to Platform's root, or the other way round. Each outbox
    then goes to the hub it records (see :func:`hubfsm.runtime.sync.target`).
    """
    from hubfsm.core.platform import PLATFORM_KEY

    platform_key = given is not None and PLATFORM_KEY.fullmatch(given) is not None
    if name == "platform":
        key = given if given is not None and (only or platform_key) else env.platform_api_key()
        return key, env.platform_url(), env.PLATFORM_API_KEY
    key = given if given is not None and (only or not platform_key) else env.api_key()
    return key, env.api_root(), KEY_ENV


def cmd_status(args: argparse.Namespace) -> int:
    """List the outboxes and what each holds."""
    from hubfsm.runtime.sync import root_of, status

    if _missing(args.dir):
        return 2
    return status(
        root_of(args.dir),
        out=sys.stdout,
        as_json=args.json,
        protocol=getattr(args, "protocol", None),
    )


def cmd_discard(args: argparse.Namespace) -> int:
    """Delete an outbox and what it holds, after asking."""
    from hubfsm.cli.discard import discard

    return discard(args.target, root=args.root, yes=args.yes, rejected_only=args.rejected)
