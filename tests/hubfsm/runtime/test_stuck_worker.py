"""The worker inside one slow request (a hub that drips its answer): the trainer's calls stay bounded.

A real HTTP request may hold the worker for up to its total deadline (120 s by default).
The trainer's calls that wait for the worker (opening, ``start``, ``flush``, ``finish``)
must then keep their own bounds and raise only what they document, never a bare
``TimeoutError`` from the worker's hand-over.
"""

import threading

import pytest

import hubfsm
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


class Stuck:
    """A transport whose metrics uploads hang until released, as a dripping hub's do."""

    def __init__(self, inner):
        self.inner = inner
        self.release = threading.Event()
        self.held = threading.Event()

    def send(self, request):
        if request.method == "POST" and (request.json or {}).get("type") == "metrics":
            self.held.set()
            self.release.wait(60.0)
        return self.inner.send(request)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.slow  # start() gives the stuck worker its 10 s before going on
def test_a_worker_stuck_in_a_resent_request_bounds_every_trainer_call(hub, tmp_path):
    model_id = new_model(hub)
    with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                        outbox_dir=tmp_path, offline=True) as s:
        s.log_metrics({"loss": 1.0}, epoch=0)  # left for the next session to send first
    link = Stuck(InMemoryTransport(hub, KEY))
    try:
        # Opening sends the kept epoch at once, and the hub holds that request.
        s = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path,
                           open_timeout=5.0)
        assert link.held.wait(10.0)
        s.start()  # goes on: Start waits in the inbox ahead of every later call
        s.log_metrics({"loss": 0.5}, epoch=1)
        assert s.flush(timeout=0.2) is False
        best = tmp_path / "best.pt"
        best.write_bytes(b"best" * 100)
        with pytest.raises(hubfsm.DeliveryIncomplete, match="inside a request"):
            s.finish(best, map50_95=0.5, timeout=1.0)
        assert s.pending()["final"] == 1
    finally:
        link.release.set()
    s.close(timeout=10.0)
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0, 1]
    assert hub.record(model_id)["status"] == "trained"


class StuckFinal(Stuck):
    """A transport whose final upload hangs, as a hub that drips its answer to it does."""

    def send(self, request):
        if (request.fields or {}).get("type") == "final":
            self.held.set()
            self.release.wait(60.0)
        return self.inner.send(request)


@pytest.mark.slow  # finish() waits out its timeout
def test_finish_keeps_its_timeout_when_the_final_upload_itself_hangs(hub, tmp_path):
    import time

    model_id = new_model(hub)
    link = StuckFinal(InMemoryTransport(hub, KEY))
    try:
        s = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
        s.start()
        s.log_metrics({"loss": 1.0}, epoch=0)
        best = tmp_path / "best.pt"
        best.write_bytes(b"best" * 100)
        started = time.monotonic()
        with pytest.raises(hubfsm.DeliveryIncomplete):
            s.finish(best, map50_95=0.5, timeout=6.0)
        waited = time.monotonic() - started
        assert link.held.is_set()
        # The worker sits in the upload and cannot see the deadline; finish still can.
        assert 6.0 <= waited < 7.5, waited
    finally:
        link.release.set()
    s.close(timeout=10.0)
    assert hub.record(model_id)["status"] == "trained"


def test_a_state_reached_before_a_slow_request_is_seen_while_it_lasts(hub, tmp_path):
    # Callers' waits test the core where the worker leaves it whole; inside a request
    # is such a place, or a state reached just before a slow request went unseen.
    model_id = new_model(hub)
    link = Stuck(InMemoryTransport(hub, KEY))
    s = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
    try:
        s.start()
        s.log_metrics({"loss": 1.0}, epoch=0)
        s._shell.wake_up()
        assert link.held.wait(10.0)
        assert s._shell.wait_for(lambda c: c.state == "training" and c.pending()["metrics"], 5.0)
    finally:
        link.release.set()
    s.close(timeout=10.0)
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0]
