"""The ``hubfsm`` command line: demo, local hub, simulation and identifier parsing."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from hubfsm.core.identifier import DEFAULT_WEB_ROOT, WEB_ROOT_ENV, parse_identifier
from hubfsm.errors import HubfsmError, IdentifierError
from hubfsm.logs import configure_cli
from hubfsm.version import __version__

#: The environment variable the API key is read from when no option gives it.
KEY_ENV = "HUB_API_KEY"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line with where to read more, and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: type[float] | type[int], text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _share(text: str) -> float:
    value = _number(float, text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, not {text}")
    return value


def _seconds(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def _positive(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _port(text: str) -> int:
    value = int(_number(int, text))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535 (0: any), not {text}")
    return value


def _api_root(text: str) -> str:
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


def _directory(text: str) -> str:
    """A directory, existing or to be made; not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return text


def _key_from(args: argparse.Namespace) -> str | None:
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
    return os.environ.get(KEY_ENV) or None


def _add_key_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--key",
        help=f"the API key {what}; other users can see it in `ps`, so prefer "
        f"{KEY_ENV} or --key-file",
    )
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="read the API key from FILE (which only you should be able to read)",
    )


def _command(
    subparsers: argparse._SubParsersAction[Any],
    name: str,
    summary: str,
    example: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + textwrap.indent(example, "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


# -- parse -------------------------------------------------------------------------


def _site(url: str) -> tuple[str, str]:
    """A URL's scheme and host (with port), lower case; empty when it does not parse."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return ("", "")
    return (parts.scheme.lower(), parts.netloc.rpartition("@")[2].lower())


def cmd_parse(args: argparse.Namespace) -> int:
    """Print an identifier's parse as JSON, or the reason it was rejected."""
    try:
        identifier = parse_identifier(args.identifier, web_root=args.web_root)
    except IdentifierError as exc:
        hint = ""
        root = args.web_root or os.environ.get(WEB_ROOT_ENV) or DEFAULT_WEB_ROOT
        if "://" in args.identifier and _site(args.identifier) != _site(root):
            hint = (
                " (a URL of another hub, such as a local one, parses with --web-root ROOT "
                "or ULTRALYTICS_HUB_WEB=ROOT)"
            )
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    print(json.dumps(identifier.to_json_dict(), indent=2))
    return 0


# -- hub serve ---------------------------------------------------------------------


def cmd_hub_serve(args: argparse.Namespace) -> int:
    """Run the local hub in the foreground."""
    from hubfsm.hub.server import BodyLimits, serve

    return serve(
        args.data,
        host=args.host,
        port=args.port,
        fault_rate=args.fault_rate,
        rate_limit=args.rate_limit,
        latency=args.latency,
        seed=args.seed,
        timeout=args.timeout,
        limits=BodyLimits(json=int(args.max_json_mib * 2**20), upload=args.max_upload_mib << 20),
    )


# -- demo --------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a tiny model and report it to a hub (an embedded local one by default)."""
    from hubfsm.cli.demo import train

    out = sys.stdout
    if not args.hub:
        extra = [o for o, v in (("--key", args.key), ("--key-file", args.key_file)) if v]
        extra += ["--web-root"] if args.web_root else []
        if extra:
            print(
                f"error: {', '.join(extra)}: only with --hub (the embedded hub makes its "
                "own key and address)",
                file=sys.stderr,
            )
            return 2
    else:
        if args.data or args.fault_rate:
            print(
                "error: --data and --fault-rate are for the embedded hub, not with --hub",
                file=sys.stderr,
            )
            return 2
        key = _key_from(args)
        if not key:
            print(
                f"error: --hub needs an API key: {KEY_ENV}, --key-file FILE or --key",
                file=sys.stderr,
            )
            return 2
        result = train(
            api_key=key,
            api_root=args.hub,
            web_root=args.web_root or args.hub,
            epochs=args.epochs,
            seed=args.seed,
            out=out,
        )
        _print_summary(result, None)
        return 0 if result.state == "done" else 1

    from hubfsm.hub.faults import FaultMix
    from hubfsm.hub.server import LocalHub

    faults = FaultMix.from_rate(args.fault_rate) if args.fault_rate else None
    with tempfile.TemporaryDirectory(prefix="hubfsm-hub-") as tmp:
        data = Path(args.data) if args.data else Path(tmp)
        with LocalHub(data, faults=faults, seed=args.seed) as local:
            print(f"local hub at {local.url} (data in {data})", file=out)
            # What the embedded hub has not acknowledged stays with the hub's data: with
            # --data, `hubfsm sync DATA/outbox` sends it once `hub serve --data DATA`
            # runs; a temporary hub takes its records with it, so nothing is kept.
            try:
                result = train(
                    api_key=local.api_key,
                    api_root=local.url,
                    web_root=local.url,
                    epochs=args.epochs,
                    seed=args.seed,
                    out=out,
                    outbox_dir=data / "outbox" if args.data else None,
                    outbox=bool(args.data),
                )
            except KeyboardInterrupt:
                if not args.data:
                    print(
                        "the embedded hub was temporary: it stops now, and nothing is kept",
                        file=sys.stderr,
                    )
                raise
            record = local.hub.record(result.model_id) or {}
            arrived = local.hub.metrics(result.model_id)
            _print_summary(result, (record, len(arrived)))
            if not args.data:
                print(
                    "(the hub's data was temporary; pass --data DIR to keep it and browse "
                    "it later with `hubfsm hub serve --data DIR`)",
                    file=out,
                )
    return 0 if result.state == "done" else 1


def _print_summary(result: object, hub_side: tuple[dict[str, object], int] | None) -> None:
    from hubfsm.cli.demo import DemoResult

    assert isinstance(result, DemoResult)
    stats = result.stats
    sent = stats["sent"]
    print(f"\nmodel page: {result.model_url}")
    print(f"state: {result.state} in {result.seconds:.1f} s")
    print(f"epochs logged: {result.epochs}, acknowledged: {stats['epochs_acknowledged']}")
    print(f"checkpoints acknowledged: {stats['checkpoints_acknowledged']}")
    print(
        f"requests: {sum(sent.values())} ({', '.join(f'{k} {v}' for k, v in sent.items())}); "
        f"retries: {stats['retries']}"
    )
    if hub_side is not None:
        record, epochs_on_hub = hub_side
        print(
            f"on the hub: status {record.get('status')}, {epochs_on_hub} epochs of metrics, "
            f"final weights: {'yes' if record.get('has_best_weights') else 'no'}"
        )


# -- simulate ----------------------------------------------------------------------


def _seeds(text: str) -> range:
    lo, sep, hi = text.partition("-")
    try:
        first = int(lo)
        last = int(hi) if sep else first
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M, not {text!r}") from None
    if first < 0 or last < first:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M with N <= M, not {text!r}")
    return range(first, last + 1)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run seeded simulated sessions and check the invariants."""
    from hubfsm.cli.simulate import run

    return run(args)


# -- sync and status -------------------------------------------------------------


def _missing(directory: str | None) -> bool:
    """True (having said so) when the directory given does not exist."""
    if directory and not Path(directory).is_dir():
        what = "is not a directory" if Path(directory).exists() else "does not exist"
        print(f"error: {directory} {what}", file=sys.stderr)
        return True
    return False


def cmd_sync(args: argparse.Namespace) -> int:
    """Send what the outboxes hold."""
    from hubfsm.durable.outbox import find, inspect
    from hubfsm.runtime.sync import root_of, sync
    from transports.http import API_ROOT_ENV, DEFAULT_API_ROOT

    if _missing(args.dir):
        return 2
    root = args.hub or os.environ.get(API_ROOT_ENV) or DEFAULT_API_ROOT
    key = _key_from(args)
    waiting = [i for i in inspect(find(root_of(args.dir))) if any(i.pending.values())]
    if waiting and not key:
        print(
            f"error: sync needs the hub's API key: {KEY_ENV}, --key-file FILE or --key",
            file=sys.stderr,
        )
        return 2
    if waiting:
        print(f"hub: {root}", file=sys.stdout)
    return sync(
        root_of(args.dir),
        api_key=key,
        api_root=root,
        timeout=args.timeout,
        out=sys.stdout,
    )


def cmd_status(args: argparse.Namespace) -> int:
    """List the outboxes and what each holds."""
    from hubfsm.runtime.sync import root_of, status

    if _missing(args.dir):
        return 2
    return status(root_of(args.dir), out=sys.stdout)


def cmd_discard(args: argparse.Namespace) -> int:
    """Delete an outbox and what it holds, after asking."""
    from hubfsm.cli.discard import discard

    return discard(args.target, root=args.root, yes=args.yes, rejected_only=args.rejected)


# -- main --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    from hubfsm.sim.profiles import PROFILES

    parser = _Parser(
        prog="hubfsm",
        description="A training-session client for model hubs: demo, local hub, simulation.",
        epilog="Run `hubfsm COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"hubfsm {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show what hubfsm is doing on standard error: -v progress, -vv every request",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(
        sub,
        "demo",
        "Train a tiny model and report every epoch, checkpoint and the final weights "
        "to a hub (an embedded local hub unless --hub is given).",
        "hubfsm demo --epochs 5\nhubfsm demo --fault-rate 0.3   # rehearse a flaky hub",
    )
    p.add_argument("--epochs", type=_positive_int, default=10, help="epochs to train (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seeds data, model and faults")
    p.add_argument(
        "--data",
        type=_directory,
        metavar="DIR",
        help="keep the embedded hub's data, and what it has not acknowledged, in DIR "
        "(default: a temporary directory, removed at the end)",
    )
    p.add_argument(
        "--fault-rate",
        type=_share,
        default=0.0,
        help="share of the embedded hub's answers to fail (0 to 1)",
    )
    p.add_argument(
        "--hub",
        type=_api_root,
        metavar="URL",
        help="use this hub's API root (http:// or https://) instead of an embedded one",
    )
    _add_key_options(p, f"for --hub (default: {KEY_ENV})")
    p.add_argument("--web-root", metavar="URL", help="the web root for model URLs with --hub")
    p.set_defaults(func=cmd_demo)

    p = _command(
        sub,
        "parse",
        "Parse a model identifier and print it as JSON (the API key masked).",
        "hubfsm parse https://hub.ultralytics.com/models/AbCdEfGhIjKlMnOpQrSt",
    )
    p.add_argument("identifier", help="a model URL, apiKey_modelId, a model id, or a .pt/.yaml")
    p.add_argument("--web-root", help="the hub's web root (default: ULTRALYTICS_HUB_WEB)")
    p.set_defaults(func=cmd_parse)

    hub = _command(
        sub,
        "hub",
        "Run the local hub and manage its keys.",
        "hubfsm hub serve --port 8000\nhubfsm hub keys list",
    )
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="COMMAND", required=True)
    p = _command(
        hub_sub,
        "serve",
        "Serve the HUB REST API and model pages on this machine, with records in "
        "SQLite and weights on disk; optionally inject faults.",
        "hubfsm hub serve --data ./hub --port 8000 --fault-rate 0.2 --seed 1",
    )
    p.add_argument(
        "--data",
        type=_directory,
        metavar="DIR",
        help="data directory (default: the user data directory)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 for any)")
    p.add_argument(
        "--fault-rate",
        type=_share,
        default=0.0,
        help="share of API answers to fail with 5xx, 429, timeouts (0 to 1)",
    )
    p.add_argument("--rate-limit", type=_positive, help="requests per second per key, then 429")
    p.add_argument(
        "--latency", type=_seconds, default=0.0, help="up to this many seconds per answer"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the fault draws")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="close connections silent this long (s)"
    )
    p.add_argument("--max-json-mib", type=float, default=4, help="largest JSON body (MiB)")
    p.add_argument("--max-upload-mib", type=int, default=4096, help="largest upload (MiB)")
    p.set_defaults(func=cmd_hub_serve)
    from hubfsm.hub.admin import register as register_keys

    register_keys(hub_sub, _command)

    p = _command(
        sub,
        "sync",
        "Send everything that outboxes hold (metrics, checkpoints, final weights), with the "
        "same idempotency keys as the session that left them; safe to interrupt and rerun.",
        "hubfsm sync                      # every outbox under the default root\n"
        "HUB_API_KEY=... hubfsm sync ~/.local/share/hubfsm/outbox/AbCdEfGhIjKlMnOpQrSt",
    )
    p.add_argument(
        "dir",
        nargs="?",
        help="an outbox root or one model's outbox "
        "(default: HUBFSM_OUTBOX, else the user data directory)",
    )
    p.add_argument(
        "--hub",
        type=_api_root,
        metavar="URL",
        help="the API root (default: ULTRALYTICS_HUB_API, else the public hub)",
    )
    _add_key_options(p, f"(default: {KEY_ENV})")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=600.0,
        help="seconds to spend on each model (default 600)",
    )
    p.set_defaults(func=cmd_sync)

    p = _command(
        sub,
        "status",
        "List outboxes and what each still holds.",
        "hubfsm status\nhubfsm status ./outbox",
    )
    p.add_argument("dir", nargs="?", help="an outbox root or one model's outbox")
    p.set_defaults(func=cmd_status)

    p = _command(
        sub,
        "discard",
        "Delete an outbox you no longer want, with everything it holds that the hub has "
        "not acknowledged (say, for a model deleted on the hub), or only the records the "
        "hub rejected. Asks first; refuses an outbox a running session holds.",
        "hubfsm discard AbCdEfGhIjKlMnOpQrSt\n"
        "hubfsm discard AbCdEfGhIjKlMnOpQrSt --rejected   # after reading hubfsm status\n"
        "hubfsm discard ./outbox/AbCdEfGhIjKlMnOpQrSt --yes",
    )
    p.add_argument("target", metavar="OUTBOX", help="a model id, or that model's outbox directory")
    p.add_argument(
        "--root",
        metavar="DIR",
        help="the outbox root a model id is looked up in "
        "(default: HUBFSM_OUTBOX, else the user data directory)",
    )
    p.add_argument(
        "--rejected",
        action="store_true",
        help="delete only the records the hub rejected, and keep what is pending",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_discard)

    p = _command(
        sub,
        "simulate",
        "Simulate training sessions, one per seed, through the real core and retry policy "
        "against an in-memory hub with faults on a virtual clock (or a local hub over HTTP "
        "with --http), and check the invariants after every step. Exits 0 only when every "
        "invariant held for every seed.",
        "hubfsm simulate --seeds 0-9999 --profile all --jobs 2\n"
        "hubfsm simulate --profile flaky,hostile --epochs 100\n"
        "hubfsm simulate --profile flaky --seed 17 --trace   # replay one seed\n"
        "hubfsm simulate --seed 17 --json > trace.jsonl      # the same, as JSON lines\n"
        "hubfsm simulate --http --profile all                # real HTTP, 5 seeds each\n"
        "hubfsm simulate --describe                          # the profiles and their rates",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--seeds", type=_seeds, help="seeds to run, N or N-M (default 0-99; 0-4 with --http)"
    )
    group.add_argument("--seed", type=int, help="run one seed")
    p.add_argument(
        "--profile",
        default="flaky",
        help=f"{', '.join(PROFILES)}; a comma list; or all (default flaky)",
    )
    p.add_argument(
        "--epochs", type=_positive_int, help="epochs per session (default 50; 8 with --http)"
    )
    p.add_argument(
        "--jobs", type=_positive_int, default=1, help="processes to spread seeds over (default 1)"
    )
    p.add_argument("--trace", action="store_true", help="print each seed's full trace")
    p.add_argument("--json", action="store_true", help="print the traces as JSON lines")
    p.add_argument(
        "--http",
        action="store_true",
        help="run against a local hub over HTTP on loopback, with scaled-down limits",
    )
    p.add_argument("--describe", action="store_true", help="print the profiles as a Markdown table")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hubfsm`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_cli(args.verbose)
    try:
        return int(args.func(args))
    except HubfsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        # What the transport refuses at set-up (plain http:// to another machine, a
        # malformed key) is a usage error; with -vv the traceback shows where it came from.
        if args.verbose >= 2:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
