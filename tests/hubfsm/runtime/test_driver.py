import pytest

from hubfsm.core.values import EpochEnded, FinishRequested
from hubfsm.durable.handover import stamp_of
from hubfsm.durable.journal_scan import replay
from hubfsm.errors import HubfsmError
from hubfsm.runtime.shells import VirtualClock
from tests.support import FAST, KEY, inline_session, new_model
from transports.memory import InMemoryTransport


def test_trainer_calls_wait_for_time_to_pass_then_go_out_in_order(hub, tmp_path):
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), clock=clock,
                              config=FAST, outbox_dir=tmp_path)
    s.start()
    for epoch in range(3):
        s.log_metrics({"loss": 1.0 / (epoch + 1)})
    # Nothing has been taken in: the calls wait in the inbox (and the journal).
    assert len(shell.inbox) == 3 and hub.metrics(model_id) == []
    assert [seq for seq, _ in replay(s.outbox_dir / "journal", after=0)] == [1, 2, 3]
    shell.run_until(clock() + 1.0)
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0, 1, 2]
    # Taken in and filed: the journal starts over at the next call, or at the latest
    # when it is closed.
    s.close()
    assert replay(s.outbox_dir / "journal", after=0) == []


def test_an_event_that_cannot_be_applied_fails_its_call_and_the_driver_goes_on(hub, tmp_path):
    model_id = new_model(hub)
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                              outbox_dir=tmp_path / "ob")
    s.start()
    best = tmp_path / "best.pt"
    best.write_bytes(b"best")
    stale = FinishRequested(str(best), 0, 0.5, stamp_of(best), 60.0)
    best.write_bytes(b"rewritten since")
    with pytest.raises(HubfsmError, match="changed while it was being read"):
        shell.call(stale)
    shell.call(EpochEnded(0, {"loss": 0.5}))
    assert s.flush(timeout=10.0)
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0]
    s.close()
