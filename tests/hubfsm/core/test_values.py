import pytest

from hubfsm.core.config import RetryPolicy
from hubfsm.core.values import (
    CheckpointUpload,
    Create,
    FinalUpload,
    Heartbeat,
    Load,
    MetricsBatch,
    Op,
    describe_pending,
    pending_counts,
    purpose_of,
)
from hubfsm.transport import Request


@pytest.mark.parametrize(
    ("channel", "purpose", "payload"),
    [
        ("metrics", MetricsBatch((3, 4)), (3, 4)),
        ("checkpoint", CheckpointUpload(7), 7),
        ("final", FinalUpload(9), 9),
        ("heartbeat", Heartbeat(), None),
        ("control", Load(), "load"),
        ("control", Create(), "create"),
    ],
)
def test_a_purpose_keeps_the_outboxs_plain_payload_and_comes_back_from_it(
    channel, purpose, payload
):
    op = Op(1, channel, Request("POST", "/v1/x"), RetryPolicy(), purpose)
    assert op.payload == payload
    assert purpose_of(channel, op.payload) == purpose


def test_an_outbox_list_of_epochs_becomes_a_batch_and_only_a_batch_has_epochs():
    assert purpose_of("metrics", [1, 2]) == MetricsBatch((1, 2))
    batch = Op(1, "metrics", Request("POST", "/v1/x"), RetryPolicy(), MetricsBatch((1, 2)))
    weights = Op(2, "checkpoint", Request("POST", "/v1/x"), RetryPolicy(), CheckpointUpload(2))
    assert batch.epochs == (1, 2) and weights.epochs == ()


@pytest.mark.parametrize(
    ("counts", "said"),
    [
        (pending_counts(1, False, False), "1 epoch of metrics"),
        (pending_counts(3, True, True), "3 epochs of metrics, checkpoint, final weights"),
        (pending_counts(0, True, False), "checkpoint"),
        (pending_counts(0, False, False), "nothing"),
    ],
)
def test_what_is_pending_reads_as_english(counts, said):
    assert describe_pending(counts) == said
