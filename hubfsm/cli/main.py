"""The ``hubfsm`` command line: demo, local hub, simulation and identifier parsing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from hubfsm import env
from hubfsm.cli.args import (
    KEY_ENV,
    Parser,
    add_key_options,
    add_protocol_option,
    api_root,
    command,
    directory,
    not_negative,
    port,
    positive,
    positive_int,
    seconds,
    seeds,
    share,
)
from hubfsm.cli.hub_cmds import cmd_demo, cmd_hub_serve, cmd_hub_sweep
from hubfsm.cli.outboxes import cmd_discard, cmd_status, cmd_sync
from hubfsm.core.identifier import DEFAULT_WEB_ROOT, parse_identifier
from hubfsm.errors import HubfsmError, IdentifierError
from hubfsm.logs import configure_cli
from hubfsm.version import __version__

# status and sync read the same root, and say so alike
OUTBOX_DIR_HELP = (
    "an outbox root or one model's outbox (default: HUBFSM_OUTBOX, else the user data directory)"
)

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
        root = args.web_root or env.web_root() or DEFAULT_WEB_ROOT
        if "://" in args.identifier and _site(args.identifier) != _site(root):
            hint = (
                " (a URL of another hub, such as a local one, parses with --web-root ROOT "
                "or ULTRALYTICS_HUB_WEB=ROOT)"
            )
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    print(json.dumps(identifier.to_json_dict(), indent=2))
    return 0


# -- simulate ----------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run seeded simulated sessions and check the invariants."""
    from hubfsm.cli.simulate import run

    return run(args)


