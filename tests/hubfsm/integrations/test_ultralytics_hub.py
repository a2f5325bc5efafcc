"""The HUBTrainingSession stand-in and install(), without ultralytics: a real local hub
over HTTP, and ultralytics' stock HUB callbacks (8.2.0) reproduced line for line."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sys
import time
import types
from pathlib import Path

import pytest
import structlog

import hubfsm
from hubfsm.core import protocol
from hubfsm.errors import AuthError, HubfsmError, ModelTrainedError
from hubfsm.hub.server import LocalHub
from hubfsm.integrations import ultralytics as integration
from hubfsm.integrations.ultralytics import install, uninstall
from hubfsm.integrations.ultralytics_session import HUBTrainingSession, StandInOptions
from hubfsm.runtime.sync import sync as hubfsm_sync

BAD = "b" * 42


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.delenv("HUB_API_KEY", raising=False)
    monkeypatch.setenv("HUBFSM_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("ULTRALYTICS_HUB_API", hub.url)
        monkeypatch.setenv("ULTRALYTICS_HUB_WEB", hub.url)
        monkeypatch.setattr(HUBTrainingSession, "options", type(HUBTrainingSession.options)())
        yield hub


@pytest.fixture
def settings(monkeypatch):
    """ultralytics' settings as the stand-in reads them (a loaded ``ultralytics.utils``)."""
    values = {"api_key": ""}
    monkeypatch.setitem(sys.modules, "ultralytics.utils", types.SimpleNamespace(SETTINGS=values))
    return values


def create(local, *, epochs=3, data="coco8.yaml"):
    with hubfsm.open(
        "yolov8n.yaml", api_key=local.api_key, outbox=False, data=data, epochs=epochs
    ) as run:
        return run.model_id


class StockCallbacks:
    """ultralytics 8.2.0's ``utils/callbacks/hub.py``, as it drives a session."""

    def __init__(self, session):
        self.session = session

    def on_pretrain_routine_end(self):
        self.session.timers = {"metrics": time.time(), "ckpt": time.time()}

    def on_fit_epoch_end(self, epoch, metrics):
        session = self.session
        session.metrics_queue[epoch] = json.dumps(metrics)
        if session.metrics_upload_failed_queue:
            session.metrics_queue.update(session.metrics_upload_failed_queue)
        if time.time() - session.timers["metrics"] > session.rate_limits["metrics"]:
            session.upload_metrics()
            session.timers["metrics"] = time.time()
            session.metrics_queue = {}

    def on_model_save(self, epoch, last, is_best):
        session = self.session
        if time.time() - session.timers["ckpt"] > session.rate_limits["ckpt"]:
            session.upload_model(epoch, last, is_best)
            session.timers["ckpt"] = time.time()

    def on_train_end(self, epoch, best, map50_95):
        self.session.upload_model(epoch, best, map=map50_95, final=True)
        self.session.alive = False


def train(session, tmp_path, epochs, *, start=0):
    """Run the stock callbacks through epochs; returns the final weights' bytes."""
    stock = StockCallbacks(session)
    stock.on_pretrain_routine_end()
    for epoch in range(start, epochs):
        last = tmp_path / "last.pt"
        last.write_bytes(f"weights {epoch}".encode() * 100)
        stock.on_model_save(epoch, last, True)
        stock.on_fit_epoch_end(epoch, {"metrics/mAP50-95(B)": 0.1 * epoch, "start": start})
    best = tmp_path / "best.pt"
    best.write_bytes(b"best weights")
    stock.on_train_end(epochs - 1, best, 0.25)
    return best.read_bytes()


