import pytest

from hubfsm.core.values import Barrier, EpochEnded, FileStamp, FinishRequested
from hubfsm.durable.inbox import Inbox
from hubfsm.durable.journal import Journal
from hubfsm.durable.journal_scan import replay


def final(epoch=3):
    return FinishRequested("best.pt", epoch, 0.5, FileStamp(7, 1, 2), 60.0)


def test_without_a_journal_calls_wait_in_memory_in_order():
    inbox = Inbox()
    inbox.put_metrics(0, {"loss": 0.5, "count": 3})
    inbox.put(Barrier())
    inbox.put(final())
    assert len(inbox) == 3 and inbox.queued_epochs() == [0] and inbox.finish_queued()
    assert list(iter(inbox.take, None)) == [
        (0, EpochEnded(0, {"loss": 0.5, "count": 3})),
        (0, Barrier()),
        (0, final()),
    ]
    assert inbox.take() is None and not inbox.finish_queued()


def test_an_uncarriable_value_is_refused_with_or_without_a_journal(tmp_path):
    bare, journaled = Inbox(), Inbox()
    journaled.open_journal(Journal, tmp_path / "j", seq=0)
    for inbox in (bare, journaled):
        inbox.put_metrics(0, {"loss": 0.5})
        with pytest.raises(TypeError):
            inbox.put_metrics(1, {"loss": object()})
        assert inbox.queued_epochs() == [0]


def test_with_a_journal_what_a_kill_must_not_lose_is_journaled_first(tmp_path):
    inbox = Inbox()
    inbox.open_journal(Journal, tmp_path / "j", seq=4)
    inbox.put_metrics(0, {"loss": 0.5})
    inbox.put_metrics(1, {"loss": 0.25})  # a values record
    inbox.put(Barrier())  # the session's own: not journaled
    inbox.put(final(1))
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [5, 6, 7]
    assert inbox.queued_epochs() == [0, 1] and inbox.finish_queued()
    assert list(iter(inbox.take, None)) == [
        (5, EpochEnded(0, {"loss": 0.5})),
        (6, EpochEnded(1, {"loss": 0.25})),
        (0, Barrier()),
        (7, final(1)),
    ]
    inbox.put_metrics(2, {"loss": 0.125})
    inbox.clear()  # a death: memory is gone, the journal keeps the call
    assert len(inbox) == 0 and replay(tmp_path / "j", after=7) == [(8, ("m", 2, {"loss": 0.125}))]
