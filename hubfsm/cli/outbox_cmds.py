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
    """Send what the outboxes hold, each dialect's with its own key and API root."""
    from hubfsm.durable.survey import find, inspect
    from hubfsm.runtime.sync import root_of, sync

    if _missing(args.dir):
        return 2
    waiting = [i for i in inspect(find(root_of(args.dir))) if any(i.pending.values())]
    chosen = getattr(args, "protocol", None)
    spoken = sorted({i.protocol for i in waiting}) or ["hub"]
    names = [chosen] if chosen else spoken
    given = key_from(args) if (args.key or args.key_file) else None
    code = 0
    for name in names:
        key, root, key_env = _endpoint(name, given, args.hub, only=chosen is not None)
        mine = [i for i in waiting if i.protocol == name]
        if mine and not key:
            print(
                f"error: sync needs the {name} API key: {key_env}, --key-file FILE or --key",
                file=sys.stderr,
            )
            return 2
        if mine:
            print(f"hub: {root}", file=sys.stdout)
        code = max(
            code,
            sync(
                root_of(args.dir),
                api_key=key,
                api_root=root,
                timeout=args.timeout,
                out=sys.stdout,
                # One dialect in play: every outbox, as before dialects (rejected ones too).
                protocol=name if chosen or len(spoken) > 1 else None,
            ),
        )
    return code


def _endpoint(
    name: str, given: str | None, hub: str | None, *, only: bool
) -> tuple[str | None, str, str]:
    """The key, the API root and the key's variable for one dialect's outboxes.

    A key given on the command line goes to the dialect it is for (a ``ul_`` key to
    Platform): never a HUB key to Platform's root, or the other way round.
    """
    from hubfsm.core.dialect import PLATFORM_API_ROOT, PLATFORM_KEY
    from transports.http import DEFAULT_API_ROOT

    platform_key = given is not None and PLATFORM_KEY.fullmatch(given) is not None
    if name == "platform":
        key = given if given is not None and (only or platform_key) else env.platform_api_key()
        return key, hub or env.platform_url() or PLATFORM_API_ROOT, env.PLATFORM_API_KEY
    key = given if given is not None and (only or not platform_key) else env.api_key()
    return key, hub or env.api_root() or DEFAULT_API_ROOT, KEY_ENV


def cmd_status(args: argparse.Namespace) -> int:
    """List the outboxes and what each holds."""
    from hubfsm.runtime.sync import root_of, status

    if _missing(args.dir):
        return 2
    return status(root_of(args.dir), out=sys.stdout, protocol=getattr(args, "protocol", None))


def cmd_discard(args: argparse.Namespace) -> int:
    """Delete an outbox and what it holds, after asking."""
    from hubfsm.cli.discard import discard

    return discard(args.target, root=args.root, yes=args.yes, rejected_only=args.rejected)
