"""What the trainer hands the driver: its calls through the inbox, in order, and the weight
files, offered by the trainer and taken by the driver as upload parts."""

import errno
import hashlib
import os
from pathlib import Path

import pytest

from hubfsm.core.values import Barrier, EpochEnded, FileStamp, FinishRequested
from hubfsm.durable.handover import Inbox, stamp_of
from hubfsm.durable.journal import Journal
from hubfsm.durable.journal_scan import replay
from hubfsm.durable.outbox import Outbox

MODEL = "M" * 20


def files_on_an_outbox(tmp_path):
    """A fresh outbox, and the weight files' owner holding offers in it."""
    outbox = Outbox.open(MODEL, tmp_path / "ob")
    files = Inbox().weights
    files.outbox = outbox
    return outbox, files


def held_links(outbox):
    return sorted(p.name for p in outbox.files.iterdir() if p.name.startswith(".held"))


def test_without_an_outbox_the_part_is_the_trainers_file(tmp_path):
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"w" * 1000)
    inbox = Inbox()
    files = inbox.weights
    offer = files.offer_checkpoint(weights, epoch=3, is_best=True)
    assert (offer.path, offer.held, offer.epoch, offer.is_best) == (str(weights), None, 3, True)
    # The offer is queued for the driver in the same call, and taken with its part.
    [taken] = inbox.take_all()
    assert (taken.seq, taken.event, taken.error) == (0, offer, None)
    part = taken.part
    assert part is not None
    assert (part.path, part.name, part.size, part.source) == (
        str(weights),
        "last.pt",
        1000,
        "last.pt",
    )
    assert part.sha256 == hashlib.sha256(b"w" * 1000).hexdigest()


def test_a_file_changed_after_the_offer_gives_no_part(tmp_path):
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"a" * 10)
    files = Inbox().weights
    offer = files.offer_final(weights, epoch=1, map50_95=0.5, timeout=60.0)
    assert len(files.inbox) == 0  # the caller hands the final weights over and waits
    weights.write_bytes(b"b" * 20)
    assert files.take(0, offer) == (0, offer, None, None)


def test_a_missing_file_is_refused_at_the_offer(tmp_path):
    with pytest.raises(FileNotFoundError):
        Inbox().weights.offer_checkpoint(tmp_path / "gone.pt", epoch=0, is_best=False)


def test_a_newer_checkpoint_offer_releases_the_older_held_link(tmp_path):
    outbox, files = files_on_an_outbox(tmp_path)
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"1" * 100)
    first = files.offer_checkpoint(weights, epoch=0, is_best=False)
    assert first.held is not None and first.path == first.held
    assert len(held_links(outbox)) == 1
    replacement = tmp_path / "new.pt"
    replacement.write_bytes(b"2" * 100)
    os.replace(replacement, weights)  # the safe way a trainer writes weights
    second = files.offer_checkpoint(weights, epoch=1, is_best=False)
    assert held_links(outbox) == [os.path.basename(second.held)]
    # The first offer's content went with its link: it is superseded, not misread.
    assert files.take(1, first) == (1, first, None, None)
    part = files.take(2, second).part
    assert part is not None and part.name == "last.pt"
    assert Path(part.path).read_bytes() == b"2" * 100
    assert os.path.dirname(part.path) == str(outbox.files)
    # The link outlives the take until the outbox has the snapshot's record (as the
    # final weights' does): a kill in between leaves recovery the link the journal names.
    assert held_links(outbox) == [os.path.basename(second.held)]
    files.kept()
    assert held_links(outbox) == []
    outbox.close()


def test_the_final_link_outlives_the_take_until_the_outbox_has_it(tmp_path):
    outbox, files = files_on_an_outbox(tmp_path)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"f" * 100)
    offer = files.offer_final(weights, epoch=9, map50_95=0.7, timeout=60.0)
    part = files.take(0, offer).part
    assert part is not None and (part.name, part.source) == ("best.pt", "best.pt")
    # Until the final slot is written, a killed process leaves only the journal's
    # record of the call, which names this link.
    assert held_links(outbox) == [os.path.basename(offer.held)]
    files.kept()
    assert held_links(outbox) == []
    outbox.close()