def test_a_hub_model_loads_its_plan_and_trains_through_the_stock_callbacks(
    local, tmp_path, monkeypatch
):
    model_id = create(local, epochs=3)
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    session = HUBTrainingSession(f"{local.url}/models/{model_id}")
    assert session.client.authenticated and session.model.id == model_id
    assert session.model_url == f"{local.url}/models/{model_id}"
    assert session.model_file == "yolov8n.yaml"  # an architecture: nothing to download
    assert session.train_args["data"] == "coco8.yaml" and session.train_args["epochs"] == 3
    assert session.model.data["id"] == model_id
    best = train(session, tmp_path, 3)
    assert sorted(row["epoch"] for row in local.hub.metrics(model_id)) == [0, 1, 2]
    record = local.hub.record(model_id)
    assert record["status"] == "trained" and record["map"] == pytest.approx(0.25)
    (final,) = [u for u in local.hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(best).hexdigest()
    assert local.hub.audit().requests.get("auth", 0) == 0


def test_the_identifier_key_comes_first_then_settings_then_the_environment(
    local, settings, monkeypatch
):
    model_id = create(local)
    settings["api_key"] = BAD
    monkeypatch.setenv("HUB_API_KEY", BAD)
    first = HUBTrainingSession(f"{local.api_key}_{model_id}")  # the identifier's wins
    assert first.model.id == model_id and first.client.authenticated
    first.close()
    with pytest.raises(AuthError):  # the settings' key beats the environment's
        HUBTrainingSession(model_id)
    settings["api_key"] = local.api_key
    second = HUBTrainingSession(model_id)
    assert second.model.id == model_id
    second.close()
    settings["api_key"] = ""
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    third = HUBTrainingSession(model_id)
    assert third.model.id == model_id
    third.close()
    for session in (first, second, third):
        assert local.api_key not in repr(session) and local.api_key not in repr(vars(session))


def test_without_a_key_a_local_file_stays_off_the_hub_and_a_model_id_is_an_error(local):
    before = dict(local.hub.audit().requests)
    session = HUBTrainingSession("yolov8n.yaml")
    assert session.client.authenticated is False and session.model.id is None
    assert HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"}) is None
    with pytest.raises(HubfsmError, match="no API key"):
        HUBTrainingSession("A" * 20)
    assert dict(local.hub.audit().requests) == before  # not one request


def test_a_hub_that_cannot_create_the_model_says_so_in_one_line(local, monkeypatch, capsys):
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    # A port nothing listens on: bound, never listening, so nothing else can meanwhile.
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
        monkeypatch.setenv("ULTRALYTICS_HUB_API", f"http://127.0.0.1:{port}")
        with structlog.testing.capture_logs() as logs:
            session = HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"})
    assert session is None  # ultralytics trains without the hub, as with the official client
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith("hubfsm: the hub did not create the model: ")
    assert "refused the connection" in said[0]
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


def test_an_api_root_refused_as_such_leaves_training_off_the_hub_in_one_line(
    local, monkeypatch, capsys
):
    # A team's hub on another machine over plain http: the key would travel in clear
    # text. Before, the ValueError ended the training with a traceback.
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    monkeypatch.setenv("ULTRALYTICS_HUB_API", "http://hub.invalid:8000")
    before = dict(local.hub.audit().requests)
    session = HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"})
    assert session is None
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith("hubfsm: the hub did not create the model: ")
    assert "refusing plain http:// to hub.invalid" in said[0]
    assert local.api_key not in said[0]
    assert dict(local.hub.audit().requests) == before  # not one request
    # A model named by id has no session, as for any other refusal, and the log says why.
    with structlog.testing.capture_logs() as logs:
        assert HUBTrainingSession.create_session("A" * 20) is None
    [event] = [e for e in logs if e["log_level"] == "warning"]
    assert event["event"] == "ultralytics.hub_session_unavailable"
    assert "refusing plain http:// to hub.invalid" in event["error"]
    assert dict(local.hub.audit().requests) == before


def test_a_new_model_gets_the_users_arguments_and_trains_to_the_end(local, tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    session = HUBTrainingSession.create_session(
        "yolov8n.yaml", {"data": "data/mine.yaml", "epochs": 2, "imgsz": 64, "model": "x"}
    )
    assert session is not None and session.model.id is not None
    assert session.rate_limits["metrics"] == 0 and session.rate_limits["ckpt"] == 0
    record = local.hub.record(session.model.id)
    assert record["data"] == "data/mine.yaml" and record["epochs"] == 2
    assert (record["batch_size"], record["patience"], record["cache"]) == (-1, 100, "ram")
    assert session.alive
    best = train(session, tmp_path, 2)
    assert not session.alive and session.session is None
    model_id = session.model.id
    rows = {row["epoch"]: row["metrics"] for row in local.hub.metrics(model_id)}
    assert sorted(rows) == [0, 1]  # the last epoch was not held back by a timer
    record = local.hub.record(model_id)
    assert record["status"] == "trained" and record["final_epoch"] == 1
    (final,) = [u for u in local.hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(best).hexdigest()


def test_a_key_revoked_mid_run_is_one_line_on_stderr_not_one_more_at_the_end(
    local, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    session = HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"})
    model_id = session.model.id
    capsys.readouterr()  # the model's address
    stock = StockCallbacks(session)
    stock.on_pretrain_routine_end()
    stock.on_fit_epoch_end(0, {"loss": 1.0})
    assert session.session.flush(timeout=60)
    local.hub.revoke_key(local.api_key)
    stock.on_fit_epoch_end(1, {"loss": 0.5})
    (tmp_path / "best.pt").write_bytes(b"best weights")
    with structlog.testing.capture_logs() as logs:
        stock.on_train_end(1, tmp_path / "best.pt", 0.25)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "(401)" in said[0] and "hubfsm sync" in said[0]
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []
    assert local.api_key not in said[0] and f"outbox/{model_id}" in said[0]


def test_a_final_upload_that_gives_up_on_the_hub_is_one_line_on_stderr(
    local, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    monkeypatch.setattr(HUBTrainingSession, "options", StandInOptions(finish_timeout=0.5))
    session = HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"})
    model_id = session.model.id
    stock = StockCallbacks(session)
    stock.on_pretrain_routine_end()
    stock.on_fit_epoch_end(0, {"loss": 1.0})
    assert session.session.flush(timeout=60)
    local.stop()
    # The hub is known lost before training ends: finishing could say at once what it
    # waits for, which for a wait this short is a line too many.
    stock.on_fit_epoch_end(1, {"loss": 0.5})
    err, deadline = "", time.monotonic() + 30
    while "lost the hub" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capsys.readouterr().err
    assert "lost the hub" in err
    (tmp_path / "best.pt").write_bytes(b"best weights")
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        stock.on_train_end(1, tmp_path / "best.pt", 0.25)
    # finish() gave up after its 0.5 s: closing does not wait out exit_timeout (10 s)
    # again for the same lost hub, and holds the trainer a short grace at most.
    held = time.monotonic() - started
    assert held < 4.0, f"the end of training held the trainer {held:.1f}s"
    said = [line for line in capsys.readouterr().err.splitlines() if "final weights" in line]
    # The session's own line names what it keeps and how to send it; nothing repeats it.
    assert len(said) == 1 and f"outbox/{model_id}" in said[0] and "hubfsm sync" in said[0]
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []
    # Nothing is lost: the hub back, `hubfsm sync` delivers the final weights kept.
    local.start()
    out = io.StringIO()
    assert hubfsm_sync(tmp_path / "outbox", api_root=local.url, out=out) == 0, out.getvalue()
    assert local.hub.record(model_id)["status"] == "trained"


def test_a_resumable_model_resumes_from_its_downloaded_last_weights(local, tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    session = HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"})
    stock = StockCallbacks(session)
    stock.on_pretrain_routine_end()
    (tmp_path / "last.pt").write_bytes(b"epoch 0 weights")
    stock.on_model_save(0, tmp_path / "last.pt", True)
    stock.on_fit_epoch_end(0, {"loss": 1.0})
    stock.on_fit_epoch_end(1, {"loss": 0.5})
    assert session.session.flush(timeout=60)
    session.close()  # the process "dies" here: the model is resumable
    model_id = session.model.id

    again = HUBTrainingSession(f"{local.url}/models/{model_id}")
    assert again.train_args == {"data": "coco8.yaml", "resume": True}
    assert Path(again.model_file).read_bytes() == b"epoch 0 weights"
    assert Path(again.model_file).is_relative_to(tmp_path / "cache")
    train(again, tmp_path, 3, start=1)
    rows = {row["epoch"]: row["metrics"] for row in local.hub.metrics(model_id)}
    assert sorted(rows) == [0, 1, 2]
    assert rows[0] == {"loss": 1.0}
    assert local.hub.record(model_id)["status"] == "trained"
    with pytest.raises(ModelTrainedError):
        HUBTrainingSession(model_id)


def test_a_model_whose_last_run_ended_unsent_is_finished_not_trained_again(
    local, tmp_path, monkeypatch
):
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    session = HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"})
    model_id = session.model.id
    stock = StockCallbacks(session)
    stock.on_pretrain_routine_end()
    (tmp_path / "last.pt").write_bytes(b"epoch 0 weights")
    stock.on_model_save(0, tmp_path / "last.pt", True)
    stock.on_fit_epoch_end(0, {"loss": 1.0})
    assert session.session.flush(timeout=60)
    session.close()
    HUBTrainingSession(f"{local.url}/models/{model_id}").close()  # the online start
    # The rest of the run offline: it ends, and its final weights stay in the outbox (as a
    # kill in the final upload leaves them).
    monkeypatch.setenv("HUBFSM_OFFLINE", "1")
    best = train(HUBTrainingSession(f"{local.url}/models/{model_id}"), tmp_path, 2, start=1)
    monkeypatch.delenv("HUBFSM_OFFLINE")
    assert local.hub.record(model_id)["status"] == "training"

    # The training script runs again on the model: the run is over, nothing trains again.
    with pytest.raises(ModelTrainedError, match="finished training"):
        HUBTrainingSession(f"{local.url}/models/{model_id}")
    record = local.hub.record(model_id)
    assert record["status"] == "trained" and record["final_epoch"] == 1
    assert sorted(row["epoch"] for row in local.hub.metrics(model_id)) == [0, 1]
    (final,) = [u for u in local.hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(best).hexdigest()
    assert not (tmp_path / "outbox" / model_id).exists()  # all of it delivered


def test_install_replaces_every_name_ultralytics_uses_and_uninstall_restores(monkeypatch):
    original = type("HUBTrainingSession", (), {})
    modules = {}
    for name in ("ultralytics", "ultralytics.hub", "ultralytics.hub.session",
                 "ultralytics.utils", "ultralytics.utils.callbacks",
                 "ultralytics.utils.callbacks.hub"):  # fmt: skip
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so its submodules import
        modules[name] = module
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("ultralytics.hub.session", "ultralytics.hub", "ultralytics.utils.callbacks.hub"):
        modules[name].HUBTrainingSession = original
    try:
        assert install() is HUBTrainingSession and integration.installed()
        assert install() is HUBTrainingSession  # twice is fine
        for name in ("ultralytics.hub.session", "ultralytics.hub"):
            assert modules[name].HUBTrainingSession is HUBTrainingSession
        assert modules["ultralytics.utils.callbacks.hub"].HUBTrainingSession is HUBTrainingSession
    finally:
        uninstall()
    for name in ("ultralytics.hub.session", "ultralytics.hub", "ultralytics.utils.callbacks.hub"):
        assert modules[name].HUBTrainingSession is original
    assert not integration.installed()


def test_install_says_what_to_do_where_ultralytics_has_no_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics.hub.session", None)  # 8.4: removed
    with pytest.raises(HubfsmError, match="add_callbacks"):
        install()


@pytest.mark.parametrize(
    ("given", "config", "dataset"),
    [
        (
            {},
            {"batchSize": -1, "epochs": 300, "imageSize": 640, "patience": 100,
             "device": "", "cache": "ram"},
            None,
        ),
        (
            {"data": "coco8.yaml", "batch": 8, "epochs": 3, "imgsz": [640, 480],
             "device": 0, "cache": True, "patience": 5},
            {"batchSize": 8, "epochs": 3, "imageSize": [640, 480], "patience": 5,
             "device": 0, "cache": True},
            "coco8.yaml",
        ),
        (
            {"data": "../d.yaml", "device": [0, 1], "cache": "disk", "imgsz": 320},
            {"batchSize": -1, "epochs": 300, "imageSize": 320, "patience": 100,
             "device": [0, 1], "cache": "disk"},
            "../d.yaml",
        ),
        (
            {"device": "cpu", "cache": False, "imgsz": (64, 64)},
            {"batchSize": -1, "epochs": 300, "imageSize": [64, 64], "patience": 100,
             "device": "cpu", "cache": False},
            None,
        ),
    ],
)  # fmt: skip
def test_the_create_payload_keeps_the_json_types_8_2_0_sends(given, config, dataset):
    payload = protocol.create_payload("models/yolov8n.pt", given)
    assert payload["config"] == config
    assert json.loads(json.dumps(payload)) == payload  # plain JSON
    assert payload["dataset"] == {"name": dataset}
    assert payload["lineage"] == {
        "architecture": {"name": "yolov8n"},
        "parent": {"name": "yolov8n.pt"},
    }
    assert payload["meta"] == {"name": "yolov8n.pt"}
    assert "parent" not in protocol.create_payload("yolov8n.yaml", {})["lineage"]["parent"]


class FakeModel:
    """The parts of ultralytics' ``Model`` that add_callbacks touches."""

    def __init__(self, trainer):
        self.overrides = {"model": "yolov8n.yaml"}
        self.session = None
        self.trainer = trainer
        self.sessions_seen = []

    def add_callback(self, event, callback):
        self.trainer.add_callback(event, callback)

    def train(self, **kwargs):
        self.sessions_seen.append(self.session)
        # The trainer resolves the dataset before any callback runs.
        self.trainer.args.data = f"/site-packages/ultralytics/cfg/datasets/{kwargs['data']}"
        self.trainer.train()


def test_add_callbacks_sends_the_users_arguments_and_keeps_ultralytics_client_out(
    hub, transport, make_trainer, kit
):
    model = FakeModel(make_trainer(epochs=2))
    add_callbacks_kw = {"transport": transport, "config": kit.FAST}
    integration.add_callbacks(model, **add_callbacks_kw)
    model.train(data="coco8.yaml", epochs=2)
    (seen,) = model.sessions_seen
    assert seen and not hasattr(seen, "model")  # claimed: ultralytics creates no model
    assert model.session is None  # and released after training
    (record,) = hub.models()
    assert record["data"] == "coco8.yaml"  # as given, not as the trainer resolved it
    assert record["epochs"] == 2
    assert record["batch_size"] == -1  # the official default, though the trainer had 16
    assert record["status"] == "trained"


def test_add_callbacks_keeps_the_key_ultralytics_session_was_given(local, make_trainer):
    model_id = create(local, epochs=1)
    trainer = make_trainer(epochs=1)
    # ultralytics' own session, opened from 'KEY_MODELID': hub-sdk's client holds the key
    trainer.hub_session = types.SimpleNamespace(
        model_id=model_id,
        model=types.SimpleNamespace(id=model_id, stop_heartbeat=lambda: None),
        client=types.SimpleNamespace(api_key=local.api_key),
    )
    integration.add_callbacks(trainer, api_root=local.url, web_root=local.url)
    trainer.train()
    assert local.hub.record(model_id)["status"] == "trained"


def test_add_callbacks_adopts_the_installed_sessions_model(local, make_trainer, monkeypatch):
    model_id = create(local, epochs=2)
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    stand_in = HUBTrainingSession(model_id)
    trainer = make_trainer(epochs=2)
    trainer.hub_session = stand_in
    integration.add_callbacks(trainer, api_root=local.url, web_root=local.url)
    trainer.train()
    assert stand_in.session is None and not trainer.hub_session
    assert len(local.hub.models()) == 1
    assert local.hub.record(model_id)["status"] == "trained"
    assert sorted(row["epoch"] for row in local.hub.metrics(model_id)) == [0, 1]


def test_epoch_weights_wait_for_their_epochs_metrics(local, tmp_path, monkeypatch):
    # ultralytics saves (on_model_save) before it reports the epoch (on_fit_epoch_end):
    # weights offered at once could reach the hub while a kill lost their epoch's metrics.
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    session = HUBTrainingSession.create_session("yolov8n.yaml", {"data": "coco8.yaml"})
    calls = []
    inner = session.session
    log_metrics, save_checkpoint = inner.log_metrics, inner.save_checkpoint

    def logged(metrics, *, epoch):
        calls.append(("metrics", epoch))
        log_metrics(metrics, epoch=epoch)

    def offered(path, *, epoch, is_best=False):
        calls.append(("checkpoint", epoch))
        save_checkpoint(path, epoch=epoch, is_best=is_best)

    monkeypatch.setattr(inner, "log_metrics", logged)
    monkeypatch.setattr(inner, "save_checkpoint", offered)
    stock = StockCallbacks(session)
    stock.on_pretrain_routine_end()
    last = tmp_path / "last.pt"
    last.write_bytes(b"epoch 0 weights")
    stock.on_model_save(0, last, True)
    assert calls == []  # held: a kill here leaves the hub neither, and the run starts over
    stock.on_fit_epoch_end(0, {"loss": 1.0})
    assert calls == [("metrics", 0), ("checkpoint", 0)]
    # A save whose epoch's metrics went in already is offered at once.
    stock.on_fit_epoch_end(1, {"loss": 0.5})
    last.write_bytes(b"epoch 1 weights")
    stock.on_model_save(1, last, False)
    assert calls[2:] == [("metrics", 1), ("checkpoint", 1)]
    # A save whose metrics never come (the final epoch's, superseded by the final
    # weights) is never offered.
    last.write_bytes(b"epoch 2 weights")
    stock.on_model_save(2, last, False)
    best = tmp_path / "best.pt"
    best.write_bytes(b"best weights")
    stock.on_train_end(2, best, 0.25)
    assert ("checkpoint", 2) not in calls
    model_id = session.model.id
    assert local.hub.record(model_id)["status"] == "trained"
    epochs = {u.epoch for u in local.hub.audit().uploads if u.type == "epoch"}
    assert epochs <= {row["epoch"] for row in local.hub.metrics(model_id)}


def test_offline_the_stand_in_trains_a_hub_model_after_one_online_start(
    local, tmp_path, monkeypatch
):
    model_id = create(local, epochs=2)
    url = f"{local.url}/models/{model_id}"
    monkeypatch.setenv("HUB_API_KEY", local.api_key)
    monkeypatch.setenv("HUBFSM_OFFLINE", "1")
    # Never started online: the error says so, not that a dataset is processing.
    with pytest.raises(HubfsmError, match="needs one online start") as raised:
        HUBTrainingSession(url)
    assert "processing" not in str(raised.value)
    monkeypatch.delenv("HUBFSM_OFFLINE")
    HUBTrainingSession(url).close()  # one online start keeps the record
    monkeypatch.setenv("HUBFSM_OFFLINE", "1")
    before = dict(local.hub.audit().requests)
    session = HUBTrainingSession(url)
    assert session.train_args["data"] == "coco8.yaml" and session.train_args["epochs"] == 2
    assert session.model_file == "yolov8n.yaml"
    best = train(session, tmp_path, 2)
    assert dict(local.hub.audit().requests) == before  # offline: nothing sent
    out = io.StringIO()
    monkeypatch.delenv("HUBFSM_OFFLINE")
    assert hubfsm_sync(tmp_path / "outbox", api_root=local.url, out=out) == 0, out.getvalue()
    assert sorted(row["epoch"] for row in local.hub.metrics(model_id)) == [0, 1]
    assert local.hub.record(model_id)["status"] == "trained"
    (final,) = [u for u in local.hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(best).hexdigest()
