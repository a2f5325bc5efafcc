"""Real ultralytics trainings against the real local hub, over loopback HTTP.

Slow (YOLO models train on CPU, each in its own process) and optional: skipped, saying
why, when ultralytics is not installed. ``tools/test-ultralytics.sh`` installs the
pinned trainer and runs them (marker ``ultralytics``). The four ways a hub run starts:

- a model the hub created, trained through ``YOLO(model_url).train()``;
- a local ``.yaml`` that creates the model (``YOLO("yolov8n.yaml").train(data=...)``);
- a resume after ``SIGKILL``, from the hub's last weights, keeping the earlier epochs;
- an offline run killed with ``SIGKILL``, delivered by ``hubfsm sync``.

Each checks the metrics per epoch, the final weights byte for byte and the ``trained``
status; all but the offline one go through ``install()`` and ultralytics' own callbacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hubfsm.hub.server import LocalHub
from hubfsm.integrations.ultralytics import add_callbacks

pytestmark = [pytest.mark.slow, pytest.mark.ultralytics]

EPOCHS = 2
SIZE = 64
WORKER = Path(__file__).with_name("yolo_worker.py")
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
LOSSES = {"train/box_loss", "train/cls_loss", "train/dfl_loss"}
VALIDATION = {"metrics/mAP50(B)", "metrics/mAP50-95(B)"}
INFO = {"model/parameters", "model/GFLOPs", "model/speed_PyTorch(ms)"}


def synthetic_dataset(root: Path, seed: int = 0) -> Path:
    """A few 64x64 images with one coloured box each, labelled in YOLO format."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    for split, count in (("train", 8), ("val", 4)):
        images = root / "images" / split
        labels = root / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(count):
            w, h = rng.randint(16, 40), rng.randint(16, 40)
            x, y = rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)
            image = Image.new("RGB", (SIZE, SIZE), (rng.randint(0, 80),) * 3)
            ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], fill=(230, 40, 40))
            image.save(images / f"{i}.jpg")
            cx, cy = (x + w / 2) / SIZE, (y + h / 2) / SIZE
            (labels / f"{i}.txt").write_text(f"0 {cx:.6f} {cy:.6f} {w / SIZE:.6f} {h / SIZE:.6f}\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    return data


@pytest.fixture(scope="module")
def ultralytics_version() -> str:
    """ultralytics' version, or a skip that says why it cannot run here."""
    try:
        import ultralytics  # noqa: F401 - the import itself is the check
    except ImportError:
        pytest.skip("ultralytics is not installed (tools/test-ultralytics.sh installs it)")
    except Exception as exc:  # installed, but e.g. its torchvision was built for another torch
        pytest.skip(f"ultralytics is installed but does not import: {type(exc).__name__}: {exc}")
    import numpy
    import ultralytics

    if not hasattr(numpy, "trapz"):
        pytest.skip(f"ultralytics 8.2.0 needs numpy.trapz, which numpy {numpy.__version__} lacks")
    return str(ultralytics.__version__)


def _yolo_config(root: Path) -> Path:
    config = root / "ultralytics-config"
    config.mkdir(exist_ok=True)
    # ultralytics fetches a font for its plots unless one is there
    if FONT.exists():
        shutil.copy(FONT, config / "Arial.ttf")
    else:
        (config / "Arial.ttf").write_bytes(b"")
    return config


class Rig:
    """A local hub, a dataset, and worker processes that train against them."""

    def __init__(self, root: Path, local: LocalHub, version: str) -> None:
        self.version = version
        self.root = root
        self.local = local
        self.hub = local.hub
        self.data = synthetic_dataset(root / "data")
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HUBFSM_", "YOLO_"))
        }
        self.env.update(
            YOLO_OFFLINE="true",
            YOLO_CONFIG_DIR=str(_yolo_config(root)),
            ULTRALYTICS_HUB_API=local.url,
            ULTRALYTICS_HUB_WEB=local.url,
            HUBFSM_OUTBOX=str(root / "outbox"),
            HUBFSM_CACHE=str(root / "cache"),
            # ultralytics 8.2.0 predates torch 2.6's weights-only loading; the checkpoints
            # it loads here are the test's own.
            TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
            PYTHONUNBUFFERED="1",
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def create(self, *, epochs: int = EPOCHS) -> str:
        """A model created on the hub as its web page would: the hub holds its arguments."""
        body = {
            "config": {
                "batchSize": 4,
                "epochs": epochs,
                "imageSize": SIZE,
                "patience": 100,
                "device": "cpu",
                "cache": "ram",
            },
            "dataset": {"name": str(self.data)},
            "lineage": {"architecture": {"name": "yolov8n"}, "parent": {}},
            "meta": {"name": "yolov8n"},
        }
        reply = requests.post(
            f"{self.local.url}/v1/models",
            json=body,
            headers={"x-api-key": self.local.api_key},
            timeout=30,
        )
        reply.raise_for_status()
        return str(reply.json()["data"]["id"])

    def start(self, name: str, *args: str, key_in_env: bool = True) -> subprocess.Popen[bytes]:
        cwd = self.root / name
        cwd.mkdir()
        env = dict(self.env)
        if key_in_env:
            env["HUB_API_KEY"] = self.local.api_key
        with open(cwd / "out.log", "wb") as out, open(cwd / "err.log", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), *args], cwd=cwd, env=env, stdout=out, stderr=err
            )
        self.procs.append(proc)
        return proc

    def run(self, name: str, *args: str, key_in_env: bool = True) -> dict[str, Any]:
        proc = self.start(name, *args, key_in_env=key_in_env)
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert code == 0, self.tail(name)
        return dict(json.loads((self.root / name / "result.json").read_text()))

    def kill_when(self, name: str, proc: subprocess.Popen[bytes], ready: Any) -> None:
        """SIGKILL the worker once it is held and ``ready()`` (both bounded)."""
        deadline = time.monotonic() + 600
        held = self.root / name / "held"
        while not (held.exists() and ready()):
            assert proc.poll() is None, self.tail(name)
            assert time.monotonic() < deadline, "the worker was not held in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL

    def tail(self, name: str) -> str:
        err = (self.root / name / "err.log").read_text(errors="replace")
        return f"worker {name} failed:\n{err[-4000:]}"

    def epochs(self, model_id: str) -> dict[int, dict[str, Any]]:
        return {row["epoch"]: row["metrics"] for row in self.hub.metrics(model_id)}

    def check_trained(self, model_id: str, result: dict[str, Any], cwd: str) -> None:
        record = self.hub.record(model_id)
        assert record is not None and record["status"] == "trained"
        best = self.root / cwd / result["best"]
        (final,) = [
            u for u in self.hub.audit().uploads if u.type == "final" and u.model_id == model_id
        ]
        assert final.sha256 == hashlib.sha256(best.read_bytes()).hexdigest()
        assert record["final_epoch"] == result["epoch"]
        # hubfsm's session made every request: hub-sdk would have checked the key first
        assert self.hub.audit().requests.get("auth", 0) == 0
        assert json.loads((self.root / cwd / "result.json").read_text())["clean"] is True

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)


