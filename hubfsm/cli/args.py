"""What the ``hubfsm`` commands share: the parser, the argument validators, the API key."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from hubfsm import env
from hubfsm.errors import HubfsmError

#: The environment variable the API key is read from when no option gives it.
KEY_ENV = env.API_KEY


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line with where to read more, and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def number(kind: type[float] | type[int], text: str) -> float:
    """``text`` as a finite number of ``kind``, or a usage error."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    value = int(number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def share(text: str) -> float:
    """A share from 0 to 1."""
    value = number(float, text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, not {text}")
    return value


def seconds(text: str) -> float:
    """A number of seconds, 0 or more."""
    value = number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def not_negative(text: str) -> float:
    """A number, 0 or more."""
    value = number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive(text: str) -> float:
    """A number more than 0."""
    value = number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def port(text: str) -> int:
    """A TCP port (0: any free one)."""
    value = int(number(int, text))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535 (0: any), not {text}")
    return value


def api_root(text: str) -> str:
    """An http(s) URL with a host and a valid port, as the transport needs."""
    example = "such as http://127.0.0.1:8000 or https://api.ultralytics.com"
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"needs an http:// or https:// URL ({example})")
    try:
        port_ok = parts.port != 0
    except ValueError:
        port_ok = False
    if not port_ok:
        raise argparse.ArgumentTypeError(f"has an invalid port ({example})")
    return text.strip()


def directory(text: str) -> str:
    """A directory, existing or to be made; not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return text


def key_from(args: argparse.Namespace) -> str | None:
    """The API key from ``--key``, ``--key-file`` or ``HUB_API_KEY``, in that order."""
    if getattr(args, "key", None):
        return str(args.key)
    key_file = getattr(args, "key_file", None)
    if key_file:
        path = Path(key_file)
        try:
            mode = path.stat().st_mode
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise HubfsmError(f"cannot read the key file {key_file}: {exc.strerror}") from None
        if mode & 0o077:
            print(
                f"warning: the key file {key_file} can be read by other users; "
                f"`chmod 600 {key_file}` makes it yours alone",
                file=sys.stderr,
            )
        if not key:
            raise HubfsmError(f"the key file {key_file} is empty")
        return key
    return env.api_key()


def add_key_options(p: argparse.ArgumentParser, what: str) -> None:
    """Add ``--key`` and ``--key-file`` to a command that talks to a hub."""
    p.add_argument(
        "--key",
        help=f"the API key {what}; other users can see it in `ps`, so prefer "
        "the environment variable or --key-file",
    )
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="read the API key from FILE (which only you should be able to read)",
    )


def add_protocol_option(p: argparse.ArgumentParser) -> None:
    """Add ``--protocol``: only the outboxes (or the session) of one dialect."""
    p.add_argument(
        "--protocol",
        choices=("hub", "platform"),
        help="only outboxes of this protocol: hub (HUB v1; key HUB_API_KEY, root "
        "ULTRALYTICS_HUB_API) or platform (Ultralytics Platform; key ULTRALYTICS_API_KEY, "
        "root ULTRALYTICS_PLATFORM_URL); default every outbox, each with its own",
    )


def command(
    subparsers: argparse._SubParsersAction[Any],
    name: str,
    summary: str,
    example: str,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, with its summary and an example in its help."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + textwrap.indent(example, "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Also after the command name, where people type it (`hubfsm demo -v`); main() adds
    # the two counts.
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        dest="verbose_after",
        default=argparse.SUPPRESS,
        help="show what hubfsm is doing on standard error: -v progress, -vv every request",
    )
    return parser


def seeds(text: str) -> range:
    """Seeds as ``N`` or ``N-M`` (both included)."""
    lo, sep, hi = text.partition("-")
    try:
        first = int(lo)
        last = int(hi) if sep else first
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M, not {text!r}") from None
    if first < 0 or last < first:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M with N <= M, not {text!r}")
    return range(first, last + 1)
