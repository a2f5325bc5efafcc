"""A refusal mid-run stops sending, never recording; ``hubfsm sync`` delivers it all later."""

import hashlib
import io
import re

import pytest
import structlog

import hubfsm
from hubfsm.cli.outboxes import status
from hubfsm.durable.survey import find, inspect
from hubfsm.runtime.sync import sync
from hubfsm.transport import Response, Transport
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


def epochs_on(hub, model_id):
    return [row["epoch"] for row in hub.metrics(model_id)]


def test_a_key_revoked_mid_run_loses_no_epoch_and_sync_after_the_fix_delivers_it_all(
    hub, tmp_path, capsys
):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                       outbox_dir=tmp_path)
    s.start()
    for epoch in range(10):
        s.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    assert s.flush(timeout=5)
    hub.revoke_key(KEY)
    last = tmp_path / "last.pt"
    for epoch in range(10, 20):
        s.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
        last.write_bytes(b"weights %d" % epoch)
        s.save_checkpoint(last, epoch=epoch)
    assert not s.flush(timeout=5) and s.state == "refused"
    best = tmp_path / "best.pt"
    best.write_bytes(b"the best weights")
    with pytest.raises(hubfsm.AuthError) as info:
        s.finish(best, map50_95=0.5)
    message = str(info.value)
    assert "refused the API key (401) on POST /v1/models/" in message
    assert "10 epochs of metrics" in message and "final weights" in message
    assert f"`HUB_API_KEY=... hubfsm sync {s.outbox_dir}` with the new key" in message
    assert KEY not in message
    s.close()  # finish said it already: close does not raise it again
    err = capsys.readouterr().err
    assert err.count("hubfsm:") == 1, err  # one notice, at the refusal
    assert "refused the API key (401)" in err and "HUB_API_KEY=... hubfsm sync" in err
    assert epochs_on(hub, model_id) == list(range(10))

    # Nothing was lost: all of it is in the outbox, and status says why it is held.
    out = io.StringIO()
    status(tmp_path, out=out)
    [info] = inspect(find(tmp_path))
    assert info.pending == {"metrics": 10, "checkpoint": 0, "final": 1}
    assert info.refusal is not None and "401" in info.refusal
    assert "sending stopped: the hub refused the API key (401)" in out.getvalue()

    # The old key still fails, and keeps everything; the new key delivers it all.
    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), out=out) == 1
    assert "refused the API key" in out.getvalue()
    # (The local hub gives each key its own models, so the fix here is the key restored.)
    hub.add_key(KEY)
    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), out=out) == 0, out.getvalue()
    assert epochs_on(hub, model_id) == list(range(20))
    finals = [u for u in hub.audit().uploads if u.type == "final" and u.model_id == model_id]
    assert [u.sha256 for u in finals] == [hashlib.sha256(b"the best weights").hexdigest()]
    assert hub.record(model_id)["status"] == "trained"
    assert find(tmp_path) == []  # an outbox with nothing left is removed


def test_close_after_a_refusal_raises_naming_the_answer_but_never_masks_an_exception(hub):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                       outbox=False)
    s.start()
    hub.delete_model(model_id)
    s.log_metrics({"loss": 1.0})
    assert not s.flush(timeout=5) and s.state == "refused"
    with pytest.raises(hubfsm.ModelNotFoundError, match=r"not found on the hub \(404\)"):
        s.close()
    s.close()  # once is enough

    other = new_model(hub)
    with pytest.raises(KeyError):
        with hubfsm.Session(other, transport=InMemoryTransport(hub, KEY), config=FAST,
                            outbox=False) as s2:
            hub.revoke_key(KEY)
            s2.log_metrics({"loss": 1.0})
            assert not s2.flush(timeout=5) and s2.state == "refused"
            raise KeyError("the trainer's own error")


class Redirecting(Transport):
    """A hub behind a proxy that redirects every upload (as a moved API root would)."""

    def __init__(self, inner):
        self.inner = inner

    def send(self, request):
        if request.method == "POST" and "/heartbeat/" not in request.path:
            return Response(308, {}, )
        return self.inner.send(request)


def test_a_redirect_stops_sending_and_says_to_check_the_api_root(hub, tmp_path):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=Redirecting(InMemoryTransport(hub, KEY)),
                       config=FAST, outbox_dir=tmp_path)
    s.start()
    for epoch in range(3):
        s.log_metrics({"loss": 1.0}, epoch=epoch)
    assert not s.flush(timeout=5) and s.state == "refused"
    best = tmp_path / "best.pt"
    best.write_bytes(b"best")
    with pytest.raises(hubfsm.HubError, match=r"redirect \(308\).*check the API root"):
        s.finish(best)
    s.close()
    assert inspect(find(tmp_path))[0].pending == {"metrics": 3, "checkpoint": 0, "final": 1}
    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), out=out) == 0, out.getvalue()
    assert epochs_on(hub, model_id) == [0, 1, 2]


