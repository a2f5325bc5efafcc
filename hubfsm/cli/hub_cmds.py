"""The ``hubfsm hub serve``, ``hubfsm hub sweep`` and ``hubfsm demo`` commands."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from hubfsm.cli.args import KEY_ENV, key_from


def cmd_hub_serve(args: argparse.Namespace) -> int:
    """Run the local hub in the foreground."""
    from hubfsm.hub.bodies import BodyLimits
    from hubfsm.hub.foreground import serve

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
        heartbeat_interval=args.heartbeat_interval,
        database=args.database,
        objects=args.objects,
        workers=args.workers,
        sign_in=args.sign_in,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def cmd_hub_sweep(args: argparse.Namespace) -> int:
    """Delete a team hub's unnamed weight objects and abort its unfinished uploads."""
    import psycopg
    from botocore.exceptions import BotoCoreError, ClientError

    from hubfsm.hub.objects_s3 import S3Objects
    from hubfsm.hub.store_postgres import PostgresStore

    hours = args.older_than_hours
    try:
        # A quick look first: the pool would retry a wrong URL for half a minute.
        psycopg.connect(args.database, connect_timeout=10).close()
        store = PostgresStore(args.database, S3Objects(args.objects), pool_size=1)
        try:
            gone = store.sweep_objects(older_than=hours * 3600.0)
        finally:
            store.close()
    except psycopg.Error as error:
        # libpq's message names the host and port, never the password.
        raise ValueError(f"cannot use the database: {str(error).strip()}") from None
    except (BotoCoreError, ClientError) as error:
        # botocore names the endpoint, bucket and operation, never the secret key.
        raise ValueError(f"cannot use the object store {args.objects}: {error}") from None
    print(f"Swept {gone} objects and unfinished uploads older than {hours:g} h.")
    return 0


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
        key = key_from(args)
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

    from hubfsm.hub.server import LocalHub
    from transports.faults import FaultMix

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
                elif (data / "outbox").is_dir() and any((data / "outbox").iterdir()):
                    _say_how_to_sync(data, local.url)
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
            else:
                print(
                    f"(the hub's data stays in {data}; browse it with "
                    f"`hubfsm hub serve --data {shlex.quote(str(data))}`)",
                    file=out,
                )
    return 0 if result.state == "done" else 1


def _say_how_to_sync(data: Path, url: str) -> None:
    """After an interrupted demo with --data: the two commands that deliver what is kept."""
    import shlex
    from urllib.parse import urlsplit

    port = urlsplit(url).port
    serve = shlex.join(["hubfsm", "hub", "serve", "--data", str(data), "--port", str(port)])
    sync = shlex.join(
        ["hubfsm", "sync", "--hub", url, "--key-file", str(data / "api_key"), str(data / "outbox")]
    )
    print(
        f"what the hub has not acknowledged is kept in {data / 'outbox'}: start the hub "
        f"again with `{serve}`, then run `{sync}`",
        file=sys.stderr,
    )


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
