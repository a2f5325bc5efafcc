"""Recovery is total: a record the wire cannot carry is kept aside, and the rest goes on."""

import collections
import io
import re

import hubfsm
from hubfsm.cli.outboxes import status
from hubfsm.core.values import EpochEnded
from hubfsm.durable.journal import Journal
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.recovery import fold
from hubfsm.durable.survey import survey
from hubfsm.runtime.sync import sync
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


def poisoned_outbox(root, model_id):
    """An outbox whose journal holds what an older version let through, between good epochs."""
    outbox = Outbox.open(model_id, root)
    journal = Journal(outbox.directory / "journal", seq=0, inbox=collections.deque())
    journal.append(EpochEnded(0, {"loss": 0.5}))
    journal.append(EpochEnded(1, {"loss": 0.9, 7: 1.0}))  # type: ignore[dict-item]
    journal.append(EpochEnded(2, {"big": 10**5000}))
    journal.append(EpochEnded(3, {"loss": 0.25}))
    journal.close()
    outbox.close()
    return outbox.directory


def test_fold_keeps_a_poison_record_aside_with_the_reason_and_folds_the_rest(tmp_path, hub):
    directory = poisoned_outbox(tmp_path, new_model(hub))
    outbox = Outbox(directory, directory.name)
    try:
        assert fold(outbox) == 4
        saved = outbox.load()
    finally:
        outbox.close()
    assert [epoch for epoch, _ in saved.metrics] == [0, 3]
    assert [(r.epochs, r.status) for r in saved.rejected] == [((1,), 0), ((2,), 0)]
    assert "metric name 7" in saved.rejected[0].reason
    assert "'big'" in saved.rejected[1].reason and "64 bits" in saved.rejected[1].reason


def test_status_shows_what_is_kept_aside_and_sync_delivers_the_rest(tmp_path, hub):
    model_id = new_model(hub)
    poisoned_outbox(tmp_path, model_id)

    out = io.StringIO()
    assert status(tmp_path, out=out) == 0
    text = out.getvalue()
    assert re.search(rf"^{model_id} +2 +0 +0 +2 ", text, re.M), text
    assert f"model {model_id}: kept aside: metrics of epoch 1: never sent: metric name 7" in text
    assert f"model {model_id}: kept aside: metrics of epoch 2: never sent: metric 'big'" in text

    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), timeout=10, out=out) == 1
    text = out.getvalue()
    assert "Traceback" not in text and "2 records that could not be sent are kept aside" in text
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0, 3]
    (info,) = survey(tmp_path).infos
    assert len(info.kept_aside) == 2 and not any(info.pending.values())


def test_the_next_session_opens_past_a_poison_record(tmp_path, hub):
    model_id = new_model(hub)
    poisoned_outbox(tmp_path, model_id)
    with hubfsm.Session(
        model_id, transport=InMemoryTransport(hub, KEY), config=FAST, outbox_dir=tmp_path
    ) as s:
        s.log_metrics({"loss": 0.125}, epoch=4)
        assert s.flush(timeout=5.0)
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0, 3, 4]


def test_status_counts_the_final_weights_a_journal_holds_when_the_fold_cannot_copy_them(
    tmp_path, hub, monkeypatch
):
    from hubfsm.core.values import CheckpointOffered, FinishRequested
    from hubfsm.durable.handover import stamp_of

    model_id = new_model(hub)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"the final weights")
    outbox = Outbox.open(model_id, tmp_path / "root")
    journal = Journal(outbox.directory / "journal", seq=0, inbox=collections.deque())
    journal.append(EpochEnded(0, {"loss": 0.5}))
    journal.append(CheckpointOffered(str(weights), 0, False, stamp_of(weights)))
    journal.append(FinishRequested(str(weights), 0, 0.5, stamp_of(weights), 60.0))
    journal.close()
    outbox.close()

    # A process killed inside finish() on a full disk: the fold that would copy the
    # weights into the outbox is refused, as the disk refuses it.
    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Outbox, "snapshot", no_room)
    out = io.StringIO()
    assert status(tmp_path / "root", out=out) == 0
    # Before, the journal's records did not count: "0 0 0", as if finish() never ran.
    assert re.search(rf"^{model_id} +1 +0 +1 ", out.getvalue(), re.M), out.getvalue()


def test_a_checkpoint_rewritten_in_place_after_its_offer_is_not_said_to_be_kept(tmp_path, hub):
    from hubfsm.core.values import CheckpointOffered
    from hubfsm.durable.handover import stamp_of
    from hubfsm.durable.recovery import kept_counts

    model_id = new_model(hub)
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"the weights of epoch 0" * 100)
    outbox = Outbox.open(model_id, tmp_path / "root")
    held = outbox.hold(weights)  # the hard link save_checkpoint makes
    journal = Journal(outbox.directory / "journal", seq=0, inbox=collections.deque())
    journal.append(EpochEnded(0, {"loss": 0.5}))
    journal.append(CheckpointOffered(held, 0, True, stamp_of(weights)))
    journal.close()
    # The trainer's next torch.save opens the same file for writing (the link's inode
    # too) and the process is killed mid-write: what was offered is gone.
    weights.open("wb").close()
    # Before, the closing session said "checkpoint not on the hub yet; kept", and
    # status counted it, while sync then had nothing to send and said "all sent".
    assert kept_counts(outbox) == {"metrics": 1, "checkpoint": 0, "final": 0}
    outbox.close()
    (info,) = survey(tmp_path / "root").infos
    assert info.pending == {"metrics": 1, "checkpoint": 0, "final": 0}
