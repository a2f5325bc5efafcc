import fcntl
import os
import subprocess
import threading

import pytest

from hubfsm.core import protocol
from hubfsm.core.values import MetricsQueued, Offered, OpClosed, OpOpened
from hubfsm.durable.handover import stamp_of
from hubfsm.durable.layout import OutboxLockedError
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.survey import find, inspect
from hubfsm.transport import FilePart

MODEL = "M" * 20


def test_changes_round_trip_in_order(tmp_path):
    ob = Outbox.open(MODEL, tmp_path)
    request = protocol.upload_metrics(MODEL, {0: "{}", 1: "{}"}, key="k-1")
    ob.apply([MetricsQueued(0, "{}"), MetricsQueued(1, "{}"), MetricsQueued(2, '{"a": 1}'),
              OpOpened("metrics", request, (0, 1))], journal_seq=7)
    saved = ob.load()
    assert [op.key for op in saved.ops] == ["k-1"]
    assert saved.ops[0].request == request and tuple(saved.ops[0].payload) == (0, 1)
    assert saved.metrics == ((2, '{"a": 1}'),)
    assert ob.journal_seq == 7
    ob.apply([OpClosed("k-1")])
    assert ob.load().ops == ()
    ob.close()


def test_a_second_opener_gets_a_clear_error(tmp_path):
    ob = Outbox.open(MODEL, tmp_path)
    with pytest.raises(OutboxLockedError, match=f"model {MODEL}.*in use"):
        Outbox.open(MODEL, tmp_path)
    other = Outbox.open("N" * 20, tmp_path)  # another model is fine
    ob.close()
    Outbox.open(MODEL, tmp_path).close()
    other.close()


def test_an_opener_between_the_holders_lock_and_its_pid_names_the_holder(tmp_path):
    # Two `hubfsm sync` started at once: the first takes the lock, and the second looks
    # before the first wrote its PID (the file empty, or naming a process long gone).
    child = subprocess.Popen(["true"])
    child.wait()  # its PID names no process now
    directory = tmp_path / MODEL
    directory.mkdir(mode=0o700)
    lock = directory / "lock"
    for left in ("", str(child.pid), "not a pid"):
        lock.write_text(left)
        fd = os.open(lock, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = threading.Timer(0.03, os.pwrite, (fd, f"{os.getpid()}".ljust(12).encode(), 0))
        holder.start()
        try:
            with pytest.raises(OutboxLockedError, match=rf"\(process {os.getpid()}\)"):
                Outbox.open(MODEL, tmp_path)
        finally:
            holder.join()
            os.close(fd)
    # A holder that never writes its PID: after the wait, the message says so.
    lock.write_text(str(child.pid))
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutboxLockedError, match=r"\(process unknown\)"):
            Outbox.open(MODEL, tmp_path)
    finally:
        os.close(fd)


def test_a_snapshot_is_the_file_as_handed_over(tmp_path):
    ob = Outbox.open(MODEL, tmp_path)
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"epoch 1")
    stamp = stamp_of(weights)
    part = ob.snapshot(weights, name="last.pt", stamp=stamp)
    weights.write_bytes(b"epoch 2!")  # the trainer overwrites it afterwards
    assert open(part.path, "rb").read() == b"epoch 1" and part.size == 7
    assert ob.snapshot(weights, name="last.pt", stamp=stamp) is None  # stale offer
    ob.close()


def test_unreferenced_snapshots_are_deleted(tmp_path):
    ob = Outbox.open(MODEL, tmp_path)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a")
    a = ob.snapshot(weights, name="last.pt", stamp=None)
    ob.apply([Offered("checkpoint", (0, a, True))])
    weights.write_bytes(b"b")
    b = ob.snapshot(weights, name="last.pt", stamp=None)
    ob.apply([Offered("checkpoint", (1, b, False))])
    ob.apply([Offered("checkpoint", None)])
    assert not os.path.exists(a.path) and not os.path.exists(b.path)
    ob.close()


