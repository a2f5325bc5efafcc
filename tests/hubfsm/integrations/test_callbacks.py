from __future__ import annotations

import hashlib

import pytest
import structlog

import hubfsm
from hubfsm.integrations.callbacks import TrainingCallbacks
from hubfsm.runtime.opener import NullSession
from tests.support import KEY


class Scalar:
    """Like a numpy scalar or a one-element tensor."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_a_loop_reports_through_the_callbacks(hub, transport, tmp_path, kit):
    session = hubfsm.Session(
        "net.yaml", transport=transport, config=kit.FAST, train_args={"epochs": 2}
    )
    assert session.state == "created"
    callbacks = TrainingCallbacks(session, close_at_end=True)
    for epoch in range(2):
        callbacks.on_epoch_end(epoch, {"loss": Scalar(1.0 / (epoch + 1))})  # starts it
        (tmp_path / "last.pt").write_bytes(b"w%d" % epoch)
        callbacks.on_checkpoint(tmp_path / "last.pt", epoch, epoch == 0)
        kit.eventually(lambda: session.pending()["checkpoint"] == 0, 5.0)
    (tmp_path / "best.pt").write_bytes(b"best")
    assert callbacks.on_train_end(tmp_path / "best.pt", Scalar(0.5)) is True
    assert session.state == "done"
    rows = hub.metrics(session.model_id)
    assert [r["metrics"] for r in rows] == [{"loss": 1.0}, {"loss": 0.5}]
    record = hub.record(session.model_id)
    assert record["map"] == pytest.approx(0.5)
    (final,) = [u for u in hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(b"best").hexdigest()


def test_hub_troubles_are_logged_and_the_loop_goes_on(hub, transport, tmp_path, kit):
    session = hubfsm.Session(kit.new_model(hub), transport=transport, config=kit.FAST)
    callbacks = TrainingCallbacks(session, close_at_end=True)
    callbacks.on_train_start()
    callbacks.on_epoch_end(0, {"loss": 1.0})
    with structlog.testing.capture_logs() as logs:
        callbacks.on_checkpoint(tmp_path / "missing.pt", 0)
        assert callbacks.on_train_end(tmp_path / "missing-best.pt", 0.1) is False
    steps = [e["step"] for e in logs if e["event"] == "callbacks.hub_error"]
    assert steps == ["checkpoint", "train_end"]
    # Not finished: what was logged reached the hub, the model can resume.
    assert session.state == "resumable"
    assert [r["epoch"] for r in hub.metrics(session.model_id)] == [0]


def test_a_key_revoked_mid_run_is_one_line_on_stderr_not_one_more_at_the_end(
    hub, transport, tmp_path, kit, capsys
):
    session = hubfsm.Session(kit.new_model(hub), transport=transport, config=kit.FAST)
    callbacks = TrainingCallbacks(session, close_at_end=True)
    callbacks.on_epoch_end(0, {"loss": 1.0})
    assert session.flush(timeout=5.0)
    hub.revoke_key(KEY)
    callbacks.on_epoch_end(1, {"loss": 0.5})
    (tmp_path / "best.pt").write_bytes(b"best")
    with structlog.testing.capture_logs() as logs:
        assert callbacks.on_train_end(tmp_path / "best.pt", 0.5) is False
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "(401)" in said[0] and "hubfsm sync" in said[0]
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []
    assert session.pending()["final"] == 1  # kept for `hubfsm sync`


def test_closing_after_a_refusal_logs_it_and_returns(hub, transport, tmp_path, kit, capsys):
    # A loop that stops before on_train_end (an exception, an early stop) closes the
    # callbacks; before, close() raised the refusal's AuthError at the trainer.
    session = hubfsm.Session(kit.new_model(hub), transport=transport, config=kit.FAST,
                             outbox_dir=tmp_path)
    strict = TrainingCallbacks(hubfsm.Session(kit.new_model(hub), transport=transport,
                                              config=kit.FAST), strict=True)
    callbacks = TrainingCallbacks(session)
    callbacks.on_epoch_end(0, {"loss": 1.0})
    assert session.flush(timeout=5.0)
    hub.revoke_key(KEY)
    callbacks.on_epoch_end(1, {"loss": 0.5})
    kit.eventually(lambda: session.state == "refused", 5.0)
    with structlog.testing.capture_logs() as logs:
        callbacks.close()
    [logged] = [e for e in logs if e["event"] == "callbacks.hub_error"]
    assert logged["step"] == "close" and logged["log_level"] == "info"
    assert "AuthError" in logged["error"]
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "(401)" in said[0]  # the refusal's own line, once
    assert session.pending()["metrics"] == 1  # kept for `hubfsm sync`
    strict.on_epoch_end(0, {"loss": 1.0})
    kit.eventually(lambda: strict.session.state == "refused", 5.0)
    with pytest.raises(hubfsm.AuthError):
        strict.close()


def test_an_offline_train_end_says_the_hub_has_nothing_yet(hub, transport, tmp_path, kit):
    # Before, on_train_end returned True offline, where finish records and returns.
    session = hubfsm.Session(kit.new_model(hub), transport=transport, config=kit.FAST,
                             offline=True, outbox_dir=tmp_path)
    callbacks = TrainingCallbacks(session, close_at_end=True)
    callbacks.on_epoch_end(0, {"loss": 1.0})
    (tmp_path / "best.pt").write_bytes(b"best")
    assert callbacks.on_train_end(tmp_path / "best.pt", 0.5) is False
    assert session.state == "resumable" and session.pending()["final"] == 1
    assert TrainingCallbacks(NullSession(1)).on_train_end(tmp_path / "best.pt") is True


def test_strict_callbacks_raise(hub, transport, tmp_path, kit):
    session = hubfsm.Session(kit.new_model(hub), transport=transport, config=kit.FAST)
    try:
        callbacks = TrainingCallbacks(session, strict=True)
        with pytest.raises(FileNotFoundError):
            callbacks.on_checkpoint(tmp_path / "missing.pt", 0)
    finally:
        session.close()


def test_on_a_null_session_everything_is_a_no_op(tmp_path):
    callbacks = TrainingCallbacks(NullSession(3), close_at_end=True)
    callbacks.on_train_start()
    callbacks.on_epoch_end(0, {"loss": 1.0})
    callbacks.on_checkpoint(tmp_path / "missing.pt", 0)
    assert callbacks.on_train_end(tmp_path / "missing.pt") is True
    assert "NullSession rank=3" in repr(callbacks)