def test_final_weights_the_outbox_cannot_copy_go_up_from_the_trainers_file(tmp_path, monkeypatch):
    outbox, files = files_on_an_outbox(tmp_path)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"f" * 100)
    offer = files.offer_final(weights, epoch=9, map50_95=0.7, timeout=60.0)
    full = OSError(errno.ENOSPC, "no space left on device")

    def refuse(*args, **kwargs):
        raise full

    monkeypatch.setattr(outbox, "snapshot", refuse)
    taken = files.take(0, offer)
    assert taken.error is full  # the driver says so: a later sync would not have them
    part = taken.part
    assert part is not None and part.path == str(weights)
    assert part.sha256 == hashlib.sha256(b"f" * 100).hexdigest()
    checkpoint = files.offer_checkpoint(weights, epoch=9, is_best=False)
    # A checkpoint is dropped, never fallen back on the trainer's file.
    assert files.take(0, checkpoint) == (0, checkpoint, None, full)
    assert os.path.basename(checkpoint.held) not in held_links(outbox)
    assert stamp_of(weights) == offer.stamp
    outbox.close()


def test_without_an_outbox_final_weights_that_cannot_be_read_have_no_part(tmp_path):
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"f" * 100)
    files = Inbox().weights
    offer = files.offer_final(weights, epoch=9, map50_95=0.7, timeout=60.0)
    weights.unlink()
    taken = files.take(0, offer)
    # Nothing to fall back on: the driver raises the error to the caller of finish.
    assert taken.part is None and isinstance(taken.error, FileNotFoundError)


def test_a_kill_after_the_snapshot_and_before_its_record_leaves_the_checkpoint_to_recovery(
    tmp_path,
):
    from hubfsm.durable.journal import Journal
    from hubfsm.durable.recovery import JOURNAL, fold

    outbox = Outbox.open(MODEL, tmp_path / "ob")
    inbox = Inbox()
    inbox.open_journal(Journal, outbox.directory / JOURNAL, seq=0)
    files = inbox.weights
    files.outbox = outbox
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"epoch three" * 100)
    offer = files.offer_checkpoint(weights, epoch=3, is_best=False)
    # The driver takes the snapshot; the process dies before the outbox records it.
    [taken] = inbox.take_all()
    assert taken.event == offer and taken.part is not None
    newer = tmp_path / "new.pt"
    newer.write_bytes(b"epoch four" * 100)
    os.replace(newer, weights)  # the trainer moves on, the safe way
    inbox.journal.close()
    outbox.close()
    again = Outbox(outbox.directory, MODEL)
    try:
        assert fold(again) == 1
        saved = again.load()
    finally:
        again.close()
    assert saved.checkpoint is not None
    epoch, part, _ = saved.checkpoint
    assert epoch == 3 and Path(part.path).read_bytes() == b"epoch three" * 100


# -- the inbox ---------------------------------------------------------------------


def final(epoch=3):
    return FinishRequested("best.pt", epoch, 0.5, FileStamp(7, 1, 2), 60.0)


def test_without_a_journal_calls_wait_in_memory_in_order():
    inbox = Inbox()
    inbox.put_metrics(0, {"loss": 0.5, "count": 3})
    inbox.put(Barrier())
    inbox.put(final())
    assert len(inbox) == 3 and inbox.queued_epochs() == [0] and inbox.finish_queued()
    assert [(seq, event) for seq, event, *_ in inbox.take_all()] == [
        (0, EpochEnded(0, {"loss": 0.5, "count": 3})),
        (0, Barrier()),
        (0, final()),
    ]
    assert inbox.take_all() == [] and not inbox.finish_queued()


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
    assert [(seq, event) for seq, event, *_ in inbox.take_all()] == [
        (5, EpochEnded(0, {"loss": 0.5})),
        (6, EpochEnded(1, {"loss": 0.25})),
        (0, Barrier()),
        (7, final(1)),
    ]
    inbox.put_metrics(2, {"loss": 0.125})
    inbox.clear()  # a death: memory is gone, the journal keeps the call
    assert len(inbox) == 0 and replay(tmp_path / "j", after=7) == [(8, ("m", 2, {"loss": 0.125}))]