def test_snapshots_a_dead_process_left_unrecorded_go_when_the_outbox_is_taken_back(tmp_path):
    # A process killed while the disk refused the outbox's writes: its snapshots were
    # copied, never recorded. They held the disk's room until a later write succeeded,
    # and taking the journal back (a copy of the final weights) needs that room first.
    ob = Outbox.open(MODEL, tmp_path)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a")
    kept = ob.snapshot(weights, name="last.pt", stamp=None)
    ob.apply([Offered("checkpoint", (0, kept, True))])
    weights.write_bytes(b"b")
    unrecorded = ob.snapshot(weights, name="last.pt", stamp=None)
    partial = ob.files / ".incoming-999999"
    partial.write_bytes(b"half a copy")
    held = ob.files / ".held-999999-1"
    held.write_bytes(b"a link the journal names")
    ob.close()
    ob = Outbox.open(MODEL, tmp_path)
    assert not os.path.exists(unrecorded.path) and not partial.exists()
    assert os.path.exists(kept.path) and held.exists()
    assert ob.load().checkpoint[1].path == kept.path
    ob.close()


def test_status_reads_counts_while_in_use(tmp_path):
    ob = Outbox.open(MODEL, tmp_path)
    ob.apply([MetricsQueued(e, "{}") for e in range(3)]
             + [Offered("final", (2, FilePart("best.pt", "x", 1, "0" * 64), 0.5))])
    [info] = inspect(find(tmp_path))
    assert info.model_id == MODEL and info.in_use
    assert info.pending == {"metrics": 3, "checkpoint": 0, "final": 1}
    ob.close()
    assert not inspect(find(tmp_path))[0].in_use
    assert find(tmp_path / MODEL) == [tmp_path / MODEL]


def test_close_removes_an_empty_outbox_only(tmp_path):
    ob = Outbox.open(MODEL, tmp_path)
    ob.apply([MetricsQueued(0, "{}")])
    ob.close(remove=True)
    assert (tmp_path / MODEL).exists()
    ob = Outbox.open(MODEL, tmp_path)
    ob.apply([OpOpened("metrics", protocol.upload_metrics(MODEL, {0: "{}"}, key="k"), (0,)),
              OpClosed("k")])
    ob.close(remove=True)
    assert not (tmp_path / MODEL).exists()


def test_status_counts_what_the_outbox_would_send(tmp_path):
    # Read from outside, an outbox counts what a session loading it would count.
    ob = Outbox.open(MODEL, tmp_path)
    request = protocol.upload_metrics(MODEL, {0: "{}", 1: "{}"}, key="k-1")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    part = ob.snapshot(weights, name="last.pt", stamp=None)
    ob.apply([MetricsQueued(e, "{}") for e in range(4)]
             + [OpOpened("metrics", request, (0, 1)), Offered("checkpoint", (1, part, True))])
    [info] = inspect(find(tmp_path))
    assert info.pending == ob.load().counts() == {"metrics": 4, "checkpoint": 1, "final": 0}
    ob.close()


# -- an outbox knows its hub ------------------------------------------------------------


def test_an_outbox_records_the_hub_it_was_made_for_and_keeps_it(tmp_path):
    from hubfsm.durable.layout import HubRoots
    from hubfsm.durable.survey import survey

    local = HubRoots("http://127.0.0.1:8000", "http://127.0.0.1:8000")
    ob = Outbox.open(MODEL, tmp_path, hub=local)
    assert ob.db.hub == local
    ob.close()
    # A later opener with another hub does not move it: sync decides where it goes.
    ob = Outbox.open(MODEL, tmp_path, hub=HubRoots("https://api.example", "https://example"))
    assert ob.db.hub == local
    ob.close()
    (info,) = survey(tmp_path).infos
    assert info.hub == local


def test_an_outbox_older_than_the_record_gets_the_hub_of_its_next_opener(tmp_path):
    import sqlite3

    from hubfsm.durable.layout import HubRoots
    from hubfsm.durable.survey import survey

    Outbox.open(MODEL, tmp_path).close()
    db = sqlite3.connect(tmp_path / MODEL / "outbox.sqlite3")
    assert db.execute("SELECT value FROM meta WHERE key = 'api_root'").fetchone() is None
    db.close()
    (info,) = survey(tmp_path).infos
    assert info.hub is None
    local = HubRoots("http://127.0.0.1:8000", "http://127.0.0.1:8000")
    Outbox.open(MODEL, tmp_path, hub=local).close()
    (info,) = survey(tmp_path).infos
    assert info.hub == local
