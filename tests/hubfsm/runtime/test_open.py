from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import structlog

import hubfsm
from hubfsm.runtime.opener import open as hub_open
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


@pytest.fixture(autouse=True)
def _main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)


def test_open_creates_a_model_from_a_local_file_and_trains_it(hub, tmp_path):
    transport = InMemoryTransport(hub, KEY)
    with hub_open(
        "yolov8n.yaml", transport=transport, config=FAST, data="coco8.yaml", epochs=3
    ) as run:
        assert isinstance(run, hubfsm.Session) and run.state == "training"
        record = hub.record(run.model_id)
        assert record["epochs"] == 3 and record["train_args"]["data"] == "coco8.yaml"
        for epoch in range(3):
            run.log_metrics({"train/loss": 1.0 / (epoch + 1)}, epoch=epoch)
            (tmp_path / "last.pt").write_bytes(b"w%d" % epoch)
            run.save_checkpoint(tmp_path / "last.pt", epoch=epoch)
        (tmp_path / "best.pt").write_bytes(b"best")
        run.finish(tmp_path / "best.pt", map50_95=0.3)
        assert run.state == "done"
    assert [row["epoch"] for row in hub.metrics(run.model_id)] == [0, 1, 2]
    (final,) = [u for u in hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(b"best").hexdigest()
    assert hub.record(run.model_id)["map"] == pytest.approx(0.3)


def test_open_loads_an_existing_model_and_ignores_local_training_args(hub):
    model_id = new_model(hub)
    with structlog.testing.capture_logs() as logs:
        run = hub_open(
            Path(model_id), transport=InMemoryTransport(hub, KEY), config=FAST, epochs=99
        )
    try:
        assert run.model_id == model_id and run.state == "training"
        assert hub.record(model_id)["epochs"] != 99
    finally:
        run.close()
    (ignored,) = [e for e in logs if e["event"] == "session.train_args_ignored"]
    assert ignored["names"] == ["epochs"]


def test_an_exception_in_the_block_flushes_leaves_it_resumable_and_propagates(hub):
    model_id = new_model(hub)
    transport = InMemoryTransport(hub, KEY)
    with (
        pytest.raises(ZeroDivisionError),
        hub_open(model_id, transport=transport, config=FAST) as run,
    ):
        for epoch in range(4):
            run.log_metrics({"loss": 1.0}, epoch=epoch)
        run.log_metrics({"loss": 1.0 / 0}, epoch=4)
    assert run.state == "resumable"
    assert run.pending() == {"metrics": 0, "checkpoint": 0, "final": 0}
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0, 1, 2, 3]
    assert hub.record(model_id)["status"] != "trained"


def test_errors_at_open_are_raised_with_no_key_in_them(hub):
    wrong = "w" * 42
    with pytest.raises(hubfsm.AuthError) as info:
        hub_open(new_model(hub), transport=InMemoryTransport(hub, wrong), config=FAST)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    with pytest.raises(hubfsm.IdentifierError):
        hub_open("not a model", transport=InMemoryTransport(hub, KEY), config=FAST)


def test_an_api_key_is_needed_without_a_transport(hub):
    with pytest.raises(hubfsm.HubfsmError, match="no API key"):
        hub_open("yolov8n.yaml")


def test_session_options_pass_through(hub, tmp_path):
    model_id = new_model(hub)
    with hubfsm.open(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                     outbox_dir=tmp_path / "ob", offline=True, journal=False) as run:
        run.log_metrics({"loss": 1.0})
        assert run.outbox_dir.parent == tmp_path / "ob"
        assert not (run.outbox_dir / "journal").exists()
    assert hub.audit().requests.get("upload_metrics", 0) == 0  # offline: nothing sent


class _Recording(InMemoryTransport):
    """An in-memory transport that keeps the JSON bodies it sends."""

    def __init__(self, hub, key):
        super().__init__(hub, key)
        self.bodies = []

    def send(self, request):
        self.bodies.append((request.method, request.path, request.json))
        return super().send(request)


def _create_body(transport):
    return next(b for m, p, b in transport.bodies if (m, p) == ("POST", "/v1/models"))


