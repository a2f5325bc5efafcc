"""A trainer killed inside finish() on a full disk, then sync once the disk is freed.

Usage: full_disk_kill.py DISK WORK (run under ``unshare --mount`` with a tmpfs on DISK)
       full_disk_kill.py trainer API KEY MODEL_ID DISK WORK (started by the first form)

The outbox lies on ``DISK``; the weights, the local hub's data and the sync's output on
``WORK``, another file system, so no hard link can stand in for a copy. The disk fills up
mid-run and the hub stops, the trainer is killed while finish() waits, the disk is freed
and the hub comes back; ``hubfsm sync`` must then deliver everything, once. The script
prints one JSON line with what it found.
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EPOCHS = 4
SIZE = 2_000_000


def weights(path, seed):
    block = hashlib.sha256(seed.encode()).digest()
    path.write_bytes(block * (SIZE // len(block)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trainer(api, key, model_id, disk, work):
    import hubfsm

    work = Path(work)
    session = hubfsm.Session(model_id, api_root=api, web_root=api, api_key=key,
                             outbox_dir=disk)  # the shipped limits: one checkpoint goes

    session.start()
    for epoch in range(EPOCHS):
        session.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
        weights(work / "last.pt", f"epoch {epoch}")
        session.save_checkpoint(work / "last.pt", epoch=epoch)
        print(f"epoch {epoch}", flush=True)
        time.sleep(1.0)  # an epoch's work: the worker takes each offer in
        deadline = time.monotonic() + 30
        while epoch == EPOCHS - 1 and not (work / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the driver fills the disk and stops the hub
    weights(work / "best.pt", "final")
    print("finishing", flush=True)
    session.finish(work / "best.pt", map50_95=0.5, timeout=600)
    print("finished", flush=True)  # never: the driver kills first


def fill(disk):
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def drive(disk, work):
    import hubfsm
    from hubfsm.hub.server import LocalHub

    disk, work = Path(disk), Path(work)
    local = LocalHub(work / "hub").start()
    key = local.api_key
    with hubfsm.Session("yolov8n.yaml", api_root=local.url, api_key=key, outbox=False) as s:
        model_id = s.model_id
    trainer_proc = subprocess.Popen(
        [sys.executable, __file__, "trainer", local.url, key, model_id, str(disk), str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert trainer_proc.stdout is not None
    for line in trainer_proc.stdout:
        if line.startswith(f"epoch {EPOCHS - 1}"):
            time.sleep(0.5)  # the last checkpoint is being taken in
            fill(disk)
            first = local.hub.audit()  # what the hub's first lifetime applied
            local.stop()
            (work / "go").touch()
        if line.startswith("finishing"):
            time.sleep(2.0)  # finish() is waiting for the hub, its copy refused
            os.kill(trainer_proc.pid, signal.SIGKILL)
            break
    trainer_proc.wait(30)
    trainer_err = trainer_proc.stderr.read() if trainer_proc.stderr else ""
    # The user looks first, while the disk is still full.
    looked = subprocess.run([sys.executable, "-m", "hubfsm", "status", str(disk)],
                            capture_output=True, text=True, timeout=60)
    (disk / "filler").unlink()
    files = sorted(p.name for p in disk.glob("*/files/*"))
    local.start()
    env = dict(os.environ, HUB_API_KEY=key)
    sync = subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync", "--hub", local.url, str(disk)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    hub = local.hub
    applied: dict[int, int] = {}
    finals = []
    for audit in (first, hub.audit()):
        for (m, epoch), n in audit.metrics_applied.items():
            if m == model_id:
                applied[epoch] = applied.get(epoch, 0) + n
        finals += [u.sha256 for u in audit.uploads if u.model_id == model_id and u.type == "final"]
    record = hub.record(model_id)
    result = {
        "trainer_rc": trainer_proc.returncode,
        "trainer_err": trainer_err[-2000:],
        "files_before_sync": files,
        "status_out": looked.stdout + looked.stderr,
        "sync_rc": sync.returncode,
        "sync_out": sync.stdout + sync.stderr,
        "status": record["status"],
        "applied": {str(e): n for e, n in sorted(applied.items())},
        "finals": finals,
        "expected_final": hashlib.sha256((work / "best.pt").read_bytes()).hexdigest(),
    }
    local.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "trainer":
        trainer(*sys.argv[2:7])
    else:
        drive(*sys.argv[1:3])