# -- main --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    from hubfsm.sim.profiles import PROFILES

    parser = Parser(
        prog="hubfsm",
        description="A training-session client for model hubs (Ultralytics HUB's API and "
        "Ultralytics Platform's): demo, local hub, outboxes, simulation. With ultralytics 8.4, "
        "`hubfsm.integrations.ultralytics.install()` reports training to Platform through "
        "hubfsm; `hubfsm status` and `hubfsm sync` show and send what a run left behind.",
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

    p = command(
        sub,
        "demo",
        "Train a tiny model and report every epoch, checkpoint and the final weights "
        "to a hub (an embedded local hub unless --hub is given).",
        "hubfsm demo --epochs 5\nhubfsm demo --fault-rate 0.3   # rehearse a flaky hub",
    )
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs to train (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seeds data, model and faults")
    p.add_argument(
        "--data",
        type=directory,
        metavar="DIR",
        help="keep the embedded hub's data, and what it has not acknowledged, in DIR "
        "(default: a temporary directory, removed at the end)",
    )
    p.add_argument(
        "--fault-rate",
        type=share,
        default=0.0,
        help="share of the embedded hub's answers to fail (0 to 1)",
    )
    p.add_argument(
        "--hub",
        type=api_root,
        metavar="URL",
        help="use this hub's API root (http:// or https://) instead of an embedded one",
    )
    add_key_options(p, f"for --hub (default: {KEY_ENV})")
    p.add_argument("--web-root", metavar="URL", help="the web root for model URLs with --hub")
    p.set_defaults(func=cmd_demo)

    p = command(
        sub,
        "parse",
        "Parse a model identifier and print it as JSON (the API key masked).",
        "hubfsm parse https://hub.ultralytics.com/models/AbCdEfGhIjKlMnOpQrSt",
    )
    p.add_argument("identifier", help="a model URL, apiKey_modelId, a model id, or a .pt/.yaml")
    p.add_argument("--web-root", help="the hub's web root (default: ULTRALYTICS_HUB_WEB)")
    p.set_defaults(func=cmd_parse)

    hub = command(
        sub,
        "hub",
        "Run the local hub and manage its keys.",
        "hubfsm hub serve --port 8000\nhubfsm hub keys list",
    )
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="COMMAND", required=True)
    p = command(
        hub_sub,
        "serve",
        "Serve the HUB REST API (ultralytics up to 8.3: ULTRALYTICS_HUB_API), the "
        "Platform API (ultralytics 8.4: ULTRALYTICS_PLATFORM_URL, with a key from `hubfsm "
        "hub keys add --platform`) and the model pages on this machine, with records in SQLite and "
        "weights on disk (or PostgreSQL and S3 for a team); optionally inject faults.",
        "hubfsm hub serve --data ./hub --port 8000 --fault-rate 0.2 --seed 1",
    )
    p.add_argument(
        "--data",
        type=directory,
        metavar="DIR",
        help="data directory (default: the user data directory)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="port (default 8000; 0 for any)")
    p.add_argument(
        "--fault-rate",
        type=share,
        default=0.0,
        help="share of API answers to fail with 5xx, 429, timeouts (0 to 1)",
    )
    p.add_argument("--rate-limit", type=positive, help="requests per second per key, then 429")
    p.add_argument(
        "--latency", type=seconds, default=0.0, help="up to this many seconds per answer"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the fault draws")
    p.add_argument(
        "--timeout", type=positive, default=30.0, help="close connections silent this long (s)"
    )
    p.add_argument("--max-json-mib", type=positive, default=4, help="largest JSON body (MiB)")
    p.add_argument("--max-upload-mib", type=positive_int, default=4096, help="largest upload (MiB)")
    p.add_argument(
        "--heartbeat-interval",
        type=positive,
        default=300.0,
        help="seconds between a trainer's heartbeats; the pages call a run stalled after "
        "two without a sign of it (default 300)",
    )
    p.add_argument(
        "--database",
        metavar="URL",
        help="keep records in PostgreSQL at this postgresql:// URL (a password is better "
        "in PGPASSWORD or ~/.pgpass); needs --objects",
    )
    p.add_argument(
        "--objects",
        metavar="URL",
        help="keep weight files in S3 at s3://bucket/prefix (endpoint and credentials from "
        "the AWS_* variables); needs --database",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes sharing the port (with --database; default 1)",
    )
    p.add_argument(
        "--sign-in",
        dest="sign_in",
        action="store_true",
        default=None,
        help="browsers sign in to the pages with an API key and see that key's models "
        "(the default when --host is not a loopback address; behind a proxy on this "
        "machine, pass it)",
    )
    p.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (chain)"
    )
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    p.add_argument(
        "--sweep-hours",
        type=not_negative,
        default=24.0,
        metavar="H",
        help="with --database, sweep the object store every H hours as `hubfsm hub sweep` "
        "does (one process of the team each time; 0: never; default 24)",
    )
    p.set_defaults(func=cmd_hub_serve)
    p = command(
        hub_sub,
        "sweep",
        "Delete a team hub's weight objects that no record names (uploads cut short by a "
        "crash) and abort the multipart uploads killed processes left (`hubfsm hub serve "
        "--database` does so daily by itself).",
        "hubfsm hub sweep --database postgresql://hub@db/hub --objects s3://team-hub/weights",
    )
    p.add_argument("--database", metavar="URL", required=True, help="the team's postgresql:// URL")
    p.add_argument("--objects", metavar="URL", required=True, help="the team's s3://bucket/prefix")
    p.add_argument(
        "--older-than-hours",
        type=not_negative,
        default=24.0,
        metavar="H",
        help="leave what is younger: an upload under way is in no record yet (default 24)",
    )
    p.set_defaults(func=cmd_hub_sweep)
    from hubfsm.hub.admin import register as register_keys

    register_keys(hub_sub, command)

    p = command(
        sub,
        "sync",
        "Send everything that outboxes hold (metrics, checkpoints, final weights), with the "
        "same idempotency keys as the session that left them; safe to interrupt and rerun.",
        "hubfsm sync                      # every outbox under the default root\n"
        "HUB_API_KEY=... hubfsm sync ~/.local/share/hubfsm/outbox/AbCdEfGhIjKlMnOpQrSt\n"
        "ULTRALYTICS_API_KEY=... hubfsm sync --protocol platform",
    )
    p.add_argument("dir", nargs="?", help=OUTBOX_DIR_HELP)
    p.add_argument(
        "--hub",
        type=api_root,
        metavar="URL",
        help="send every outbox to this API root (default: the hub each outbox was made "
        "for; for an outbox older than that record, ULTRALYTICS_HUB_API (Platform outboxes: "
        "ULTRALYTICS_PLATFORM_URL), else the public hub)",
    )
    add_key_options(
        p,
        f"(default: {KEY_ENV} for HUB outboxes, {env.PLATFORM_API_KEY} for Platform ones, "
        "else the key `yolo login` saved in ultralytics' settings; a ul_ key goes to "
        "Platform ones, another to HUB ones)",
    )
    p.add_argument(
        "--timeout",
        type=positive,
        default=600.0,
        help="seconds to spend on each model (default 600)",
    )
    add_protocol_option(p)
    p.set_defaults(func=cmd_sync)

    p = command(
        sub,
        "status",
        "List outboxes and what each still holds.",
        "hubfsm status\nhubfsm status ./outbox\nhubfsm status --json",
    )
    p.add_argument("dir", nargs="?", help=OUTBOX_DIR_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    add_protocol_option(p)
    p.set_defaults(func=cmd_status)

    p = command(
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

    p = command(
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
        "hubfsm simulate --protocol platform --profile all   # the Platform dialect\n"
        "hubfsm simulate --describe                          # the profiles and their rates",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--seeds", type=seeds, help="seeds to run, N or N-M (default 0-99; 0-4 with --http)"
    )
    group.add_argument("--seed", type=int, help="run one seed")
    p.add_argument(
        "--profile",
        default="flaky",
        help=f"{', '.join(PROFILES)}; a comma list; or all (default flaky)",
    )
    p.add_argument(
        "--epochs", type=positive_int, help="epochs per session (default 50; 8 with --http)"
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        help="processes to spread seeds over (default: one per usable CPU from 200 sessions "
        "on, as seeds x profiles, up to one per 200; else 1; always 1 with --http); the "
        "results do not depend on it",
    )
    p.add_argument("--trace", action="store_true", help="print each seed's full trace")
    p.add_argument("--json", action="store_true", help="print the traces as JSON lines")
    p.add_argument(
        "--http",
        action="store_true",
        help="run against a local hub over HTTP on loopback, with scaled-down limits",
    )
    p.add_argument(
        "--protocol",
        choices=("hub", "platform"),
        default="hub",
        help="the dialect the sessions speak: hub (HUB v1) or platform (the Ultralytics "
        "Platform API, with its own invariants too) (default hub)",
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
    args.verbose += getattr(args, "verbose_after", 0)
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
    except OSError as exc:
        # A file the user may not read or write (a data directory, an outbox): one line
        # naming it, as for any other error; -vv shows the traceback.
        if args.verbose >= 2:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
