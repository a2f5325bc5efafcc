"""The session tells the trainer what to train, and a resumed session continues."""

from __future__ import annotations

import hashlib
import stat

import pytest

import hubfsm
from hubfsm.core.answers import RecordError
from hubfsm.errors import ModelTrainedError
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.session import Session
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


@pytest.fixture(autouse=True)
def _main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)


@pytest.fixture
def hub(hub):
    hub.public_root = "http://127.0.0.1:9"  # where weight URLs point (never fetched here)
    return hub


def first_run(hub, tmp_path, *, epochs_logged: int) -> str:
    """Create a model, log some epochs with one checkpoint (epoch 0), stop unfinished."""
    transport = InMemoryTransport(hub, KEY)
    run = hubfsm.open(
        "yolov8n.yaml",
        transport=transport,
        config=FAST,
        outbox_dir=tmp_path / "outbox",
        data="coco8.yaml",
        epochs=5,
        imgsz=64,
    )
    plan = run.plan
    assert plan.kind == "new" and plan.model_file == "yolov8n.yaml"
    assert plan.train_args["data"] == "coco8.yaml" and plan.train_args["epochs"] == 5
    for epoch in range(epochs_logged):
        run.log_metrics({"train/loss": 1.0 / (epoch + 1), "run": 1})
    (tmp_path / "last.pt").write_bytes(b"weights of epoch 0")
    run.save_checkpoint(tmp_path / "last.pt", epoch=0)
    assert run.flush(timeout=30)
    run.close()
    assert run.state == "resumable"
    assert run.model_id is not None
    return run.model_id


def test_a_loaded_model_plans_from_the_hubs_record(hub, tmp_path):
    transport = InMemoryTransport(hub, KEY)
    created = hubfsm.open("yolov8n.yaml", transport=transport, config=FAST, data="coco8.yaml")
    created.close()
    with Session(created.model_id, transport=transport, config=FAST, outbox=False) as run:
        plan = run.plan
        assert plan.kind == "new" and plan.model_file == "yolov8n.yaml"
        assert plan.train_args["data"] == "coco8.yaml"
        assert plan.resume_epoch is None
        assert run.download_weights() is None  # an architecture needs no download


def test_a_resumed_session_keeps_the_earlier_epochs_and_continues_after_them(hub, tmp_path):
    model_id = first_run(hub, tmp_path, epochs_logged=2)
    transport = InMemoryTransport(hub, KEY)
    with Session(model_id, transport=transport, config=FAST, outbox_dir=tmp_path / "outbox") as run:
        plan = run.plan
        assert plan.kind == "resume" and plan.resumable
        assert dict(plan.train_args) == {"data": "coco8.yaml", "resume": True}
        assert plan.model_file == hub.record(model_id)["resume"]
        assert plan.resume_epoch == 1  # the last weights are epoch 0's
        # A loop that numbers nothing continues after the weights it resumed from.
        for _ in range(3):
            run.log_metrics({"train/loss": 0.1, "run": 2})
        (tmp_path / "best.pt").write_bytes(b"best")
        run.finish(tmp_path / "best.pt", map50_95=0.5)
    rows = {row["epoch"]: row["metrics"] for row in hub.metrics(model_id)}
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[0] == {"train/loss": 1.0, "run": 1}  # kept
    assert rows[1]["run"] == 2 and rows[3]["run"] == 2  # epoch 1 redone from its weights
    record = hub.record(model_id)
    assert record["status"] == "trained" and record["final_epoch"] == 3


def test_a_trained_model_is_refused_before_any_plan(hub, tmp_path):
    model_id = first_run(hub, tmp_path, epochs_logged=1)
    transport = InMemoryTransport(hub, KEY)
    with Session(model_id, transport=transport, config=FAST, outbox=False) as run:
        (tmp_path / "best.pt").write_bytes(b"best")
        run.finish(tmp_path / "best.pt")
    with pytest.raises(ModelTrainedError):
        Session(model_id, transport=transport, config=FAST, outbox=False)


