import random
import threading
import time

import pytest
import structlog

import hubfsm
from hubfsm.transport import Response, TransportError
from tests.support import FAST, KEY, new_model
from transports.faults import FaultInjectingTransport, FaultMix
from transports.memory import InMemoryTransport


def weights(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_a_whole_session_on_the_in_memory_hub(hub, tmp_path):
    model_id = new_model(hub)
    with structlog.testing.capture_logs() as logs:
        with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST) as s:
            assert s.state == "training"
            for epoch in range(5):
                s.log_metrics({"loss": 1.0 / (epoch + 1), "map": epoch / 10})
                s.save_checkpoint(weights(tmp_path, "last.pt", b"w%d" % epoch), epoch=epoch)
            best = weights(tmp_path, "best.pt", b"best weights")
            s.finish(best, map50_95=0.42)
            assert s.state == "done"
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0, 1, 2, 3, 4]
    record = hub.record(model_id)
    assert record["status"] == "trained" and record["has_best_weights"]
    finals = [u for u in hub.audit().uploads if u.type == "final"]
    import hashlib
    assert finals[0].sha256 == hashlib.sha256(b"best weights").hexdigest()
    assert any(e["event"] == "session.transition" and e["dest"] == "done" for e in logs)
    assert all(KEY not in repr(e) for e in logs)


def test_create_from_a_local_file(hub, tmp_path):
    s = hubfsm.Session("yolov8n.yaml", transport=InMemoryTransport(hub, KEY), config=FAST,
                       train_args={"data": "coco8.yaml", "epochs": 3})
    try:
        assert s.state == "created" and len(s.model_id) == 20
        assert hub.record(s.model_id)["epochs"] == 3
    finally:
        s.close()


def test_an_exception_in_the_block_leaves_the_session_resumable(hub):
    model_id = new_model(hub)
    with pytest.raises(KeyError):
        with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST) as s:
            s.log_metrics({"loss": 1.0})
            raise KeyError("boom")
    assert s.state == "resumable"
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0]


def test_illegal_calls_name_the_state_and_the_event(hub, tmp_path):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST)
    try:
        with pytest.raises(hubfsm.IllegalEventError, match="epoch_end.*loaded"):
            s.log_metrics({"loss": 1.0})
        s.start()
        with pytest.raises(hubfsm.IllegalEventError):
            s.start()
    finally:
        s.close()


def test_a_missing_model_is_a_clear_error(hub):
    with pytest.raises(hubfsm.ModelNotFoundError, match="not found"):
        hubfsm.Session("Z" * 20, transport=InMemoryTransport(hub, KEY), config=FAST)


def test_a_wrong_key_is_refused_and_never_shown(hub):
    model_id = new_model(hub)
    wrong = "w" * 42
    with pytest.raises(hubfsm.AuthError) as info:
        hubfsm.Session(model_id, transport=InMemoryTransport(hub, wrong), config=FAST)
    assert wrong not in str(info.value) and KEY not in str(info.value)


def test_an_unreachable_hub_times_out_the_open(hub):
    down = FaultInjectingTransport(InMemoryTransport(hub, KEY), random.Random(0),
                                   FaultMix(connection_error=1.0))
    with pytest.raises(hubfsm.HubUnavailableError, match="connect"):
        hubfsm.Session(new_model(hub), transport=down, config=FAST, open_timeout=0.5)


def test_a_revoked_key_mid_run_stops_sending_and_keeps_the_records(hub):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST)
    s.start()
    hub.revoke_key(KEY)
    s.log_metrics({"loss": 1.0})
    assert not s.flush(timeout=5.0)  # ends at the refusal, with the epoch kept
    assert s.state == "refused"
    assert isinstance(s.error, hubfsm.AuthError)
    s.log_metrics({"loss": 0.5})  # still accepted
    s.flush(timeout=1.0)
    assert s.pending()["metrics"] == 2
    with pytest.raises(hubfsm.AuthError, match=r"\(401\).*2 epochs of metrics kept in"):
        s.close(timeout=0.1)


class _Gated(InMemoryTransport):
    """Every request hangs while ``gate`` is clear (at most 5 s)."""

    def __init__(self, hub, gate):
        super().__init__(hub, KEY)
        self.gate = gate

    def send(self, request):
        self.gate.wait(5)
        return super().send(request)


def test_log_metrics_copies_the_dict_and_never_blocks(hub):
    model_id = new_model(hub)
    gate = threading.Event()
    gate.set()
    s = hubfsm.Session(model_id, transport=_Gated(hub, gate), config=FAST)
    gate.clear()  # every request now hangs until the gate opens
    s.start()
    metrics = {"loss": 1.0}
    for epoch in range(100):
        s.log_metrics(metrics, epoch=epoch)  # returns while the worker is stuck
        metrics["loss"] = -1.0
    gate.set()
    assert s.flush(timeout=5.0)
    assert s.stats()["epochs_acknowledged"] == 100
    assert hub.metrics(model_id)[0]["metrics"] == {"loss": 1.0}
    s.close()


