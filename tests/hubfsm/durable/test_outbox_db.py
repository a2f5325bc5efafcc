"""One call of the outbox database with several changes leaves what they mean, in order;
a call that fails leaves nothing, and the next one is whole."""

from __future__ import annotations

import json
import sqlite3

import pytest

from hubfsm.core import protocol
from hubfsm.core.values import MetricsQueued, Offered, OpClosed, OpOpened
from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.transport import FilePart

MODEL = "M" * 20


def test_epochs_queued_and_sent_in_one_call_leave_only_what_is_still_unsent():
    db = OutboxDB.in_memory(MODEL)
    db.apply([MetricsQueued(0, '{"loss": 2.0}')])  # an older value, already on disk
    request = protocol.upload_metrics(MODEL, {0: '{"loss": 1.0}', 1: "{}"}, key="k-1")
    db.apply(
        [
            MetricsQueued(0, '{"loss": 1.0}'),
            MetricsQueued(1, "{}"),
            OpOpened("metrics", request, (0, 1)),
            MetricsQueued(1, '{"loss": 0.5}'),  # logged again after the request was built
        ],
        journal_seq=3,
    )
    saved = db.load()
    assert [op.request for op in saved.ops] == [request]
    # The older row of epoch 0 went with the operation; the later value of epoch 1 stays.
    assert saved.metrics == ((1, '{"loss": 0.5}'),)
    assert db.journal_seq == 3


def _file_db(path):
    connection = sqlite3.connect(path, isolation_level=None)
    return OutboxDB(connection, MODEL)


def test_an_epoch_an_earlier_opener_queued_leaves_with_the_operation_that_carries_it(tmp_path):
    path = tmp_path / "outbox.db"
    first = _file_db(path)
    first.apply([MetricsQueued(4, '{"loss": 2.0}')])
    first.close()
    again = _file_db(path)
    request = protocol.upload_metrics(MODEL, {4: '{"loss": 2.0}'}, key="k-4")
    again.apply([OpOpened("metrics", request, (4,))])
    saved = again.load()
    assert saved.metrics == ()
    assert [op.request for op in saved.ops] == [request]


def test_a_write_that_fails_leaves_the_next_one_whole():
    db = OutboxDB.in_memory(MODEL)
    db.apply([MetricsQueued(0, '{"loss": 1.0}')])
    carries = OpOpened("metrics", protocol.upload_metrics(MODEL, {0: "{}"}, key="k-0"), (0,))
    unwritable = OpOpened("metrics", protocol.upload_metrics(MODEL, {1: object()}, key="k-1"), (1,))
    with pytest.raises(TypeError):
        # The epoch's row is deleted, then the second request cannot be encoded: the
        # whole call is rolled back, the row included.
        db.apply([carries, unwritable], journal_seq=7)
    assert db.load().metrics == ((0, '{"loss": 1.0}'),)
    assert db.journal_seq == 0
    db.apply([carries], journal_seq=7)
    saved = db.load()
    assert saved.metrics == ()
    assert [op.request for op in saved.ops] == [carries.request]
    assert db.journal_seq == 7


def test_only_an_upload_closing_can_free_a_weight_file(tmp_path):
    path = tmp_path / "outbox.db"
    part = FilePart(name="last.pt", path=str(tmp_path / "w.pt"), size=1, sha256="0" * 64)
    upload = OpOpened(
        "checkpoint", protocol.upload_checkpoint(MODEL, 3, part, is_best=False, key="u-3"), 3
    )
    metrics = OpOpened("metrics", protocol.upload_metrics(MODEL, {3: "{}"}, key="m-3"), (3,))
    first = _file_db(path)
    assert first.apply([upload, metrics]) is False
    first.close()
    again = _file_db(path)  # what the operations are is read back from the file
    assert again.apply([OpClosed("m-3")]) is False
    assert again.apply([OpClosed("u-3")]) is True
    assert again.apply([OpClosed("u-3")]) is False  # gone already
    assert again.load().empty


def _traced(db: OutboxDB) -> list[str]:
    """The writes to the ``slots`` table ``db`` executes from now on."""
    statements: list[str] = []

    def seen(statement: str) -> None:
        if "slots" in statement and not statement.startswith("SELECT"):
            statements.append(statement)

    db._db.set_trace_callback(seen)
    return statements


def test_only_the_last_offer_of_a_slot_in_one_call_is_written(tmp_path):
    db = OutboxDB.in_memory(MODEL)
    old, new = (
        (epoch, FilePart("last.pt", str(tmp_path / f"{epoch}.pt"), 1, "0" * 64), False)
        for epoch in (1, 2)
    )
    db.apply([Offered("checkpoint", old)])  # on disk already
    statements = _traced(db)
    # Replaced in the same call: one write, and the call's end is the newest offer.
    assert db.apply([Offered("checkpoint", None), Offered("checkpoint", new)]) is True
    assert db.load().checkpoint == new
    assert len(statements) == 1
    # Offered, then cleared as its upload opens: the slot is empty, and its file may go.
    upload = OpOpened(
        "checkpoint",
        protocol.upload_checkpoint(MODEL, 2, new[1], is_best=False, key="u-2"),
        2,
    )
    statements.clear()
    assert db.apply([Offered("checkpoint", old), Offered("checkpoint", None), upload]) is True
    saved = db.load()
    assert saved.checkpoint is None
    assert [op.request for op in saved.ops] == [upload.request]
    assert len(statements) == 1
    # A slot offered once in a call is written as before.
    db.apply([Offered("final", (2, new[1], 0.5)), Offered("checkpoint", old)])
    assert (db.load().final, db.load().checkpoint) == ((2, new[1], 0.5), old)


@pytest.mark.parametrize("epochs", [(), (7,), (0, 1, 12)])
def test_a_metrics_operation_keeps_its_epochs_as_a_json_array(epochs):
    db = OutboxDB.in_memory(MODEL)
    request = protocol.upload_metrics(MODEL, {e: "{}" for e in epochs}, key="k")
    db.apply([OpOpened("metrics", request, epochs)])
    (payload,) = db._db.execute("SELECT payload FROM ops").fetchone()
    assert payload == json.dumps(list(epochs))
    assert db.load().ops[0].payload == list(epochs)
