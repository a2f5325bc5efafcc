"""What the core asks to keep durably, and what an outbox gives back after a restart.

The core stays sans-I/O: it lists its changes as these values, and a runner writes them
to an outbox before it sends the request that depends on them.
"""

from __future__ import annotations

from typing import Any

import attrs

from hubfsm.transport import FilePart, Request


@attrs.frozen
class MetricsQueued:
    """An epoch's metrics (JSON-encoded) wait to be sent; a later value replaces it."""

    epoch: int
    encoded: str


@attrs.frozen
class OpOpened:
    """An upload got its request and idempotency key; it must be kept before it is sent.

    For ``metrics`` the payload is the tuple of epochs it carries, which leave the queue.
    """

    channel: str
    request: Request
    payload: Any

    @property
    def key(self) -> str:
        """The operation's idempotency key, which identifies it."""
        return self.request.idempotency_key or ""


@attrs.frozen
class OpClosed:
    """The hub acknowledged the operation, or it was superseded: forget it."""

    key: str


@attrs.frozen
class Offered:
    """A slot's newest offer, or None to clear it.

    ``kind`` is ``checkpoint`` (value: epoch, file, is_best) or ``final`` (value: epoch,
    file, mAP50-95).
    """

    kind: str
    value: tuple[int, FilePart, Any] | None


#: The status of a record set aside before it was sent: one an older version journaled
#: that the wire cannot carry. It is kept, listed and discarded like a rejected one.
KEPT_ASIDE = 0


@attrs.frozen
class Rejected:
    """The hub refused one record's payload (400/422): it is set aside, kept, not retried.

    A record recovery could not turn into a request is kept the same way, with the
    status :data:`KEPT_ASIDE` and the reason.

    The record stays in the outbox with the hub's answer until ``hubfsm discard`` removes
    it; ``hubfsm sync`` reports it and exits non-zero while it is held.

    Attributes:
        channel: ``metrics``, ``checkpoint`` or ``final``.
        request: The refused request (for metrics, of one epoch).
        payload: The epochs (metrics), or the epoch (weights), it carried.
        status: The hub's HTTP status (:data:`KEPT_ASIDE`: never sent).
        reason: The hub's message (or why it was never sent).
    """

    channel: str
    request: Request
    payload: Any
    status: int
    reason: str

    @property
    def key(self) -> str:
        """The refused operation's idempotency key."""
        return self.request.idempotency_key or ""

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epochs of metrics the record holds (none for weights)."""
        return tuple(self.payload) if self.channel == "metrics" else ()

    def describe(self) -> str:
        """``metrics of epoch 7: 400 metrics keys must be ...`` and the like."""
        if self.channel == "metrics":
            what = "metrics of epoch " + ", ".join(str(e) for e in self.epochs)
        else:
            what = f"{_NAMES.get(self.channel, self.channel)} of epoch {self.payload}"
        if self.payload is None or (self.channel == "metrics" and not self.epochs):
            what = f"a {self.channel} record"  # one whose content could not be read
        if self.status == KEPT_ASIDE:
            return f"{what}: never sent: {self.reason}"
        return f"{what}: {self.status} {self.reason}".rstrip()


@attrs.frozen
class Refusal:
    """A refusal stopped all sending (``text`` says which), or None once it is over."""

    text: str | None


Change = MetricsQueued | OpOpened | OpClosed | Offered | Rejected | Refusal

_NAMES = {"metrics": "epochs of metrics", "checkpoint": "checkpoint", "final": "final weights"}


def pending_counts(metrics: int, checkpoint: bool, final: bool) -> dict[str, int]:
    """What is pending, per channel: epochs of metrics, and 0 or 1 checkpoint and final.

    The one shape every count of what is pending takes (the core's, an outbox's saved
    records, an outbox read from outside), so :func:`describe_pending` reads them all.
    """
    return {"metrics": metrics, "checkpoint": int(checkpoint), "final": int(final)}


def describe_pending(pending: dict[str, int]) -> str:
    """``3 epochs of metrics, checkpoint, final weights``, or ``nothing``."""
    parts = [
        f"{n} {_NAMES[kind]}" if kind == "metrics" else _NAMES[kind]
        for kind, n in pending.items()
        if n
    ]
    return ", ".join(parts) or "nothing"


@attrs.frozen
class Saved:
    """Everything an outbox holds for one model, in the order it must go out."""

    ops: tuple[OpOpened, ...] = ()
    metrics: tuple[tuple[int, str], ...] = ()
    checkpoint: tuple[int, FilePart, bool] | None = None
    final: tuple[int, FilePart, float] | None = None
    #: Records the hub refused, set aside (never sent again, never dropped silently).
    rejected: tuple[Rejected, ...] = ()
    #: The refusal that stopped the last session's sending, if it is not over.
    refusal: str | None = None

    @property
    def empty(self) -> bool:
        """True when nothing waits to be sent and no rejected record is held."""
        return not (self.ops or self.metrics or self.checkpoint or self.final or self.rejected)

    def counts(self) -> dict[str, int]:
        """What is pending, per channel, as :meth:`hubfsm.core.engine.Core.pending` counts it."""
        in_ops = sum(len(op.payload) for op in self.ops if op.channel == "metrics")
        checkpoint = self.checkpoint is not None or any(o.channel == "checkpoint" for o in self.ops)
        return pending_counts(len(self.metrics) + in_ops, checkpoint, self.final is not None)
