"""Unmodified ultralytics 8.4 reporting to the local hub's Platform API, over loopback HTTP.

ultralytics 8.4 reports training only to Ultralytics Platform (its HUB client is gone).
Here its own callbacks and the ``ultralytics-platform`` SDK, untouched, talk to a real
local hub: ``ULTRALYTICS_PLATFORM_URL`` points at it, ``ULTRALYTICS_API_KEY`` is a ``ul_``
key made by ``hubfsm hub keys add --platform``, and ``project=owner/project`` turns the
reporting on. The trainer runs in a child process whose environment does not look like
pytest's (ultralytics reports nothing under pytest). ``tools/test-ultralytics.sh 8.4.190``
installs the trainer and runs these (marker ``ultralytics``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hubfsm.hub import admin
from hubfsm.hub.server import LocalHub

pytestmark = [pytest.mark.slow, pytest.mark.ultralytics]

WORKER = Path(__file__).with_name("platform_worker.py")
SIZE = 32
SCRIPT = "tools/test-ultralytics.sh 8.4.190"


@pytest.fixture(scope="module")
def ultralytics_84() -> str:
    """ultralytics' version when it is 8.4 with its Platform SDK, else a skip saying how."""
    try:
        import ultralytics
    except ImportError:
        pytest.skip(f"ultralytics is not installed ({SCRIPT} installs 8.4.190)")
    except Exception as exc:  # installed, but e.g. built for another torch
        pytest.skip(f"ultralytics does not import ({type(exc).__name__}: {exc}); run {SCRIPT}")
    version = str(ultralytics.__version__)
    if not version.startswith("8.4."):
        pytest.skip(f"ultralytics {version} has no Platform client; {SCRIPT} runs 8.4.190")
    try:
        import ultralytics_platform  # noqa: F401 - the import itself is the check
    except ImportError:
        pytest.skip(f"the ultralytics-platform SDK is not installed ({SCRIPT} installs it)")
    if sys.version_info < (3, 11):
        pytest.skip("ultralytics reports to Platform only on Python 3.11 or newer")
    return version


def synthetic_dataset(root: Path, seed: int = 0) -> Path:
    """A few small images with one coloured box each, labelled in YOLO format."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    for split, count in (("train", 8), ("val", 4)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(count):
            w, h = rng.randint(8, 20), rng.randint(8, 20)
            x, y = rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)
            image = Image.new("RGB", (SIZE, SIZE), (rng.randint(0, 80),) * 3)
            ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], fill=(230, 40, 40))
            image.save(images / f"{i}.jpg")
            cx, cy = (x + w / 2) / SIZE, (y + h / 2) / SIZE
            (labels / f"{i}.txt").write_text(f"0 {cx:.6f} {cy:.6f} {w / SIZE:.6f} {h / SIZE:.6f}\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    return data


def yolo_config(root: Path) -> Path:
    """ultralytics' config folder, with a font so that it downloads none."""
    import matplotlib

    config = root / "ultralytics-config"
    config.mkdir()
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    shutil.copy(font, config / "Arial.ttf")
    return config


