from __future__ import annotations

import hashlib
import json
import sys
import types

import pytest
import structlog

import hubfsm
from hubfsm.integrations.ultralytics import add_callbacks
from hubfsm.integrations.ultralytics_callbacks import UltralyticsCallbacks
from hubfsm.integrations.ultralytics_objects import DETACHED, EVENTS, model_info
from hubfsm.runtime.opener import NullSession


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_whole_training_reaches_the_hub_as_ultralytics_sends_it(
    hub, transport, make_trainer, kit
):
    trainer = make_trainer(epochs=3)
    with structlog.testing.capture_logs() as logs:
        callbacks = add_callbacks(
            trainer, transport=transport, config=kit.FAST, model_info=lambda t: kit.MODEL_INFO
        )

        # An epoch takes a while in real training; here the next one would overwrite
        # last.pt before the session took its snapshot, so wait for the first upload.
        def first_checkpoint_landed():
            return any(u.type == "epoch" for u in hub.audit().uploads)

        trainer.add_callback(
            "on_model_save", lambda t: t.epoch or kit.eventually(first_checkpoint_landed, 5.0)
        )
        trainer.train()
    session = callbacks.session
    assert session is None  # the callbacks opened it, so they closed it at the end
    model_id = next(e["model_id"] for e in logs if e["event"] == "ultralytics.session_opened")
    record = hub.record(model_id)
    # The model was created from the trainer's arguments, as ultralytics creates it.
    assert record["cfg"] == "yolov8n.yaml" and record["epochs"] == 3
    assert record["train_args"]["data"] == "coco8.yaml"

    rows = {row["epoch"]: row["metrics"] for row in hub.metrics(model_id)}
    assert sorted(rows) == [0, 1, 2]
    every = set(kit.TRAIN_KEYS) | set(kit.VAL_KEYS)
    assert set(rows[0]) == every | set(kit.MODEL_INFO)
    assert set(rows[1]) == every
    assert set(rows[2]) == set(kit.TRAIN_KEYS) | set(kit.FINAL_KEYS)
    assert rows[1]["train/box_loss"] == 0.5
    assert rows[1]["metrics/mAP50-95(B)"] == pytest.approx(0.15)
    # final_eval reports best.pt's validation as the last epoch again; it replaces it.
    assert rows[2]["metrics/mAP50-95(B)"] == 0.25

    uploads = hub.audit().uploads
    checkpoints = [u for u in uploads if u.type == "epoch"]
    assert checkpoints and checkpoints[0].epoch == 0  # the first goes at once
    for upload in checkpoints:
        assert upload.sha256 == sha256(trainer.saved[upload.epoch])
        assert upload.is_best == (upload.epoch in (0, 1))
    (final,) = [u for u in uploads if u.type == "final"]
    assert final.sha256 == sha256(trainer.saved[1])  # best.pt, from the best epoch
    assert final.epoch == 2
    assert record["status"] == "trained" and record["map"] == pytest.approx(0.25)
    assert any(e["event"] == "ultralytics.done" for e in logs)
    assert all(kit.KEY not in repr(e) for e in logs)


def test_callbacks_register_under_ultralytics_event_names(make_trainer, transport, kit):
    trainer = make_trainer()
    hub_callbacks = add_callbacks(trainer, transport=transport, config=kit.FAST)
    assert set(trainer.callbacks) == set(EVENTS)
    assert all(len(fns) == 1 for fns in trainer.callbacks.values())
    assert {"on_pretrain_routine_end", "on_fit_epoch_end", "on_model_save", "on_train_end"} <= set(
        hub_callbacks.callbacks()
    )
    # Nothing is opened before training starts.
    assert transport.sent == [] and hub_callbacks.session is None


def test_without_add_callback_it_says_what_it_needs():
    with pytest.raises(TypeError, match="add_callback"):
        add_callbacks(object())


def test_model_info_is_skipped_when_the_trainer_cannot_give_it(hub, transport, make_trainer, kit):
    trainer = make_trainer(epochs=1)

    def broken(trainer):
        raise AttributeError("'FakeTrainer' object has no attribute 'validator'")

    with structlog.testing.capture_logs() as logs:
        add_callbacks(trainer, transport=transport, config=kit.FAST, model_info=broken)
        trainer.train()
    model_id = next(e["model_id"] for e in logs if e["event"] == "ultralytics.session_opened")
    (row,) = hub.metrics(model_id)
    assert set(row["metrics"]) == set(kit.TRAIN_KEYS) | set(kit.FINAL_KEYS)
    assert any(e["event"] == "ultralytics.model_info_skipped" for e in logs)