class _Scalar:
    """A numpy-like scalar: not a float, but ``item()`` gives one."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


@pytest.mark.parametrize("journal", [True, False])
def test_queued_epochs_count_as_pending_whatever_mapping_they_came_in(hub, journal):
    import collections
    import types

    model_id = new_model(hub)
    gate = threading.Event()
    gate.set()
    s = hubfsm.Session(model_id, transport=_Gated(hub, gate), config=FAST, journal=journal)
    gate.clear()
    s.start()
    given = [
        {"loss": 0.5},
        collections.OrderedDict(loss=1.5),
        types.MappingProxyType({"loss": 2.5}),
        {"loss": _Scalar(3.5)},
    ]
    for metrics in given:
        s.log_metrics(metrics)
    assert s.pending()["metrics"] == 4
    gate.set()
    assert s.flush(timeout=5.0)
    assert s.stats()["epochs_acknowledged"] == 4
    assert [m["metrics"] for m in hub.metrics(model_id)] == [
        {"loss": 0.5}, {"loss": 1.5}, {"loss": 2.5}, {"loss": 3.5}
    ]
    s.close()


def test_closing_while_the_worker_is_stuck_in_a_request_loses_no_epoch(hub):
    model_id = new_model(hub)
    gate = threading.Event()
    gate.set()
    s = hubfsm.Session(model_id, transport=_Gated(hub, gate), config=FAST)
    gate.clear()
    s.start()  # its heartbeat hangs in the gated transport
    workers = [t for t in threading.enumerate() if t.name == "hubfsm-worker"]
    for epoch in range(3):
        s.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    with structlog.testing.capture_logs() as logs:
        s.close(timeout=0)  # gives up on the worker, which is still inside its request
        gate.set()  # the request ends after the session has closed
        for worker in workers:
            worker.join(5)
    assert not any(worker.is_alive() for worker in workers)
    assert not [e for e in logs if e["event"] == "session.event_failed"]
    again = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST)
    again.start()
    again.flush(timeout=5)
    assert [m["metrics"] for m in hub.metrics(model_id)] == [
        {"loss": 1.0}, {"loss": 0.5}, {"loss": 1.0 / 3}
    ]
    again.close()


@pytest.mark.parametrize("journal", [True, False])
@pytest.mark.parametrize(
    ("bad", "named"), [({"loss": 0.9, 7: 1.0}, "7"), ({"big": 10**5000}, "'big'")]
)
def test_log_metrics_refuses_what_the_wire_cannot_carry_and_keeps_nothing(
    hub, journal, bad, named
):
    model_id = new_model(hub)
    with hubfsm.Session(
        model_id, transport=InMemoryTransport(hub, KEY), config=FAST, journal=journal
    ) as s:
        s.log_metrics({"loss": 0.5})  # the journal's usual names are set
        with pytest.raises(TypeError, match=named):
            s.log_metrics(bad)
        s.log_metrics({"loss": float("nan")})  # the epoch the refused call did not take
        assert s.flush(timeout=5.0)
        assert s.stats()["epochs_acknowledged"] == 2
    assert [(m["epoch"], m["metrics"]) for m in hub.metrics(model_id)] == [
        (0, {"loss": 0.5}), (1, {"loss": None})
    ]


def test_waiting_to_start_and_training_follow_the_machine(hub, tmp_path):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST)
    seen = [(s.state, s.waiting_to_start, s.training)]
    s.start()
    seen.append((s.state, s.waiting_to_start, s.training))
    s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.1)
    seen.append((s.state, s.waiting_to_start, s.training))
    s.close()
    assert seen == [("loaded", True, False), ("training", False, True), ("done", False, False)]
    null = hubfsm.NullSession(1)
    assert (null.waiting_to_start, null.training) == (False, False)


class _SlowToBuild:
    """A dialect that takes a while to build a metrics request (a busy machine)."""

    def __init__(self, dialect, started):
        self._dialect = dialect
        self._started = started

    def __getattr__(self, name):
        return getattr(self._dialect, name)

    def metrics(self, *args, **kwargs):
        self._started.set()
        threading.Event().wait(0.3)
        return self._dialect.metrics(*args, **kwargs)


def test_flush_is_not_fooled_by_an_epoch_between_its_queue_and_its_request(hub):
    # The worker takes an epoch off its queue, then builds its request: a caller that
    # read the core in between saw nothing pending, and flush said all was sent.
    model_id = new_model(hub)
    with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST) as s:
        started = threading.Event()
        schedule = s._core.schedule
        schedule.dialect = _SlowToBuild(schedule.dialect, started)
        s.log_metrics({"loss": 1.0})
        # The worker takes the epoch and the flush's barrier in together, then builds.
        assert s.flush(timeout=10.0)
        assert started.is_set()
        assert [row["epoch"] for row in hub.metrics(model_id)] == [0]


class _Lost(InMemoryTransport):
    """Answers until ``lost`` is set, then refuses every connection, as a hub gone away."""

    def __init__(self, hub):
        super().__init__(hub, KEY)
        self.lost = threading.Event()

    def send(self, request):
        if self.lost.is_set():
            raise TransportError("refused", "127.0.0.1:9 refused the connection")
        return super().send(request)


def test_closing_after_finish_gave_up_on_a_lost_hub_is_prompt_and_keeps_the_final(
    hub, tmp_path
):
    model_id = new_model(hub)
    link = _Lost(hub)
    s = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
    assert s.exit_timeout == 10.0  # the default, which closing used to wait out again
    s.start()
    s.log_metrics({"loss": 1.0}, epoch=0)
    assert s.flush(timeout=5.0)
    link.lost.set()
    s.log_metrics({"loss": 0.5}, epoch=1)
    with pytest.raises(hubfsm.DeliveryIncomplete):
        s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.5, timeout=0.5)
    started = time.monotonic()
    s.close()
    took = time.monotonic() - started
    assert took < 3.0, f"close waited {took:.1f}s more for a hub finish gave up on"
    assert s.pending() == {"metrics": 1, "checkpoint": 0, "final": 1}
    # Nothing is lost: the next session of the model delivers what this one kept.
    again = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                           outbox_dir=tmp_path)
    again.finish_pending(timeout=10.0)
    again.close()
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0, 1]
    record = hub.record(model_id)
    assert record["status"] == "trained" and record["map"] == pytest.approx(0.5)


class _Busy(InMemoryTransport):
    """Answers every upload 429 until ``release`` is set: a busy hub, not a lost one."""

    def __init__(self, hub):
        super().__init__(hub, KEY)
        self.release = threading.Event()

    def send(self, request):
        kind = (request.fields or request.json or {}).get("type")
        if kind in ("metrics", "final") and not self.release.is_set():
            return Response(429, {"success": False, "message": "busy"}, retry_after=0.05)
        return super().send(request)


def test_closing_after_finish_gave_up_keeps_exit_timeout_for_a_hub_that_answers(
    hub, tmp_path
):
    # The grace is for a hub that does not answer. One that answers, only not yet with
    # the uploads, keeps the whole exit_timeout for what closing still sends (an epoch),
    # and closing ends once nothing is left that it would send (the final weights wait
    # for a later session once finish() gave up on them).
    model_id = new_model(hub)
    link = _Busy(hub)
    s = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
    s.start()
    s.log_metrics({"loss": 1.0}, epoch=0)
    with pytest.raises(hubfsm.DeliveryIncomplete):
        s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.5, timeout=0.5)
    assert s.pending() == {"metrics": 1, "checkpoint": 0, "final": 1}
    threading.Timer(2.0, link.release.set).start()
    started = time.monotonic()
    s.close()
    took = time.monotonic() - started
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0]
    assert 1.9 < took < 5.0, f"close took {took:.1f}s"
    assert s.pending() == {"metrics": 0, "checkpoint": 0, "final": 1}
    again = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
    again.finish_pending(timeout=10.0)
    again.close()
    assert hub.record(model_id)["status"] == "trained"


def test_finish_judges_the_upload_by_one_reading_of_the_state(hub, tmp_path, monkeypatch):
    # The worker sets the new state, then its traits. A finish() that read "settled" from
    # the one and "terminal" from the other, caught between the two, took the
    # acknowledged final upload for an incomplete one: DeliveryIncomplete "(state done)".
    # Here the worker dwells between the two longer than finish() waits between looks.
    import hubfsm.core.machine as machine_module

    dwelt = threading.Event()

    class Dwelling(dict):
        def __getitem__(self, state):
            if state == "done" and threading.current_thread() is not threading.main_thread():
                if not dwelt.is_set():
                    dwelt.set()
                    time.sleep(1.5)
            return super().__getitem__(state)

    monkeypatch.setattr(machine_module, "TRAITS", Dwelling(machine_module.TRAITS))
    model_id = new_model(hub)
    with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST) as s:
        s.log_metrics({"loss": 1.0})
        s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.5)
        assert s.state == "done"
    assert dwelt.is_set()
    assert hub.record(model_id)["status"] == "trained"
