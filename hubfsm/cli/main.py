"""The ``hubfsm`` command line: demo, local hub, simulation and identifier parsing."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import structlog

from hubfsm.core.identifier import parse_identifier
from hubfsm.errors import HubfsmError, IdentifierError
from hubfsm.version import __version__


def _configure_logs(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str,
) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + textwrap.indent(example, "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# -- parse -------------------------------------------------------------------------


def cmd_parse(args: argparse.Namespace) -> int:
    """Print an identifier's parse as JSON, or the reason it was rejected."""
    try:
        identifier = parse_identifier(args.identifier, web_root=args.web_root)
    except IdentifierError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    if args.hub:
        key = args.key or os.environ.get("HUB_API_KEY")
        if not key:
            print("error: --hub needs an API key: --key or HUB_API_KEY", file=sys.stderr)
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
            result = train(
                api_key=local.api_key,
                api_root=local.url,
                web_root=local.url,
                epochs=args.epochs,
                seed=args.seed,
                out=out,
            )
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


def cmd_sync(args: argparse.Namespace) -> int:
    """Send what the outboxes hold."""
    from hubfsm.runtime.sync import root_of, sync

    return sync(
        root_of(args.dir),
        api_key=args.key,
        api_root=args.hub,
        timeout=args.timeout,
        out=sys.stdout,
    )


def cmd_status(args: argparse.Namespace) -> int:
    """List the outboxes and what each holds."""
    from hubfsm.runtime.sync import root_of, status

    return status(root_of(args.dir), out=sys.stdout)


# -- main --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="hubfsm",
        description="A training-session client for model hubs: demo, local hub, simulation.",
        epilog="Run `hubfsm COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"hubfsm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(
        sub,
        "demo",
        "Train a tiny model and report every epoch, checkpoint and the final weights "
        "to a hub (an embedded local hub unless --hub is given).",
        "hubfsm demo --epochs 5\nhubfsm demo --fault-rate 0.3   # rehearse a flaky hub",
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs to train (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seeds data, model and faults")
    p.add_argument("--data", help="keep the embedded hub's data in DIR (default: temporary)")
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="share of the embedded hub's answers to fail (0 to 1)",
    )
    p.add_argument("--hub", help="use this hub's API root instead of an embedded one")
    p.add_argument("--key", help="the API key for --hub (default: HUB_API_KEY)")
    p.add_argument("--web-root", help="the web root for model URLs with --hub")
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
    p.add_argument("--data", help="data directory (default: the user data directory)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 for any)")
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="share of API answers to fail with 5xx, 429, timeouts (0 to 1)",
    )
    p.add_argument("--rate-limit", type=float, help="requests per second per key, then 429")
    p.add_argument("--latency", type=float, default=0.0, help="up to this many seconds per answer")
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
    p.add_argument("--hub", help="the API root (default: ULTRALYTICS_HUB_API)")
    p.add_argument("--key", help="the API key (default: HUB_API_KEY)")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to spend on each model (default 600)"
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
        help="calm, flaky, hostile, partition, revoked; a comma list; or all (default flaky)",
    )
    p.add_argument("--epochs", type=int, help="epochs per session (default 50; 8 with --http)")
    p.add_argument("--jobs", type=int, default=1, help="processes to spread seeds over (default 1)")
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
    _configure_logs(args.verbose)
    try:
        return int(args.func(args))
    except HubfsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