def test_without_ultralytics_loaded_there_is_no_model_info(monkeypatch, make_trainer):
    monkeypatch.delitem(sys.modules, "ultralytics", raising=False)
    assert model_info(make_trainer()) == {}
    # Loaded but broken (or a partial install): still nothing, and no error.
    monkeypatch.setitem(sys.modules, "ultralytics", types.ModuleType("ultralytics"))
    monkeypatch.setitem(sys.modules, "ultralytics.utils.torch_utils", None)
    assert model_info(make_trainer()) == {}


def test_with_ultralytics_loaded_the_model_info_is_its_own(
    monkeypatch, hub, transport, make_trainer, kit
):
    # Stand-in modules: importing the real ultralytics probes the internet.
    fake = types.ModuleType("ultralytics.utils.torch_utils")
    fake.model_info_for_loggers = lambda trainer: dict(kit.MODEL_INFO)
    monkeypatch.setitem(sys.modules, "ultralytics", types.ModuleType("ultralytics"))
    monkeypatch.setitem(sys.modules, "ultralytics.utils.torch_utils", fake)
    trainer = make_trainer(epochs=1)
    add_callbacks(trainer, transport=transport, config=kit.FAST)
    trainer.train()
    (model,) = hub.models()
    (row,) = hub.metrics(model["id"])
    assert set(kit.MODEL_INFO) <= set(row["metrics"])


def test_an_existing_model_is_loaded_by_url_and_trained(hub, transport, make_trainer, kit):
    model_id = kit.new_model(hub)
    trainer = make_trainer(epochs=2)
    url = f"https://hub.ultralytics.com/models/{model_id}"
    add_callbacks(trainer, url, transport=transport, config=kit.FAST)
    trainer.train()
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0, 1]
    assert hub.record(model_id)["status"] == "trained"
    assert len(hub.models()) == 1  # nothing was created


def test_a_given_session_is_finished_but_left_open_for_its_owner(hub, transport, make_trainer, kit):
    model_id = kit.new_model(hub)
    session = hubfsm.Session(model_id, transport=transport, config=kit.FAST)
    try:
        trainer = make_trainer(epochs=2)
        callbacks = add_callbacks(trainer, session)
        trainer.train()
        assert callbacks.session is session and session.state == "done"
        assert hub.record(model_id)["map"] == pytest.approx(0.25)
    finally:
        session.close()


def test_an_official_hub_session_is_taken_over_not_doubled(hub, transport, make_trainer, kit):
    model_id = kit.new_model(hub)
    stopped = []
    official_model = types.SimpleNamespace(id=model_id, stop_heartbeat=lambda: stopped.append(1))
    official = types.SimpleNamespace(model_id=model_id, model=official_model)
    trainer = make_trainer(epochs=1)
    trainer.hub_session = official
    seen = []
    # ultralytics' own callback, as registered after ours: it must find no session.
    add_callbacks(trainer, transport=transport, config=kit.FAST)
    trainer.add_callback("on_fit_epoch_end", lambda t: seen.append(t.hub_session))
    trainer.train()
    assert not trainer.hub_session and stopped == [1]
    assert seen == [DETACHED, DETACHED]
    assert hub.record(model_id)["status"] == "trained"


def test_a_crash_in_training_leaves_the_model_resumable(hub, transport, make_trainer, kit):
    trainer = make_trainer(epochs=5)
    callbacks = add_callbacks(trainer, transport=transport, config=kit.FAST)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.train(fail_at=3)
    session = callbacks.session
    assert session is not None and session.state == "training"
    # ultralytics runs no callback after a crash; the interpreter's exit (or the user)
    # closes the session, which flushes and leaves it resumable.
    session.close()
    assert session.state == "resumable"
    model_id = session.model_id
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0, 1, 2]
    record = hub.record(model_id)
    assert record["has_last_weights"] and record["status"] != "trained"


def test_a_missing_best_falls_back_to_last(hub, transport, make_trainer, kit):
    trainer = make_trainer(epochs=1)
    add_callbacks(trainer, transport=transport, config=kit.FAST)
    trainer.add_callback("on_fit_epoch_end", lambda t: t.best.unlink(missing_ok=True))
    with structlog.testing.capture_logs() as logs:
        trainer.train()
    (final,) = [u for u in hub.audit().uploads if u.type == "final"]
    assert final.sha256 == sha256(trainer.saved[0])
    assert any(e["event"] == "ultralytics.best_missing" for e in logs)


