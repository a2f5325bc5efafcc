"""The commands around a hub: ``hubfsm hub serve``, ``hubfsm hub sweep`` and ``hubfsm demo``.

The demo is a small real training run reported to a hub (an embedded local one by
default) through a Session. Its model is a logistic regression fitted by gradient
descent on a synthetic data set, with the standard library only, so the demo needs
nothing beyond hubfsm itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from hubfsm.cli.args import KEY_ENV, key_from

if TYPE_CHECKING:
    # Imported where the demo runs: every command loads this module, not the runtime.
    from hubfsm.runtime.session import Session


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
        sweep_hours=args.sweep_hours,
    )


def cmd_hub_sweep(args: argparse.Namespace) -> int:
    """Delete a team hub's unnamed weight objects and abort its unfinished uploads."""
    import psycopg
    from botocore.exceptions import BotoCoreError, ClientError

    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

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


def _print_summary(result: DemoResult, hub_side: tuple[dict[str, object], int] | None) -> None:
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


# -- the demo's training run --------------------------------------------------------

#: Seconds each epoch waits, standing in for data loading and accelerator time.
PAUSE = 0.2

#: Seconds an interrupted demo spends sending what is left before it stops.
STOP_SECONDS = 3.0

ARCHITECTURE = """\
# A two-feature logistic regression: the demo's whole "architecture".
nc: 2
features: 2
layers: [[-1, 1, Linear, [2, 1]], [-1, 1, Sigmoid, []]]
"""


@attrs.frozen
class DemoResult:
    """What the demo ran and what the hub acknowledged."""

    model_id: str
    model_url: str
    epochs: int
    state: str
    stats: dict[str, Any]
    seconds: float


def _data(rng: random.Random, n: int) -> list[tuple[float, float, int]]:
    points = []
    for _ in range(n):
        label = rng.random() < 0.5
        cx, cy = (1.0, 1.0) if label else (-1.0, -0.5)
        points.append((rng.gauss(cx, 1.0), rng.gauss(cy, 1.0), int(label)))
    return points


def _loss_and_accuracy(
    w: Sequence[float], points: Sequence[tuple[float, float, int]]
) -> tuple[float, float]:
    loss = 0.0
    right = 0
    for x, y, label in points:
        p = 1.0 / (1.0 + math.exp(-(w[0] * x + w[1] * y + w[2])))
        p = min(max(p, 1e-9), 1 - 1e-9)
        loss -= label * math.log(p) + (1 - label) * math.log(1 - p)
        right += int((p >= 0.5) == bool(label))
    return loss / len(points), right / len(points)


def _epoch(w: list[float], points: Sequence[tuple[float, float, int]], lr: float) -> None:
    for x, y, label in points:
        p = 1.0 / (1.0 + math.exp(-(w[0] * x + w[1] * y + w[2])))
        g = p - label
        w[0] -= lr * g * x
        w[1] -= lr * g * y
        w[2] -= lr * g


def _save(path: Path, w: Sequence[float], epoch: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"epoch": epoch, "weights": list(w)}))
    os.replace(tmp, path)


def train(
    *,
    api_key: str,
    api_root: str,
    web_root: str,
    epochs: int = 10,
    seed: int = 0,
    workdir: Path | None = None,
    out: TextIO,
    outbox: bool = True,
    outbox_dir: Path | None = None,
) -> DemoResult:
    """Create a model on the hub from a local architecture file and train it.

    Args:
        api_key: The hub's API key.
        api_root: The hub's API root.
        web_root: The hub's web root, for the model page URL.
        epochs: Epochs to train.
        seed: Seeds the data and the model.
        workdir: Where the architecture and weight files go (a temporary directory if None).
        out: Where progress lines go.
        outbox: Keep what the hub has not acknowledged on disk.
        outbox_dir: The outbox root (default: the session's default).
    """
    from hubfsm.runtime.session import Session

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubfsm-demo-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        arch = work / "tiny-logreg.yaml"
        arch.write_text(ARCHITECTURE)
        rng = random.Random(seed)
        train_args = {"data": "synthetic-2d", "epochs": epochs, "batch": 1, "imgsz": 2}
        with Session(
            str(arch),
            api_key=api_key,
            api_root=api_root,
            web_root=web_root,
            train_args=train_args,
            outbox=outbox,
            outbox_dir=outbox_dir,
            exit_timeout=STOP_SECONDS,
            # The seed is what reproduces the run: the hub shows it with the run.
            tags=[f"seed={seed}", "demo"],
            notes=f"hubfsm demo: {epochs} epochs of logistic regression, seed {seed}",
        ) as session:
            # The session's jitter and idempotency keys are left unseeded: two runs with
            # the same seed are two trainings, so they must not look like one retried.
            print(f"model created: {session.model_url}", file=out)
            try:
                _train(session, work, epochs, rng, out)
            except KeyboardInterrupt:
                print(
                    f"\ninterrupted: sending what the hub has not acknowledged yet "
                    f"(at most {STOP_SECONDS:g} s) ...",
                    file=sys.stderr,
                    flush=True,
                )
                raise
            return DemoResult(
                model_id=session.model_id or "",
                model_url=session.model_url,
                epochs=epochs,
                state=session.state,
                stats=session.stats(),
                seconds=time.monotonic() - started,
            )


def _train(session: Session, work: Path, epochs: int, rng: random.Random, out: TextIO) -> None:
    """The training loop: an epoch, its metrics and checkpoint, then the final weights."""
    train_set, val_set = _data(rng, 40_000), _data(rng, 4_000)
    w = [rng.gauss(0, 0.1) for _ in range(3)]
    best = work / "best.pt"
    best_accuracy = -1.0
    for epoch in range(epochs):
        _epoch(w, train_set, lr=0.05 / (1 + epoch))
        # A real epoch spends most of its time waiting on the data loader and
        # the accelerator, with the GIL released; this pure-Python model never
        # releases it, so it pauses as a real loop would.
        time.sleep(PAUSE)
        train_loss, _ = _loss_and_accuracy(w, train_set)
        val_loss, accuracy = _loss_and_accuracy(w, val_set)
        session.log_metrics(
            {
                "train/loss": round(train_loss, 6),
                "val/loss": round(val_loss, 6),
                "metrics/accuracy": round(accuracy, 6),
            },
            epoch=epoch,
        )
        # One file per epoch: without an outbox (the temporary hub) an upload reads the
        # file it was offered, so replacing one last.pt would change a checkpoint under
        # an upload being retried, and the retry would fail on the changed file.
        last = work / f"epoch{epoch}.pt"
        _save(last, w, epoch)
        is_best = accuracy > best_accuracy
        if is_best:
            best_accuracy = accuracy
            _save(best, w, epoch)
        session.save_checkpoint(last, epoch=epoch, is_best=is_best)
        print(
            f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, "
            f"val loss {val_loss:.4f}, accuracy {accuracy:.3f}",
            file=out,
        )
    print("uploading final weights ...", file=out)
    session.finish(best, epoch=epochs - 1, map50_95=best_accuracy)