def test_open_sends_every_argument_tags_and_notes_to_a_hub_other_than_the_public_one(
    hub, tmp_path
):
    transport = _Recording(hub, KEY)
    with hub_open(
        "yolov8n.yaml",
        transport=transport,
        api_root="http://127.0.0.1:9",
        config=FAST,
        outbox_dir=tmp_path,
        tags=("a", "b"),
        notes="why",
        data="coco8.yaml",
        lr0=0.02,
        name="exp",
    ) as run:
        record = hub.record(run.model_id)
    body = _create_body(transport)
    assert body["hubfsm"] == {
        "trainArgs": {"data": "coco8.yaml", "lr0": 0.02, "name": "exp"},
        "tags": ["a", "b"],
        "notes": "why",
    }
    # open()'s name is ultralytics' training argument, not the model's name.
    assert body["meta"]["name"] == "yolov8n.yaml"
    assert record["params"]["lr0"] == 0.02 and record["tags"] == ["a", "b"]


def test_a_session_names_its_model_and_says_what_the_public_hub_cannot_carry(
    hub, tmp_path, monkeypatch
):
    monkeypatch.delenv("ULTRALYTICS_HUB_API", raising=False)
    transport = _Recording(hub, KEY)
    with structlog.testing.capture_logs() as logs:
        session = hubfsm.Session(
            "yolov8n.yaml",
            transport=transport,
            config=FAST,
            outbox_dir=tmp_path,
            name="baseline",
            tags="seed=1",
            notes="n",
            train_args={"data": "coco8.yaml", "lr0": 0.02, "epochs": 3},
        )
        session.close()
    body = _create_body(transport)
    # The public HUB's official client sent no more than the wire's fields: nor does hubfsm.
    assert "hubfsm" not in body and body["meta"]["name"] == "baseline"
    assert body["config"]["epochs"] == 3
    (said,) = [e for e in logs if e["event"] == "session.train_args_not_sent"]
    assert (said["names"], said["tags"], said["notes"]) == (["lr0"], 1, True)


def _interrupted(hub, model_id):
    record = hub.record(model_id)
    return record["interrupted_by"], record["interrupted_at"] is not None


@pytest.mark.parametrize(
    ("error", "said"), [(KeyboardInterrupt, "Ctrl-C"), (ValueError, "ValueError"), (None, None)]
)
def test_a_session_stopped_before_its_end_tells_a_hubfsm_hub_why(hub, tmp_path, error, said):
    transport = _Recording(hub, KEY)
    session = hubfsm.Session(
        "yolov8n.yaml",
        transport=transport,
        api_root="http://127.0.0.1:9",
        config=FAST,
        outbox_dir=tmp_path,
    )
    with pytest.raises(error or ZeroDivisionError), session:
        session.log_metrics({"loss": 1.0}, epoch=0)
        raise (error or ZeroDivisionError)("stopped")
    if error is None:
        said = "ZeroDivisionError"
    assert _interrupted(hub, session.model_id) == (said, True)
    # The note is the session's last word: it came after the epoch's metrics.
    assert hub.metrics(session.model_id)[0]["epoch"] == 0
    assert transport.bodies[-1][2]["hubfsm"] == {"ended": "interrupted", "reason": said}


def test_a_finished_session_or_the_public_hub_hears_of_no_interruption(
    hub, tmp_path, monkeypatch
):
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"w")
    with hubfsm.Session(
        "yolov8n.yaml", transport=InMemoryTransport(hub, KEY), api_root="http://127.0.0.1:9",
        config=FAST, outbox_dir=tmp_path,
    ) as done:
        done.log_metrics({"loss": 1.0}, epoch=0)
        done.finish(weights)
    assert _interrupted(hub, done.model_id) == (None, False)
    monkeypatch.delenv("ULTRALYTICS_HUB_API", raising=False)
    transport = _Recording(hub, KEY)
    public = hubfsm.Session("yolov8n.yaml", transport=transport, config=FAST, outbox_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt), public:
        raise KeyboardInterrupt
    assert _interrupted(hub, public.model_id) == (None, False)
    assert all("hubfsm" not in (body or {}) for _, _, body in transport.bodies)