@pytest.fixture
def with_hub_module(ultralytics_version: str) -> None:
    """Skip where ultralytics has no ``ultralytics.hub`` for install() to replace."""
    import importlib.util

    if importlib.util.find_spec("ultralytics.hub") is None:
        pytest.skip(
            f"ultralytics {ultralytics_version} has no ultralytics.hub (removed in 8.4): "
            "install() does not apply there; add_callbacks is what runs on it"
        )


@pytest.fixture
def rig(tmp_path: Path, ultralytics_version: str) -> Iterator[Rig]:
    with LocalHub(tmp_path / "hub") as local:
        rig = Rig(tmp_path, local, ultralytics_version)
        try:
            yield rig
        finally:
            rig.stop()


def test_a_hub_model_trains_through_yolo_hub_url(rig, with_hub_module):
    model_id = rig.create()
    result = rig.run("run", "hub", f"{rig.local.url}/models/{model_id}", "ignored")
    rows = rig.epochs(model_id)
    assert sorted(rows) == list(range(EPOCHS))  # the hub's epochs, not a local default
    assert set(rows[0]) >= LOSSES | VALIDATION | INFO
    # The last epoch is the final validation of best.pt, as ultralytics sends it.
    assert set(rows[EPOCHS - 1]) >= LOSSES | VALIDATION
    assert any(u.type == "epoch" for u in rig.hub.audit().uploads)
    rig.check_trained(model_id, result, "run")


