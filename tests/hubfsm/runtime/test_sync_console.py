"""What ``hubfsm sync`` says while the hub it sends to fails: one line lost, one back."""

import io
import threading
import time

import pytest

import hubfsm
from hubfsm.runtime.sync import sync
from hubfsm.transport import Response
from tests.support import FAST, KEY, new_model
from transports.memory import HandlerTransport, InMemoryTransport


def applied(hub, model_id):
    return {e: n for (m, e), n in hub.audit().metrics_applied.items() if m == model_id}


@pytest.mark.slow
def test_sync_says_once_when_the_hub_fails_and_once_when_it_is_back(hub, tmp_path):
    model_id = new_model(hub)
    with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                        outbox_dir=tmp_path, offline=True) as s:
        for epoch in range(3):
            s.log_metrics({"loss": 1.0 / (epoch + 1)})
    inner = InMemoryTransport(hub, KEY).send
    full = threading.Event()
    full.set()

    def hub_with_a_full_disk(request):
        # The model opens (a read), but every write is refused as a full disk refuses it.
        if full.is_set() and request.method == "POST":
            return Response(507, {"success": False, "message": "the hub's disk is full"})
        return inner(request)

    out = io.StringIO()
    codes = []
    worker = threading.Thread(
        target=lambda: codes.append(
            sync(tmp_path, transport=HandlerTransport(hub_with_a_full_disk), timeout=60, out=out)
        )
    )
    worker.start()
    # Before, sync said nothing here until --timeout ran out (600 s by default).
    deadline = time.monotonic() + 20
    while "lost the hub" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    full.clear()
    worker.join(60)
    text = out.getvalue()
    assert codes == [0], text
    (lost,) = [line for line in text.splitlines() if "lost the hub" in line]
    assert "507 the hub's disk is full" in lost and "3 epochs of metrics" in lost
    # Sync is no trainer: nothing "goes on" but the sending.
    assert "training goes on" not in lost
    assert text.count("the hub is back after") == 1, text
    assert "all sent" in text
    assert applied(hub, model_id) == {0: 1, 1: 1, 2: 1}