class PlatformRig:
    """A local hub with a Platform key, a dataset, and trainers that report to it."""

    def __init__(self, root: Path, local: LocalHub) -> None:
        self.root = root
        self.local = local
        self.hub = local.hub
        self.key = admin.add(local.data_dir, "trainer", io.StringIO(), platform=True)
        self.data = synthetic_dataset(root / "data")
        # Nothing of pytest's (or of a CI runner's) is passed on: ultralytics would see it.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTEST", "GITHUB_", "HUB_", "HUBFSM_", "YOLO_", "ULTRALYTICS_"))
            and k not in ("CI", "RUNNER_OS")
        }
        env.update(
            YOLO_OFFLINE="true",
            YOLO_CONFIG_DIR=str(yolo_config(root)),
            ULTRALYTICS_PLATFORM_URL=local.url,
            ULTRALYTICS_API_KEY=self.key,
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, project: str, epochs: int, *extra: str, log: str = ""
    ) -> subprocess.Popen[bytes]:
        cwd = self.root / name
        cwd.mkdir(exist_ok=True)
        with (
            open(cwd / f"out{log}.log", "wb") as out,
            open(cwd / f"err{log}.log", "wb") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(self.data), project, name, str(epochs), *extra],
                cwd=cwd,
                env=self.env,
                stdout=out,
                stderr=err,
            )
        self.procs.append(proc)
        return proc

    def finish(self, name: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Wait for the trainer to end well; its ``result.json``."""
        try:
            code = proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
            raise
        assert code == 0, self.tail(name)
        return dict(json.loads((self.root / name / "result.json").read_text()))

    def tail(self, name: str) -> str:
        logs = sorted((self.root / name).glob("*.log"))
        text = "".join(log.read_text(errors="replace")[-3000:] for log in logs)
        return f"trainer {name} failed:\n{text}"

    def model(self, project: str, slug: str) -> dict[str, Any]:
        (record,) = [r for r in self.hub.models() if r["project"] == project and r["slug"] == slug]
        return record


@pytest.fixture
def rig(tmp_path: Path, ultralytics_84: str) -> Iterator[PlatformRig]:
    with LocalHub(tmp_path / "hub") as local:
        made = PlatformRig(tmp_path, local)
        try:
            yield made
        finally:
            for proc in made.procs:  # a trainer a failed test left running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=60)


def test_a_real_trainer_lands_every_epoch_checkpoint_weights_and_the_end(
    rig: PlatformRig,
) -> None:
    epochs = 2
    result = rig.finish("tiny", rig.start("tiny", "alice/birds", epochs))
    out = (rig.root / "tiny" / "out.log").read_text(errors="replace") + (
        rig.root / "tiny" / "err.log"
    ).read_text(errors="replace")
    assert "Streaming training metrics to Platform" in out, rig.tail("tiny")
    assert "Failed to send" not in out and "will not be tracked" not in out, rig.tail("tiny")

    record = rig.model("alice/birds", "tiny")
    model_id = record["id"]
    save_dir = Path(result["save_dir"])
    assert (save_dir / "platform_model_id.txt").read_text() == model_id
    assert record["protocol"] == "platform" and record["status"] == "trained"
    assert record["cfg"] == "yolov8n.yaml" and record["epochs"] == epochs
    assert record["run_id"] == 1 and record["cancelled"] is False

    # Every epoch, and the final validation of best.pt as epoch `epochs`.
    metrics = {row["epoch"]: row["metrics"] for row in rig.hub.metrics(model_id)}
    assert sorted(metrics) == [*range(epochs), epochs]
    for epoch in range(epochs):
        assert {"train/box_loss", "metrics/mAP50-95(B)", "lr"} <= set(metrics[epoch])
    assert "model/parameters" in metrics[0] and "model/parameters" not in metrics[1]

    # The final weights came by the signed PUT, were promoted by checkpoint_saved (last)
    # and made the model's best by training_complete, byte for byte.
    best = hashlib.sha256((save_dir / "weights" / "best.pt").read_bytes()).hexdigest()
    for kind in ("last", "best"):
        info = rig.hub.weights_info(model_id, kind)
        assert info is not None and info.sha256 == best, kind
    assert record["has_best_weights"] and record["final_epoch"] == epochs - 1
    requests_made = rig.hub.audit().requests
    assert requests_made["platform_models_upload"] == 1
    assert requests_made["platform_upload_put"] == 1

    # The console came in chunks, from the model's summary on.
    assert "YOLOv8n summary" in rig.hub.console(model_id)

    # The run list shows it as it shows a HUB run: trained, every epoch done.
    listed = requests.get(f"{rig.local.url}/runs.json", timeout=30).json()["runs"]
    (row,) = [r for r in listed if r["record"]["id"] == model_id]
    assert row["summary"]["status"] == "trained"
    assert row["summary"]["progress"] == f"epoch {epochs} of {epochs}"

    # ul://alice/birds/tiny resolves through the hub, as ultralytics does it.
    resolved = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ultralytics.utils.checks import resolve_platform_uri as r;"
            "print(r('ul://alice/birds/tiny'))",
        ],
        env=rig.env,
        cwd=rig.root,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    url = resolved.stdout.strip().splitlines()[-1]
    assert url.startswith(f"{rig.local.url}/files/{model_id}/best.pt?expires="), resolved


def test_cancelling_on_the_hub_stops_a_real_trainer(rig: PlatformRig) -> None:
    epochs = 30
    proc = rig.start("long", "alice/birds", epochs)
    cancelled: list[str] = []
    stop = threading.Event()

    def cancel_when_registered() -> None:
        # As soon as training_started made the model: the trainer has not ended epoch 0.
        while not stop.is_set():
            for record in rig.hub.models():
                if record["slug"] == "long":
                    admin.cancel(rig.local.data_dir, record["id"], io.StringIO())
                    cancelled.append(record["id"])
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=cancel_when_registered, daemon=True)
    watcher.start()
    try:
        result = rig.finish("long", proc)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert cancelled, rig.tail("long")
    out = (rig.root / "long" / "out.log").read_text(errors="replace") + (
        rig.root / "long" / "err.log"
    ).read_text(errors="replace")
    assert "Training cancelled from Platform" in out, rig.tail("long")
    # The trainer stopped long before its 30 epochs, and still sent its partial results.
    assert result["epoch"] < epochs - 1
    record = rig.model("alice/birds", "long")
    assert record["cancelled"] is True and record["status"] == "trained"
    trained = [row["epoch"] for row in rig.hub.metrics(record["id"]) if row["epoch"] < epochs]
    assert max(trained) < epochs - 1


def test_a_real_trainer_killed_and_resumed_continues_the_same_model(rig: PlatformRig) -> None:
    epochs = 4
    proc = rig.start("again", "alice/birds", epochs, "--hold-at", "2")
    held = rig.root / "again" / "held"
    deadline = time.monotonic() + 600

    def epoch_one_landed() -> bool:
        found = [r for r in rig.hub.models() if r["slug"] == "again"]
        return bool(found) and any(row["epoch"] == 1 for row in rig.hub.metrics(found[0]["id"]))

    # Held as epoch 2 starts (epoch 1's last.pt written), and epoch 1 is on the hub.
    while not (held.exists() and epoch_one_landed()):
        assert proc.poll() is None, rig.tail("again")
        assert time.monotonic() < deadline, "the trainer did not reach epoch 1 in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    model_id = rig.model("alice/birds", "again")["id"]

    # ultralytics' resume=True reads platform_model_id.txt and names the model by its id.
    resumed = rig.start("again", "alice/birds", epochs, "--resume", held.read_text(), log="2")
    result = rig.finish("again", resumed)
    assert result["epoch"] == epochs - 1
    record = rig.model("alice/birds", "again")  # still one model of that name
    assert record["id"] == model_id and record["run_id"] == 2
    assert record["status"] == "trained" and record["has_best_weights"]
    epochs_seen = sorted(row["epoch"] for row in rig.hub.metrics(model_id))
    assert epochs_seen == [*range(epochs), epochs]
    best = hashlib.sha256((Path(result["save_dir"]) / "weights" / "best.pt").read_bytes())
    info = rig.hub.weights_info(model_id, "best")
    assert info is not None and info.sha256 == best.hexdigest()


def test_the_key_yolo_login_saves_is_the_one_hubfsm_sync_finds(rig: PlatformRig) -> None:
    # `yolo login KEY` as an 8.4 user runs it (the key checked against the hub, then
    # saved in ultralytics' settings): `hubfsm sync` must find it without a variable.
    from hubfsm.integrations.ultralytics_objects import saved_key

    env = {k: v for k, v in rig.env.items() if k != "ULTRALYTICS_API_KEY"}
    entry = "from ultralytics.cfg import entrypoint; entrypoint()"
    done = subprocess.run(
        [sys.executable, "-c", entry, "login", rig.key],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "New authentication successful" in done.stdout + done.stderr
    where = {"YOLO_CONFIG_DIR": env["YOLO_CONFIG_DIR"]}
    assert saved_key(platform=True, environ=where) == rig.key
    assert saved_key(platform=False, environ=where) is None  # never offered to a HUB hub