def test_a_local_yaml_creates_the_model_with_the_users_arguments(rig, with_hub_module):
    result = rig.run("run", "yaml", "yolov8n.yaml", "../data/data.yaml")
    (record,) = rig.hub.models()
    model_id = record["id"]
    # The user's data string as given (the trainer resolved it to an absolute path).
    assert record["data"] == "../data/data.yaml"
    assert (record["cfg"], record["epochs"], record["imgsz"], record["batch_size"]) == (
        "yolov8n.yaml",
        EPOCHS,
        SIZE,
        4,
    )
    if rig.version.startswith("8.2."):
        assert record["cache"] == "ram"  # the official default: the user gave none
    else:  # 8.3 creates the model from the trainer's arguments, defaults included
        assert record["cache"] is False
    assert sorted(rig.epochs(model_id)) == list(range(EPOCHS))
    rig.check_trained(model_id, result, "run")


def test_a_run_killed_mid_training_resumes_from_the_hubs_last_weights(rig, with_hub_module):
    model_id = rig.create(epochs=3)
    if rig.version.startswith("8.2."):
        identifier = f"{rig.local.api_key}_{model_id}"  # the key inside the identifier only
        key_in_env = False
    else:  # 8.3 takes only model URLs for hub models
        identifier, key_in_env = f"{rig.local.url}/models/{model_id}", True
    first = rig.start("first", "hub", identifier, "ignored", "--hold", "on_train_epoch_start:2",
                      key_in_env=key_in_env)  # fmt: skip

    def two_epochs_and_weights() -> bool:
        record = rig.hub.record(model_id) or {}
        return sorted(rig.epochs(model_id)) == [0, 1] and bool(record.get("has_last_weights"))

    rig.kill_when("first", first, two_epochs_and_weights)
    before = rig.epochs(model_id)
    # The first checkpoint goes at once, the next 900 s later: the hub has epoch 0's.
    assert rig.hub.record(model_id)["checkpoint_epoch"] == 0

    result = rig.run("second", "hub", identifier, "ignored", key_in_env=key_in_env)
    rows = rig.epochs(model_id)
    assert sorted(rows) == [0, 1, 2]
    assert rows[0] == before[0]  # the earlier epoch is kept, not overwritten
    logs = "".join(
        (rig.root / "second" / name).read_text(errors="replace") for name in ("out.log", "err.log")
    )
    # From the hub's epoch 0 weights, or from epoch 1's when the second run delivered the
    # checkpoint the first one left in its outbox before ultralytics asked for weights.
    assert "Resuming training" in logs
    assert "from epoch 2 to 3" in logs or "from epoch 3 to 3" in logs
    # ultralytics resumed from the last weights hubfsm downloaded into its cache
    cached = list((rig.root / "cache").rglob("*.pt"))
    assert len(cached) == 1 and oct(cached[0].stat().st_mode & 0o777) == "0o600"
    rig.check_trained(model_id, result, "second")


def test_an_offline_run_killed_at_the_end_is_delivered_by_sync(rig):
    model_id = rig.create()
    run = rig.start("run", "offline", model_id, str(rig.data), "--hold", "end")
    rig.kill_when("run", run, lambda: True)
    assert rig.hub.metrics(model_id) == []  # offline: nothing was sent
    result = json.loads((rig.root / "run" / "result.json").read_text())
    env = dict(rig.env, HUB_API_KEY=rig.local.api_key)
    sync = subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sync.returncode == 0, sync.stderr
    assert rig.local.api_key not in sync.stdout + sync.stderr
    assert sorted(rig.epochs(model_id)) == list(range(EPOCHS))
    rig.check_trained(model_id, result, "run")