def test_a_hub_failure_mid_training_is_logged_and_training_goes_on(
    hub, transport, make_trainer, kit
):
    trainer = make_trainer(epochs=3)
    callbacks = add_callbacks(trainer, transport=transport, config=kit.FAST)

    def revoke(t):
        if t.epoch == 1:
            hub.revoke_key(kit.KEY)

    trainer.add_callback("on_model_save", revoke)
    with structlog.testing.capture_logs() as logs:
        trainer.train()  # does not raise
    assert callbacks.session is None
    assert any(e["event"] == "callbacks.hub_error" for e in logs)
    assert all(kit.KEY not in repr(e) for e in logs)


def test_a_bad_key_stops_training_before_it_starts(hub, make_trainer, kit):
    wrong = "w" * 42
    trainer = make_trainer(epochs=1)
    add_callbacks(trainer, transport=kit.Counting(hub, wrong), config=kit.FAST)
    with pytest.raises(hubfsm.AuthError) as info:
        trainer.train()
    assert wrong not in str(info.value)
    assert trainer.epoch == 0 and trainer.metrics is None


def test_other_ranks_send_nothing(monkeypatch, hub, transport, make_trainer, kit):
    monkeypatch.setenv("RANK", "1")
    trainer = make_trainer(epochs=2)
    callbacks = add_callbacks(trainer, transport=transport, config=kit.FAST)
    seen: list[object] = []
    trainer.add_callback("on_fit_epoch_end", lambda t: seen.append(callbacks.session))
    trainer.train()
    assert isinstance(seen[0], NullSession)
    assert transport.sent == [] and hub.models() == []


def test_metric_values_from_numpy_or_torch_become_plain_numbers(hub, transport, make_trainer, kit):
    class Scalar:
        def __init__(self, value):
            self.value = value

        def item(self):
            return self.value

    trainer = make_trainer(epochs=1)
    add_callbacks(
        trainer,
        transport=transport,
        config=kit.FAST,
        model_info=lambda t: {"model/parameters": Scalar(7), "model/GFLOPs": Scalar(1.5)},
    )
    trainer.train()
    (model,) = hub.models()
    (row,) = hub.metrics(model["id"])
    assert row["metrics"]["model/parameters"] == 7 and row["metrics"]["model/GFLOPs"] == 1.5
    json.dumps(row["metrics"])


def test_the_callbacks_object_says_what_it_holds(make_trainer, transport, kit):
    callbacks = UltralyticsCallbacks(transport=transport, config=kit.FAST)
    assert "session=None" in repr(callbacks)


def test_a_key_in_the_identifier_never_reaches_the_logs(hub, transport, make_trainer, kit):
    model_id = kit.new_model(hub)
    trainer = make_trainer(epochs=1)
    with structlog.testing.capture_logs() as logs:
        callbacks = add_callbacks(trainer, f"{kit.KEY}_{model_id}", transport=transport)
        assert kit.KEY not in repr(callbacks)
        trainer.train()
    assert hub.record(model_id)["status"] == "trained"
    assert logs and all(kit.KEY not in repr(e) for e in logs)


def test_the_key_in_ultralytics_settings_is_used_last(monkeypatch, tmp_path, make_trainer, kit):
    from hubfsm.hub.server import LocalHub

    with LocalHub(tmp_path / "hub") as local:
        utils = types.ModuleType("ultralytics.utils")
        utils.SETTINGS = {"api_key": local.api_key, "hub": True}
        monkeypatch.setitem(sys.modules, "ultralytics.utils", utils)
        trainer = make_trainer(epochs=1)
        with structlog.testing.capture_logs() as logs:
            add_callbacks(
                trainer,
                api_root=local.url,
                web_root=local.url,
                config=kit.FAST,
                model_info=lambda t: {},
            )
            trainer.train()
        (model,) = local.hub.models()
        assert local.hub.record(model["id"])["status"] == "trained"
    assert all(local.api_key not in repr(e) for e in logs)


def test_the_final_validation_replaces_the_last_epoch_even_when_reported_after_it(
    hub, transport, make_trainer, kit
):
    # ultralytics 8.4 reports best.pt's validation at step epochs+1 for its own loggers;
    # on the hub that would be an epoch that never trained.
    trainer = make_trainer(epochs=2)
    with structlog.testing.capture_logs() as logs:
        add_callbacks(trainer, transport=transport, config=kit.FAST, model_info=lambda t: {})
        trainer.train(final_step_ahead=True)
    model_id = next(e["model_id"] for e in logs if e["event"] == "ultralytics.session_opened")
    rows = {row["epoch"]: row["metrics"] for row in hub.metrics(model_id)}
    assert sorted(rows) == [0, 1]
    assert rows[1]["metrics/mAP50-95(B)"] == 0.25
    record = hub.record(model_id)
    assert record["status"] == "trained" and record["final_epoch"] == 1


