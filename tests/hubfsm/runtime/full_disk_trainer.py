"""A trainer on a small real file system, for the full-disk tests (run under unshare).

Usage: full_disk_trainer.py SCENARIO DISK WORK

``DISK`` is a small tmpfs mounted for this process only: the outbox root lies there.
``WORK`` is a directory on another file system, for weights that must not fit. The
hub is an in-memory one in this process. At the end the script prints one JSON line:
the epochs logged, those on the hub, those in the outbox, the weights the hub holds
and any ``.incoming-*`` file left under ``DISK``.

Scenarios:
    big: every checkpoint (and the final weights) is larger than the free space and
        lies on another file system, so no held link can stand in for a copy.
    held: the checkpoint lies on the small disk itself, which is then filled: a copy
        cannot be had, its held link is kept instead.
    fill: the disk fills up mid-run (the outbox and the journal both meet ENOSPC,
        long enough for the journal to need more room), then frees up.
    blip: offline (the outbox is the only place epochs go), the disk is full for a
        stretch of epochs, then frees up: the outbox must end with every epoch.
    open: the disk is full before a session opens on a new model: it must fail, saying
        so, before the hub makes the model (its own JSON line: the error, the models).
"""

import errno
import hashlib
import json
import sys
import time
from pathlib import Path

import structlog

from hubfsm.core.config import CoreConfig
from hubfsm.durable.outbox import Outbox
from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore
from hubfsm.runtime.session import Session
from tests.support import KEY, new_model
from transports.memory import InMemoryTransport

# Log lines go to stderr, where the test reads the event names.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

FAST = CoreConfig().scaled(0.001)


def weights(path, size, seed):
    block = hashlib.sha256(seed.encode()).digest()
    path.write_bytes((block * (size // len(block) + 1))[:size])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill(disk):
    """Write a file until the disk is full; returns it."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # What the buffer still held cannot be written either; closing says so again.
    return filler


def close_filler(filler):
    try:
        filler.unlink()
    except FileNotFoundError:
        pass


def outbox_epochs(disk, model_id):
    if not (disk / model_id).exists():
        return []
    outbox = Outbox.open(model_id, disk)
    try:
        saved = outbox.load()
    finally:
        outbox.close()
    epochs = {epoch for epoch, _ in saved.metrics}
    for op in saved.ops:
        if op.channel == "metrics":
            epochs.update(op.payload)
    return sorted(epochs)


def metrics(epoch, wide):
    if not wide:
        return {"train/loss": 1.0 / (epoch + 1), "metrics/mAP50-95(B)": epoch * 0.01}
    # Integers and long names: entry records, a couple of KiB each, so the journal
    # outgrows its first MiB within a few hundred epochs while nothing is consumed.
    return {f"metrics/a_rather_long_metric_name_{k:02d}": epoch * 100 + k for k in range(40)}


def main():
    scenario, disk, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    hub = Hub(MemoryStore(), keys=[KEY])
    if scenario == "open":
        fill(disk)
        try:
            Session("yolov8n.yaml", transport=InMemoryTransport(hub, KEY), config=FAST,
                    outbox_dir=disk / "outbox")
            error = None
        except OSError as exc:
            error = str(exc)
        models = len(hub.store.list_models())
        sys.stdout.write(json.dumps({"error": error, "models": models}) + "\n")
        return
    model_id = new_model(hub)
    session = Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                      outbox_dir=disk, exit_timeout=20.0, offline=scenario == "blip")
    session.start()
    logged = []
    expected = {}
    if scenario == "big":
        ckpt = work / "last.pt"
        for epoch in range(6):
            session.log_metrics(metrics(epoch, False), epoch=epoch)
            logged.append(epoch)
            expected["checkpoint"] = weights(ckpt, 3 << 20, f"ckpt{epoch}")
            session.save_checkpoint(ckpt, epoch=epoch)
        expected["final"] = weights(work / "best.pt", 3 << 20, "best")
        session.finish(work / "best.pt", map50_95=0.5, timeout=60.0)
        session.close()
    elif scenario == "held":
        ckpt = disk / "last.pt"
        for epoch in range(4):
            session.log_metrics(metrics(epoch, False), epoch=epoch)
            logged.append(epoch)
        expected["checkpoint"] = weights(ckpt, 256 << 10, "held")
        filler = fill(disk)  # no room left for a copy
        session.save_checkpoint(ckpt, epoch=3)
        assert session.flush(timeout=60.0)
        close_filler(filler)
        expected["final"] = weights(work / "best.pt", 64 << 10, "best")
        session.finish(work / "best.pt", map50_95=0.5, timeout=60.0)
        session.close()
    elif scenario == "fill":
        ckpt = work / "last.pt"
        epoch = 0
        for epoch in range(5):
            session.log_metrics(metrics(epoch, False), epoch=epoch)
            logged.append(epoch)
        filler = fill(disk)
        for epoch in range(5, 705):
            session.log_metrics(metrics(epoch, True), epoch=epoch)
            logged.append(epoch)
            if epoch % 100 == 0:
                weights(ckpt, 256 << 10, f"ckpt{epoch}")
                session.save_checkpoint(ckpt, epoch=epoch)
        assert session.flush(timeout=60.0)
        close_filler(filler)
        for epoch in range(705, 710):
            session.log_metrics(metrics(epoch, False), epoch=epoch)
            logged.append(epoch)
        assert session.flush(timeout=60.0)
        session.close()
    elif scenario == "blip":
        filler = None
        for epoch in range(40):
            if epoch == 10:
                filler = fill(disk)
            if epoch == 30:
                # The worker has met the full disk before it frees up (bounded wait).
                deadline = time.monotonic() + 30.0
                while session._durability.write_error is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert session._durability.write_error is not None
                close_filler(filler)
            session.log_metrics(metrics(epoch, False), epoch=epoch)
            logged.append(epoch)
        session.close()
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    result = {
        "logged": logged,
        "hub": sorted({m["epoch"] for m in hub.metrics(model_id)}),
        "outbox": outbox_epochs(disk, model_id),
        "incoming": sorted(str(p) for p in disk.rglob(".incoming-*")),
        "held": sorted(str(p) for p in disk.rglob(".held-*")),
        "expected": expected,
        "weights": hub_weights(hub, model_id),
        "state": session.state,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def hub_weights(hub, model_id):
    """The sha256 of each weight file the hub holds for the model, by kind."""
    found = {}
    for kind in ("last", "best"):
        info = hub.weights_info(model_id, kind)
        if info is not None:
            found[kind] = info.sha256
    return found


if __name__ == "__main__":
    main()
