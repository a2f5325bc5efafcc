"""One call of the outbox database with several changes leaves what they mean, in order."""

from __future__ import annotations

from hubfsm.core import protocol
from hubfsm.core.changes import MetricsQueued, OpOpened
from hubfsm.durable.outbox_db import OutboxDB

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
