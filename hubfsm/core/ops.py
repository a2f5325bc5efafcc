"""The core's operations: one request, retried under one idempotency key, for one purpose.

An operation's purpose is one of a small closed set of values, so what it is for (load
the model, carry a batch of epochs, upload epoch 7's weights) is a type, not a string, a
tuple or an int told apart by the channel. The outbox keeps the older plain payload (the
epochs, or the epoch); :func:`purpose_of` and :meth:`Op.payload` convert at that boundary.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from hubfsm.core.machine import Event
from hubfsm.core.retry import RetryPolicy
from hubfsm.transport import Request


@attrs.frozen
class Load:
    """Load the model the identifier names (the control channel)."""

    event: ClassVar[Event] = "load"


@attrs.frozen
class Create:
    """Create a model from a local file (the control channel)."""

    event: ClassVar[Event] = "create"


@attrs.frozen
class Heartbeat:
    """Tell the hub the trainer is alive."""


@attrs.frozen
class MetricsBatch:
    """Send the metrics of these epochs in one request."""

    epochs: tuple[int, ...]


@attrs.frozen
class CheckpointUpload:
    """Upload one epoch's weights."""

    epoch: int


@attrs.frozen
class FinalUpload:
    """Upload the final weights, after the last epoch."""

    epoch: int


#: What an operation is for.
Purpose = Load | Create | Heartbeat | MetricsBatch | CheckpointUpload | FinalUpload

#: The purposes that open the session; a refusal of one of them fails the opening.
Opening = Load | Create


def purpose_of(channel: str, payload: Any) -> Purpose:
    """The purpose of an operation an outbox kept as ``channel`` and its plain ``payload``."""
    if channel == "metrics":
        return MetricsBatch(tuple(payload))
    if channel == "checkpoint":
        return CheckpointUpload(int(payload))
    if channel == "final":
        return FinalUpload(int(payload))
    if channel == "heartbeat":
        return Heartbeat()
    return Create() if payload == "create" else Load()


@attrs.define(eq=False)
class Op:
    """One logical operation: the same request, retried under one idempotency key."""

    id: int
    channel: str
    request: Request
    policy: RetryPolicy
    purpose: Purpose
    attempts: int = 0
    round_attempts: int = 0
    round_start: float = 0.0
    not_before: float = 0.0
    #: The first step of a several-step upload (the request an outbox keeps), once a
    #: later step replaced :attr:`request`; None while the first step is the request.
    first: Request | None = None
    #: What the first step was answered (the signed URL and where the bytes land).
    answer: dict[str, Any] = attrs.Factory(dict)

    @property
    def payload(self) -> Any:
        """The plain form an outbox keeps: the epochs (metrics), or the epoch (weights)."""
        purpose = self.purpose
        if isinstance(purpose, MetricsBatch):
            return purpose.epochs
        if isinstance(purpose, CheckpointUpload | FinalUpload):
            return purpose.epoch
        if isinstance(purpose, Load | Create):
            return purpose.event
        return None

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epochs of metrics it carries (none for any other purpose)."""
        return self.purpose.epochs if isinstance(self.purpose, MetricsBatch) else ()


@attrs.frozen
class Send:
    """Send ``request`` now and report the outcome with ``op_id``."""

    op_id: int
    channel: str
    attempt: int
    request: Request


@attrs.frozen
class Wait:
    """Nothing to send before ``until`` (None: nothing until the next event)."""

    until: float | None


Action = Send | Wait


def what(op: Op) -> str:
    """``POST /v1/models/...``: the request an answer was about."""
    if op.request.method == "PUT":
        return "PUT to the signed upload URL"  # its query is a credential
    return f"{op.request.method} {op.request.path}"