def test_add_callbacks_still_trains_a_local_yaml_in_process(tmp_path, monkeypatch, rig):
    for name, value in rig.env.items():
        monkeypatch.setenv(name, value)
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    callbacks = add_callbacks(
        model, api_key=rig.local.api_key, api_root=rig.local.url, web_root=rig.local.url
    )
    model.train(
        data=str(rig.data),
        epochs=EPOCHS,
        imgsz=SIZE,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        project=str(tmp_path / "runs"),
        name="train",
        exist_ok=True,
        seed=0,
        verbose=False,
    )
    trainer = model.trainer
    assert callbacks.session is None  # closed at the end of training
    assert not getattr(trainer, "hub_session", None)  # ultralytics' own client stayed out
    (created,) = rig.hub.models()
    model_id = created["id"]
    record = rig.hub.record(model_id)
    assert record["cfg"] == "yolov8n.yaml" and record["epochs"] == EPOCHS
    assert record["data"] == str(rig.data)  # as given to train()
    assert record["status"] == "trained"
    rows = rig.epochs(model_id)
    assert sorted(rows) == list(range(EPOCHS))
    assert LOSSES | VALIDATION | INFO | {"val/box_loss"} <= set(rows[0])
    assert not INFO & set(rows[EPOCHS - 1])
    (final,) = [u for u in rig.hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(Path(trainer.best).read_bytes()).hexdigest()
    assert record["map"] == pytest.approx(trainer.metrics["metrics/mAP50-95(B)"], abs=1e-6)


def sync_all(rig: Rig) -> subprocess.CompletedProcess[str]:
    """``hubfsm sync`` of the rig's outbox root, as a user runs it after a kill."""
    env = dict(rig.env, HUB_API_KEY=rig.local.api_key)
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync"], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert rig.local.api_key not in done.stdout + done.stderr
    return done


def test_a_kill_right_after_the_first_save_keeps_the_weights_with_their_epoch(
    rig, with_hub_module
):
    # ultralytics saves epoch 0's checkpoint (on_model_save) before it reports epoch 0's
    # metrics (on_fit_epoch_end): the process dies in between.
    model_id = rig.create(epochs=3)
    if rig.version.startswith("8.2."):
        identifier, key_in_env = f"{rig.local.api_key}_{model_id}", False
    else:  # 8.3 takes only model URLs for hub models
        identifier, key_in_env = f"{rig.local.url}/models/{model_id}", True
    first = rig.start("first", "hub", identifier, "ignored", "--hold", "on_fit_epoch_end:0",
                      key_in_env=key_in_env)  # fmt: skip
    rig.kill_when("first", first, lambda: True)
    sync_all(rig)
    # Weights on the hub come with their epoch: none, or epoch 0's with its metrics.
    record = rig.hub.record(model_id) or {}
    if record.get("has_last_weights"):
        assert record["checkpoint_epoch"] in rig.epochs(model_id)
    # The resumed run (from the hub's weights, or from the start) leaves every epoch.
    result = rig.run("second", "hub", identifier, "ignored", key_in_env=key_in_env)
    rows = rig.epochs(model_id)
    assert sorted(rows) == [0, 1, 2]
    assert set(rows[0]) >= LOSSES | VALIDATION
    rig.check_trained(model_id, result, "second")


def test_a_kill_right_after_the_first_save_through_add_callbacks_keeps_epoch_0(rig):
    # add_callbacks records the epoch's metrics with its checkpoint: sync alone then
    # delivers both, though on_fit_epoch_end never ran.
    model_id = rig.create()
    run = rig.start("run", "offline", model_id, str(rig.data), "--hold", "on_fit_epoch_end:0")
    rig.kill_when("run", run, lambda: True)
    assert rig.hub.metrics(model_id) == []
    sync_all(rig)
    rows = rig.epochs(model_id)
    assert sorted(rows) == [0]
    assert set(rows[0]) >= LOSSES | VALIDATION | INFO
    record = rig.hub.record(model_id)
    assert record["has_last_weights"] and record["checkpoint_epoch"] == 0


def test_offline_the_drop_in_trains_a_hub_model_after_one_online_start(rig, with_hub_module):
    model_id = rig.create()
    url = f"{rig.local.url}/models/{model_id}"
    env = dict(rig.env, HUB_API_KEY=rig.local.api_key)
    # The online start: opening the model keeps its record for offline runs.
    opened = subprocess.run(
        [sys.executable, "-c", f"import hubfsm; hubfsm.open({url!r}).close()"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    rig.env["HUBFSM_OFFLINE"] = "1"
    try:
        result = rig.run("run", "hub", url, "ignored")
    finally:
        del rig.env["HUBFSM_OFFLINE"]
    assert rig.hub.metrics(model_id) == []  # offline: nothing was sent
    sync_all(rig)
    rows = rig.epochs(model_id)
    assert sorted(rows) == list(range(EPOCHS))
    assert set(rows[0]) >= LOSSES | VALIDATION | INFO
    rig.check_trained(model_id, result, "run")
