"""A disk that refuses a write (ENOSPC, EIO): what the outbox and the journal do.

The faults are made here at the lowest layer that meets them: a copy whose write fails
halfway, a database held to its size by SQLite's page limit, a journal whose blocks
cannot be allocated. ``tests/hubfsm/runtime/test_full_disk.py`` runs the same on a
real full file system.
"""

import collections
import errno
import functools
import hashlib
import os
import sqlite3

import pytest
import structlog

from hubfsm.core.values import EpochEnded, MetricsQueued
from hubfsm.digest import sha256_chunks
from hubfsm.durable import outbox as outbox_module
from hubfsm.durable.handover import Inbox, stamp_of
from hubfsm.durable.journal import Journal
from hubfsm.durable.journal_format import INITIAL_SIZE
from hubfsm.durable.journal_scan import replay
from hubfsm.durable.layout import OutboxDamaged
from hubfsm.durable.outbox import Outbox

MODEL = "M" * 20


def failing_copy(after_bytes, code=errno.ENOSPC):
    """A copy that writes ``after_bytes`` of the file, then fails as a full disk does."""

    def copy(source, copy_to=None):
        written = 0
        for chunk in source:
            if written + len(chunk) > after_bytes:
                copy_to.write(chunk[: after_bytes - written])
                copy_to.flush()
                raise OSError(code, os.strerror(code))
            copy_to.write(chunk)
            written += len(chunk)
        return sha256_chunks(iter(()))

    return copy


def leftovers(ob):
    return sorted(p.name for p in ob.files.iterdir() if p.name.startswith(".incoming"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_copy_the_disk_refuses_leaves_no_partial_file(tmp_path, monkeypatch, code):
    ob = Outbox.open(MODEL, tmp_path / "ob")
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"w" * 300_000)
    monkeypatch.setattr(outbox_module, "sha256_chunks", failing_copy(100_000, code))
    with pytest.raises(OSError) as raised:
        ob.snapshot(weights, name="last.pt", stamp=stamp_of(weights))
    assert raised.value.errno == code
    assert leftovers(ob) == [] and list(ob.files.iterdir()) == []
    ob.close()


def test_with_no_room_for_a_copy_the_held_link_becomes_the_snapshot(tmp_path, monkeypatch):
    ob = Outbox.open(MODEL, tmp_path / "ob")
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"handed over" * 10_000)
    stamp = stamp_of(weights)
    held = ob.hold(weights)
    assert held is not None
    monkeypatch.setattr(outbox_module, "sha256_chunks", failing_copy(4096))
    with structlog.testing.capture_logs() as logs:
        part = ob.snapshot(held, name="last.pt", stamp=stamp)
    assert part is not None
    assert part.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert part.size == weights.stat().st_size
    # A second name, not a copy: the snapshot is the same file, and the link stays until
    # its owner lets go of it once the outbox records the snapshot.
    assert os.path.samefile(part.path, weights) and os.path.samefile(held, weights)
    ob.release(held)
    assert not os.path.exists(held) and os.path.samefile(part.path, weights)
    assert leftovers(ob) == []
    assert [e["event"] for e in logs] == ["snapshot.held_kept"]
    ob.close()


def test_a_held_link_a_newer_offer_released_is_superseded_not_an_error(tmp_path):
    ob = Outbox.open(MODEL, tmp_path / "ob")
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"old")
    stamp = stamp_of(weights)
    held = ob.hold(weights)
    ob.release(held)
    assert ob.snapshot(held, name="last.pt", stamp=stamp) is None
    assert list(ob.files.iterdir()) == []
    # Only the outbox's own links are released: anything else stays.
    ob.release(str(weights))
    assert weights.exists()
    ob.close()