def test_an_epochs_metrics_go_in_before_its_checkpoint_and_only_once(
    hub, transport, make_trainer, kit, monkeypatch
):
    # ultralytics saves the checkpoint before it reports the epoch's metrics: offered
    # first, epoch 0's weights could reach the hub while a kill lost epoch 0's metrics,
    # and the resumed run would start at epoch 1 without them.
    model_id = kit.new_model(hub)
    session = hubfsm.Session(model_id, transport=transport, config=kit.FAST)
    calls = []
    log_metrics, save_checkpoint = session.log_metrics, session.save_checkpoint

    def logged(metrics, *, epoch):
        calls.append(("metrics", epoch, dict(metrics)))
        log_metrics(metrics, epoch=epoch)

    def offered(path, *, epoch, is_best=False):
        calls.append(("checkpoint", epoch, None))
        save_checkpoint(path, epoch=epoch, is_best=is_best)

    monkeypatch.setattr(session, "log_metrics", logged)
    monkeypatch.setattr(session, "save_checkpoint", offered)
    try:
        trainer = make_trainer(epochs=3)
        add_callbacks(trainer, session, model_info=lambda t: kit.MODEL_INFO)
        trainer.train()
        assert session.state == "done"
    finally:
        session.close()
    # Each epoch's metrics, complete, then its weights; the final validation of best.pt
    # replaces the last epoch's row once more, and nothing else is logged twice.
    assert [(kind, epoch) for kind, epoch, _ in calls] == [
        ("metrics", 0), ("checkpoint", 0),
        ("metrics", 1), ("checkpoint", 1),
        ("metrics", 2), ("checkpoint", 2),
        ("metrics", 2),
    ]  # fmt: skip
    every = set(kit.TRAIN_KEYS) | set(kit.VAL_KEYS)
    assert set(calls[0][2]) == every | set(kit.MODEL_INFO)
    assert set(calls[2][2]) == every and calls[2][2]["train/box_loss"] == 0.5
    assert set(calls[6][2]) == set(kit.TRAIN_KEYS) | set(kit.FINAL_KEYS)
    rows = {row["epoch"]: row["metrics"] for row in hub.metrics(model_id)}
    assert sorted(rows) == [0, 1, 2] and rows[2]["metrics/mAP50-95(B)"] == 0.25


def test_without_a_save_the_epoch_is_recorded_when_reported(hub, transport, make_trainer, kit):
    # save=False: ultralytics saves only the final epoch, and the others are recorded at
    # on_fit_epoch_end as before.
    model_id = kit.new_model(hub)
    trainer = make_trainer(epochs=3)
    save_model = trainer.save_model
    callbacks = add_callbacks(trainer, model_id, transport=transport, config=kit.FAST)
    saves = []

    def run_callbacks(event):
        if event == "on_model_save" and trainer.epoch < trainer.epochs - 1:
            return  # not saved this epoch
        if event == "on_model_save":
            saves.append(trainer.epoch)
        for callback in trainer.callbacks.get(event, []):
            callback(trainer)

    trainer.save_model = lambda: trainer.epoch == trainer.epochs - 1 and save_model()
    trainer.run_callbacks = run_callbacks
    trainer.train()
    assert saves == [2] and callbacks.session is None
    rows = {row["epoch"]: row["metrics"] for row in hub.metrics(model_id)}
    assert sorted(rows) == [0, 1, 2] and rows[1]["train/box_loss"] == 0.5
    assert rows[2]["metrics/mAP50-95(B)"] == 0.25
    assert hub.record(model_id)["status"] == "trained"


def test_every_trainer_argument_reaches_a_hub_other_than_the_public_one(
    hub, transport, make_trainer, kit
):
    trainer = make_trainer(epochs=2)
    trainer.args.lr0 = 0.02
    with structlog.testing.capture_logs() as logs:
        add_callbacks(
            trainer,
            transport=transport,
            api_root="http://127.0.0.1:9",
            config=kit.FAST,
            model_info=lambda t: kit.MODEL_INFO,
            tags=["sweep"],
            notes="lr 0.02",
        )
        trainer.train()
    model_id = next(e["model_id"] for e in logs if e["event"] == "ultralytics.session_opened")
    record = hub.record(model_id)
    # The lr and the other arguments the wire has no room for are kept beside it.
    assert record["params"]["lr0"] == 0.02 and record["params"]["profile"] is False
    assert record["params"]["epochs"] == 2 and record["epochs"] == 2
    assert (record["tags"], record["notes"]) == (["sweep"], "lr 0.02")
