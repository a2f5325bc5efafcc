"""A disk that refuses writes, as the driver and the session meet it.

Each fault is an ``OSError(ENOSPC)`` from the outbox's own methods (``apply``,
``snapshot``) or from the journal's allocation: the same calls a simulated disk makes
fail. ``test_full_disk.py`` runs a trainer on a real full file system.
"""

import errno
import functools
import hashlib
import os
import random

import attrs
import structlog

from hubfsm.core.values import OpOpened
from hubfsm.durable.journal import Journal
from hubfsm.durable.journal_scan import replay
from hubfsm.durable.outbox import Outbox
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.shells import VirtualClock
from tests.support import FAST, KEY, inline_session, new_model
from transports.faults import FaultInjectingTransport, FaultMix
from transports.memory import InMemoryTransport


def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Switch:
    """Makes one method of an object fail as a full disk does, until turned off."""

    def __init__(self, obj, name):
        self.real = getattr(obj, name)
        self.on = False
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        if self.on:
            full()
        return self.real(*args, **kwargs)


def cut_off(hub, clock, root):
    """A started session whose hub goes away once it is open: everything stays pending."""
    model_id = new_model(hub)
    link = FaultInjectingTransport(InMemoryTransport(hub, KEY), random.Random(0), FaultMix())
    s, shell = inline_session(model_id, transport=link, clock=clock, config=FAST,
                              outbox_dir=root)
    s.start()
    link.mix = FaultMix(connection_error=1.0)
    return model_id, s, shell, link


def outbox_epochs(root, model_id):
    ob = Outbox.open(model_id, root)
    try:
        saved = ob.load()
        seq = ob.journal_seq
    finally:
        ob.close()
    epochs = {epoch for epoch, _ in saved.metrics}
    for op in saved.ops:
        if op.channel == "metrics":
            epochs.update(op.payload)
    return sorted(epochs), seq


def test_a_failed_outbox_write_is_kept_and_written_first_once_the_disk_has_room(hub, tmp_path):
    clock = VirtualClock(1000.0)
    root = tmp_path / "ob"
    model_id, s, shell, link = cut_off(hub, clock, root)
    apply = Switch(s._durability.outbox, "apply")
    for epoch in range(3):
        s.log_metrics({"loss": 1.0}, epoch=epoch)
    shell.run_until(clock() + 1.0)
    apply.on = True  # the disk is full
    with structlog.testing.capture_logs() as logs:
        for epoch in range(3, 8):
            s.log_metrics({"loss": 0.5}, epoch=epoch)
            shell.run_until(clock() + 1.0)
    assert [e["event"] for e in logs].count("outbox.write_failed") == 1
    # Not consumed: the journal still holds every call the outbox does not have.
    written = s._durability.outbox.journal_seq
    assert [seq for seq, _ in replay(root / model_id / "journal", after=written)] == [4, 5, 6, 7, 8]
    apply.on = False  # room again
    with structlog.testing.capture_logs() as logs:
        for epoch in range(8, 10):
            s.log_metrics({"loss": 0.25}, epoch=epoch)
        shell.run_until(clock() + 1.0)
    # At the level the failure's error shows by default: a user who was told the disk
    # refused writes is told when it takes them again.
    assert ("outbox.write_recovered", "warning") in [(e["event"], e["log_level"]) for e in logs]
    s.close(timeout=0.0)
    assert outbox_epochs(root, model_id) == (list(range(10)), 10)


def test_close_counts_what_is_on_disk_in_the_outbox_and_its_journal(hub, tmp_path, capsys):
    clock = VirtualClock(1000.0)
    root = tmp_path / "ob"
    model_id, s, shell, link = cut_off(hub, clock, root)
    apply = Switch(s._durability.outbox, "apply")
    for epoch in range(4):
        s.log_metrics({"loss": 1.0}, epoch=epoch)
    shell.run_until(clock() + 1.0)
    apply.on = True
    for epoch in range(4, 7):
        s.log_metrics({"loss": 0.5}, epoch=epoch)
    s.close(timeout=0.0)
    # Three epochs did not reach the outbox, but the journal beside it holds them: on
    # disk, and so kept, not lost.
    assert s.pending()["metrics"] == 7 and s.kept["metrics"] == 7
    err = capsys.readouterr().err
    assert "7 epochs of metrics not on the hub yet; kept in" in err
    assert "could not be written" not in err
    assert outbox_epochs(root, model_id)[0] == [0, 1, 2, 3]
    # The journal still has the other three: the next session takes them back.
    link.mix = FaultMix()
    again, shell = inline_session(model_id, transport=link, clock=clock, config=FAST,
                                  outbox_dir=root)
    link.mix = FaultMix(connection_error=1.0)
    again.close(timeout=0.0)
    assert outbox_epochs(root, model_id)[0] == list(range(7))