def test_a_refused_database_write_keeps_nothing_of_the_call_and_can_be_retried(tmp_path):
    ob = Outbox.open(MODEL, tmp_path / "ob")
    ob.apply([MetricsQueued(0, "{}")], journal_seq=1)
    db = ob.db._db
    # SQLite's page limit stands in for a full disk: SQLITE_FULL, as ENOSPC gives.
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    big = [MetricsQueued(epoch, '{"loss": "%s"}' % ("x" * 4000)) for epoch in range(1, 40)]
    with pytest.raises(OSError) as raised:
        ob.apply(big, journal_seq=40)
    assert raised.value.errno == errno.ENOSPC
    assert not db.in_transaction
    saved = ob.load()
    assert [epoch for epoch, _ in saved.metrics] == [0] and ob.journal_seq == 1
    db.execute("PRAGMA max_page_count = 1073741823")
    ob.apply(big, journal_seq=40)
    assert len(ob.load().metrics) == 40 and ob.journal_seq == 40
    ob.close()


def test_the_journal_allocates_its_blocks_before_it_maps_them(tmp_path):
    j = Journal(tmp_path / "j", seq=0, inbox=collections.deque())
    st = os.stat(tmp_path / "j")
    # A sparse file would have fewer blocks than its size: a store into a hole is a
    # SIGBUS on a full disk.
    assert st.st_size == INITIAL_SIZE and st.st_blocks * 512 >= INITIAL_SIZE
    wide = {f"a fairly long metric name {k}": float(k) for k in range(20)}
    for epoch in range(3000):  # nothing consumed: about 2 MiB of records
        j.append(EpochEnded(epoch, wide))
    st = os.stat(tmp_path / "j")
    assert st.st_size > INITIAL_SIZE and st.st_blocks * 512 >= st.st_size
    j.close()


def no_room(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_journal_that_cannot_be_allocated_is_an_error_not_a_file(tmp_path):
    with pytest.raises(OSError) as raised:
        Journal(tmp_path / "j", seq=0, inbox=collections.deque(), allocate=no_room)
    assert raised.value.errno == errno.ENOSPC


@pytest.mark.parametrize("values", [True, False], ids=["values-records", "entry-records"])
def test_a_journal_that_cannot_grow_takes_calls_in_memory_and_says_so_once(tmp_path, values):
    inbox = Inbox()
    allowed = [True]

    def allocate(fd, offset, length):
        if not allowed[0]:
            no_room(fd, offset, length)
        os.posix_fallocate(fd, offset, length)

    j = inbox.open_journal(functools.partial(Journal, allocate=allocate), tmp_path / "j", seq=5)
    allowed[0] = False
    wide = {f"name {k}": float(k) for k in range(50)}
    logged = []
    with structlog.testing.capture_logs() as logs:
        for epoch in range(4000):  # far more than the first MiB holds
            metrics = dict(wide) if values else {"m": epoch, **wide}
            metrics["name 0"] = float(epoch)
            inbox.put_metrics(epoch, metrics)
            logged.append(epoch)
    assert [e["event"] for e in logs] == ["journal.unavailable"]
    assert "kill -9" in logs[0]["at_risk"]
    assert j.failed is not None and j.failed.errno == errno.ENOSPC
    # Every call reached the worker, in order, with its own sequence number.
    taken = inbox.take_all()
    assert [seq for seq, *_ in taken] == list(range(6, 6 + len(logged)))
    events = [event for _, event, *_ in taken]
    assert [e.epoch for e in events] == logged
    assert all(e.metrics["name 0"] == float(e.epoch) for e in events)
    # What the file holds is still a valid journal: the calls it took before it was full.
    journaled = [seq for seq, _ in replay(tmp_path / "j", after=0)]
    assert journaled == list(range(6, 6 + len(journaled))) and 0 < len(journaled) < len(logged)
    assert os.stat(tmp_path / "j").st_size == INITIAL_SIZE
    j.close()


def test_an_outbox_the_disk_cannot_open_is_an_os_error_not_damage(tmp_path, monkeypatch):
    def full_disk(connection):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(outbox_module, "check_database", full_disk)
    with pytest.raises(OSError) as raised:
        Outbox.open(MODEL, tmp_path)
    assert raised.value.errno == errno.ENOSPC
    assert not isinstance(raised.value, OutboxDamaged)
    # Nothing was set aside or salvaged, and the lock is free again.
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL]
    monkeypatch.undo()
    Outbox.open(MODEL, tmp_path).close()