def test_a_record_without_a_dataset_says_so(hub, tmp_path):
    transport = InMemoryTransport(hub, KEY)
    with Session(new_model(hub), transport=transport, config=FAST, outbox=False) as run:
        with pytest.raises(RecordError, match="processing"):
            run.plan  # noqa: B018
        run.log_metrics({"x": 1})  # the session still works: the plan is advice
        assert run.flush(timeout=30)


def test_the_last_weights_download_over_http_owner_only_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as local:
        options = {"api_key": local.api_key, "api_root": local.url, "web_root": local.url}
        run = hubfsm.open(
            "yolov8n.yaml", outbox_dir=tmp_path / "outbox", data="coco8.yaml", **options
        )
        weights = b"epoch zero " * 5000
        (tmp_path / "last.pt").write_bytes(weights)
        run.save_checkpoint(tmp_path / "last.pt", epoch=0)
        assert run.flush(timeout=60)
        run.close()
        again = Session(run.model_id, outbox_dir=tmp_path / "outbox", **options)
        try:
            assert again.plan.kind == "resume"
            path = again.download_weights(progress=False)
            assert path is not None and path.suffix == ".pt"
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(weights).digest()
            assert path.is_relative_to(tmp_path / "cache")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert again.download_weights(progress=False) == path
            assert local.api_key not in repr(again) and local.api_key not in repr(vars(again))
        finally:
            again.close()


def test_offline_a_hub_model_plans_from_the_record_an_online_start_kept(hub, tmp_path):
    transport = InMemoryTransport(hub, KEY)
    created = hubfsm.open("yolov8n.yaml", transport=transport, config=FAST, data="coco8.yaml",
                          epochs=3, outbox_dir=tmp_path / "ob")
    created.close()
    model_id = created.model_id
    offline = {"transport": transport, "config": FAST, "outbox_dir": tmp_path / "ob",
               "offline": True}
    # Never opened online (only created): no record to train from, and the error says
    # what is really wrong, not that a dataset is processing.
    with Session(model_id, **offline) as run:
        with pytest.raises(hubfsm.HubfsmError, match="needs one online start") as raised:
            run.plan  # noqa: B018
        assert "processing" not in str(raised.value)
    Session(model_id, transport=transport, config=FAST, outbox_dir=tmp_path / "ob").close()
    requests = dict(hub.audit().requests)
    with Session(model_id, **offline) as run:
        plan = run.plan
        assert plan.kind == "new" and plan.model_file == "yolov8n.yaml"
        assert plan.train_args["data"] == "coco8.yaml" and plan.train_args["epochs"] == 3
        assert run.download_weights() is None
    assert dict(hub.audit().requests) == requests  # offline: not one request


def test_offline_the_weights_come_from_the_cache_or_the_error_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as local:
        options = {"api_key": local.api_key, "api_root": local.url, "web_root": local.url,
                   "outbox_dir": tmp_path / "outbox"}
        run = hubfsm.open("yolov8n.yaml", data="coco8.yaml", **options)
        (tmp_path / "last.pt").write_bytes(b"epoch zero " * 500)
        run.save_checkpoint(tmp_path / "last.pt", epoch=0)
        assert run.flush(timeout=60)
        run.close()
        Session(run.model_id, **options).close()  # the online start: the record is kept
        with Session(run.model_id, offline=True, **options) as offline:
            assert offline.plan.kind == "resume"
            with pytest.raises(hubfsm.HubfsmError, match="offline, and .* not in the cache"):
                offline.download_weights(progress=False)
        online = Session(run.model_id, **options)
        path = online.download_weights(progress=False)
        online.close()
        before = dict(local.hub.audit().requests)
        with Session(run.model_id, offline=True, **options) as offline:
            assert offline.download_weights(progress=False) == path
        assert dict(local.hub.audit().requests) == before