class RefusesHeartbeats(Transport):
    def __init__(self, inner):
        self.inner = inner
        self.heartbeats = 0

    def send(self, request):
        if "/heartbeat/" in request.path:
            self.heartbeats += 1
            return Response(409, {"success": False, "message": "agent conflict", "data": {}})
        return self.inner.send(request)


def test_a_refused_heartbeat_warns_once_and_training_completes(hub, tmp_path):
    model_id = new_model(hub)
    link = RefusesHeartbeats(InMemoryTransport(hub, KEY))
    with structlog.testing.capture_logs() as logs:
        with hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path) as s:
            for epoch in range(5):
                s.log_metrics({"loss": 1.0}, epoch=epoch)
            best = tmp_path / "best.pt"
            best.write_bytes(b"best")
            s.finish(best)
            assert s.state == "done"
    assert link.heartbeats == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"].count("heartbeat.stopped") == 1
    assert epochs_on(hub, model_id) == [0, 1, 2, 3, 4]


def test_a_payload_the_hub_refuses_is_set_aside_and_the_rest_goes_on(hub, tmp_path):
    model_id = new_model(hub)
    with structlog.testing.capture_logs() as logs:
        with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                            outbox_dir=tmp_path) as s:
            s.log_metrics({"loss": 1.0}, epoch=0)
            # The local hub refuses text that is not valid Unicode (a lone surrogate).
            s.log_metrics({"note": "\ud800"}, epoch=1)
            s.log_metrics({"loss": 0.5}, epoch=2)
            best = tmp_path / "best.pt"
            best.write_bytes(b"best")
            s.finish(best)
            assert s.state == "done"
            assert s.rejected() == [
                "metrics of epoch 1: 400 metrics of epoch 1: text holds a lone surrogate "
                "(not valid Unicode)"
            ]
    assert epochs_on(hub, model_id) == [0, 2]
    assert any(e["event"] == "record.rejected" for e in logs)
    # The rejected record is kept, shown by status, and makes sync exit non-zero.
    [info] = inspect(find(tmp_path))
    assert info.pending == {"metrics": 0, "checkpoint": 0, "final": 0}
    assert len(info.rejected) == 1 and "epoch 1" in info.rejected[0]
    out = io.StringIO()
    status(tmp_path, out=out)
    assert "rejected by the hub: metrics of epoch 1: 400" in out.getvalue()
    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), out=out) == 1
    assert "1 records the hub rejected are kept" in out.getvalue()


class RefusesFinalWeights(Transport):
    """A hub that answers 400 to the final upload (a session never sends what it refuses)."""

    def __init__(self, inner):
        self.inner = inner

    def send(self, request):
        if request.fields is not None and request.fields.get("type") == "final":
            return Response(400, {"success": False, "message": "the weights are damaged"})
        return self.inner.send(request)


def test_final_weights_the_hub_refuses_are_kept_and_finish_names_the_answer(hub, tmp_path):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=RefusesFinalWeights(InMemoryTransport(hub, KEY)),
                       config=FAST, outbox_dir=tmp_path)
    s.start()
    s.log_metrics({"loss": 1.0})
    best = tmp_path / "best.pt"
    best.write_bytes(b"best")
    expected = r"final weights \(400\).*the weights are damaged.*1 rejected record kept"
    with pytest.raises(hubfsm.HubError, match=expected):
        s.finish(best, map50_95=0.5)
    s.close()
    assert epochs_on(hub, model_id) == [0]
    [info] = inspect(find(tmp_path))
    assert [r.split(":")[0] for r in info.rejected] == ["final weights of epoch 0"]
    # The refused weights stay on disk with their record.
    assert len(list((info.directory / "files").glob("best-*.pt"))) == 1


def test_status_and_sync_leave_an_outbox_in_use_alone(hub, tmp_path):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                       outbox_dir=tmp_path)
    try:
        s.start()
        s.log_metrics({"loss": 1.0})
        out = io.StringIO()
        assert status(tmp_path, out=out) == 0  # no lock error: it only reads
        assert re.search(rf"^{model_id}( +\S+){{5}} +in use ", out.getvalue(), re.M), out.getvalue()
        out = io.StringIO()
        sync(tmp_path, transport=InMemoryTransport(hub, KEY), out=out)
        assert "skipped, a running session holds it" in out.getvalue() or (
            "nothing to send" in out.getvalue()
        )
        s.log_metrics({"loss": 0.5})  # the session still owns its outbox and journal
        assert s.flush(timeout=5)
    finally:
        s.close()
    assert epochs_on(hub, model_id) == [0, 1]