def test_close_names_what_no_disk_kept_when_there_is_no_journal(hub, tmp_path, capsys):
    clock = VirtualClock(1000.0)
    root = tmp_path / "ob"
    model_id = new_model(hub)
    link = FaultInjectingTransport(InMemoryTransport(hub, KEY), random.Random(0), FaultMix())
    s, shell = inline_session(model_id, transport=link, clock=clock, config=FAST,
                              outbox_dir=root, journal=False)
    s.start()
    link.mix = FaultMix(connection_error=1.0)
    apply = Switch(s._durability.outbox, "apply")
    for epoch in range(4):
        s.log_metrics({"loss": 1.0}, epoch=epoch)
    shell.run_until(clock() + 1.0)
    apply.on = True
    for epoch in range(4, 7):
        s.log_metrics({"loss": 0.5}, epoch=epoch)
    s.close(timeout=0.0)
    assert s.pending()["metrics"] == 7 and s.kept["metrics"] == 4
    err = capsys.readouterr().err
    assert "4 epochs of metrics not on the hub yet; kept in" in err
    assert "3 epochs of metrics could not be written there" in err
    assert outbox_epochs(root, model_id)[0] == [0, 1, 2, 3]


def rename_save(path, data):
    """Save weights the safe way: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_newer_checkpoint_offer_releases_the_older_held_link_at_once(hub, tmp_path):
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    root = tmp_path / "ob"
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), clock=clock,
                              config=FAST, outbox_dir=root)
    s.start()
    last = tmp_path / "last.pt"
    files = root / model_id / "files"
    for epoch in range(20):  # the worker is busy: nothing is taken in meanwhile
        rename_save(last, b"epoch %d " % epoch * 4096)
        s.save_checkpoint(last, epoch=epoch)
        assert len(list(files.glob(".held-*"))) == 1
    shell.run_until(clock() + 1.0)
    assert list(files.glob(".held-*")) == []
    info = hub.weights_info(model_id, "last")
    assert info is not None and info.sha256 == hashlib.sha256(last.read_bytes()).hexdigest()
    s.close()


def test_a_checkpoint_with_no_room_is_said_once_and_training_goes_on(hub, tmp_path):
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), clock=clock,
                              config=FAST, outbox_dir=tmp_path / "ob")
    s.start()
    snapshot = Switch(s._durability.outbox, "snapshot")
    snapshot.on = True
    last = tmp_path / "last.pt"
    last.write_bytes(b"w" * 1000)
    with structlog.testing.capture_logs() as logs:
        s.save_checkpoint(last, epoch=0)
        s.log_metrics({"loss": 1.0}, epoch=0)
        shell.run_until(clock() + 1.0)
    assert [e["event"] for e in logs if e["log_level"] != "info"] == ["checkpoint.not_kept"]
    assert s._driver.errors == []
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0]
    assert hub.weights_info(model_id, "last") is None
    assert list((tmp_path / "ob" / model_id / "files").iterdir()) == []
    # The final weights cannot be copied either: finish uploads the trainer's file.
    best = tmp_path / "best.pt"
    best.write_bytes(b"best" * 500)
    with structlog.testing.capture_logs() as logs:
        s.finish(best, map50_95=0.5, timeout=30.0)
    assert "final.not_kept" in [e["event"] for e in logs]
    assert s.state == "done"
    best_sha = hashlib.sha256(best.read_bytes()).hexdigest()
    assert hub.weights_info(model_id, "best").sha256 == best_sha
    s.close()


def test_a_journal_the_disk_has_no_room_for_leaves_the_session_in_memory(hub, tmp_path):
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    settings = attrs.evolve(
        Settings.resolve(model_id, config=FAST, outbox_dir=tmp_path / "ob"), at_exit=False
    )
    parts = build(settings, transport=InMemoryTransport(hub, KEY), clock=clock, inline=True,
                  open_journal=functools.partial(Journal, allocate=full))
    with structlog.testing.capture_logs() as logs:
        s = Session.compose(parts)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["journal.unavailable"]
    assert s._durability.journal is None and s._durability.outbox is not None
    s.start()
    for epoch in range(3):
        s.log_metrics({"loss": 1.0}, epoch=epoch)
    parts.shell.run_until(clock() + 1.0)
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0, 1, 2]
    s.close()


def test_a_change_that_can_never_be_written_is_set_aside_and_wedges_nothing(hub, tmp_path):
    clock = VirtualClock(1000.0)
    root = tmp_path / "ob"
    model_id, s, shell, link = cut_off(hub, clock, root)
    outbox = s._durability.outbox
    real = outbox.apply

    def carries_epoch_2(change):
        if isinstance(change, OpOpened):
            return change.channel == "metrics" and 2 in change.payload
        return getattr(change, "epoch", None) == 2

    def apply(changes, *, journal_seq=None):
        # Not the disk: what carries epoch 2 cannot be encoded, however often it is tried.
        if any(carries_epoch_2(c) for c in changes):
            raise TypeError("cannot encode epoch 2")
        real(changes, journal_seq=journal_seq)

    outbox.apply = apply
    with structlog.testing.capture_logs() as logs:
        for epoch in range(5):
            s.log_metrics({"loss": 1.0}, epoch=epoch)
        shell.run_until(clock() + 1.0)
    dropped = [e for e in logs if e["event"] == "outbox.change_dropped"]
    assert dropped and all("epoch 2" in d["error"] for d in dropped)
    assert "MetricsQueued" in [d["change"] for d in dropped]
    assert s._durability.unwritten == [] and s._durability.write_error is None
    s.close(timeout=0.0)
    # Everything else went in, and the journal is consumed: no retry holds it back.
    assert outbox_epochs(root, model_id) == ([0, 1, 3, 4], 5)


def test_a_run_the_hub_acknowledged_whole_leaves_no_stale_outbox_on_a_full_disk(
    hub, tmp_path, capsys
):
    # The disk fills up as the run ends (the trainer's own best.pt, say) and is still full
    # when the session closes: the hub acknowledged everything, but the outbox could not
    # record so. Its rows are stale: kept, they would be counted as "not on the hub yet",
    # and `hubfsm sync` would try them against a trained model for ever.
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    root = tmp_path / "ob"
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), clock=clock,
                              config=FAST, outbox_dir=root)
    s.start()
    last = tmp_path / "last.pt"
    for epoch in range(3):
        s.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
        last.write_bytes(b"epoch %d " % epoch * 100)
        s.save_checkpoint(last, epoch=epoch)
    apply = Switch(s._durability.outbox, "apply")
    apply.on = True  # before the worker took those calls in: their rows never leave
    best = tmp_path / "best.pt"
    best.write_bytes(b"best" * 500)
    s.finish(best, map50_95=0.5, timeout=30.0)
    assert s.state == "done" and s._durability.unwritten
    s.close()
    assert [m["epoch"] for m in hub.metrics(model_id)] == [0, 1, 2]
    assert "not on the hub yet" not in capsys.readouterr().err
    assert not (root / model_id).exists()


def test_a_rejected_record_stays_even_when_the_disk_lags_an_acknowledged_run(hub, tmp_path):
    # The hub rejected one epoch (kept aside on disk), then the disk filled: the stale
    # rows cannot be told apart from the rejected one without a write, so the outbox
    # stays, with the rejected record for `hubfsm status` and `discard --rejected`.
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    root = tmp_path / "ob"
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), clock=clock,
                              config=FAST, outbox_dir=root)
    s.start()
    s.log_metrics({"note": "\ud800"}, epoch=0)  # the local hub refuses a lone surrogate: 400
    shell.run_until(clock() + 1.0)
    assert len(s.rejected()) == 1
    apply = Switch(s._durability.outbox, "apply")
    apply.on = True
    s.log_metrics({"loss": 0.5}, epoch=1)
    best = tmp_path / "best.pt"
    best.write_bytes(b"best" * 500)
    s.finish(best, map50_95=0.5, timeout=30.0)
    assert s.state == "done" and s._durability.write_error is not None
    s.close()
    assert [m["epoch"] for m in hub.metrics(model_id)] == [1]
    ob = Outbox.open(model_id, root)
    try:
        assert [r.epochs for r in ob.load().rejected] == [(0,)]
    finally:
        ob.close()


def test_checkpoints_not_kept_on_a_full_disk_are_said_once_and_again_when_one_fits(
    hub, tmp_path
):
    clock = VirtualClock(1000.0)
    model_id, s, shell, link = cut_off(hub, clock, tmp_path / "ob")
    snapshot = Switch(s._durability.outbox, "snapshot")
    weights = tmp_path / "last.pt"
    with structlog.testing.capture_logs() as logs:
        for epoch in range(6):
            snapshot.on = epoch < 4  # the disk is full for four epochs
            weights.write_bytes(b"epoch %d" % epoch)
            s.save_checkpoint(weights, epoch=epoch)
            shell.run_until(clock() + 1.0)
    said = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("checkpoint.")]
    # Before, a warning at every epoch the disk stayed full.
    assert said == [
        ("checkpoint.not_kept", "warning"),
        ("checkpoint.still_not_kept", "info"),
        ("checkpoint.still_not_kept", "info"),
        ("checkpoint.still_not_kept", "info"),
        ("checkpoint.kept_again", "warning"),
    ]
    assert [e["not_kept"] for e in logs if e["event"] == "checkpoint.kept_again"] == [4]
    s.close(timeout=0.0)
