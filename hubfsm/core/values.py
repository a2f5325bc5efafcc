"""The core's values: the trainer's events in, its operations, and what it hands out.

A session turns each trainer call into an :data:`Event` and hands it to the driver
(through the journal when the session keeps one); the driver applies it to the core.
Nothing recognises an event by anything but its type, and the journal encodes and
decodes these values and nothing else (see :mod:`hubfsm.durable.journal`).

Inside, the core keeps one :class:`Op` per channel: one request, retried under one
idempotency key, for one :data:`Purpose` (a type, not a string, a tuple or an int told
apart by the channel). Out come an :data:`Action` (send a request, or wait) and the
:data:`Change` values a runner writes to an outbox before it sends the request that
depends on them; after a restart the outbox gives back a :class:`Saved`. The outbox
keeps an operation's older plain payload (the epochs, or the epoch): :func:`purpose_of`
and :attr:`Op.payload` convert at that boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from hubfsm.core import machine
from hubfsm.core.config import RetryPolicy
from hubfsm.transport import FilePart, Request

# -- what the trainer tells a session ----------------------------------------------


@attrs.frozen
class FileStamp:
    """What a file looked like when the trainer handed it over (from ``os.stat``)."""

    size: int
    mtime_ns: int
    inode: int


@attrs.frozen
class Start:
    """Training begins: heartbeats start."""


@attrs.frozen
class EpochEnded:
    """An epoch ended with these metrics (names to numbers)."""

    epoch: int
    metrics: Mapping[str, Any]


@attrs.frozen
class CheckpointOffered:
    """The trainer offers epoch weights: the file at ``path`` as ``stamp`` describes it.

    Attributes:
        held: A hard link that keeps the offered content reachable until the driver
            takes its snapshot, if the session could make one.
    """

    path: str
    epoch: int
    is_best: bool
    stamp: FileStamp
    held: str | None = None


@attrs.frozen
class FinishRequested:
    """Training ended: flush the metrics, then upload these final weights.

    Attributes:
        timeout: Seconds after which an unfinished upload leaves the session ``resumable``.
        held: A hard link that keeps the handed-over content reachable until the outbox
            has its snapshot, if the session could make one; it outlives a killed
            process, so recovery can still take the snapshot.
    """

    path: str
    epoch: int
    map50_95: float
    stamp: FileStamp
    timeout: float
    held: str | None = None


@attrs.frozen
class FinishPending:
    """Finish with the final weights an outbox kept from an earlier run."""

    timeout: float


@attrs.frozen
class Interrupted:
    """Training stopped early (the session is closing before ``finish``)."""


@attrs.frozen
class Resumed:
    """Training goes on after an interruption."""


@attrs.frozen
class Barrier:
    """No effect: a caller that waits for it knows every earlier event was taken in."""


#: Every trainer event; the journal and the driver know exactly these.
Event = (
    Start
    | EpochEnded
    | CheckpointOffered
    | FinishRequested
    | FinishPending
    | Interrupted
    | Resumed
    | Barrier
)


# -- operations and actions --------------------------------------------------------


@attrs.frozen
class Load:
    """Load the model the identifier names (the control channel)."""

    event: ClassVar[machine.Event] = "load"


@attrs.frozen
class Create:
    """Create a model from a local file (the control channel)."""

    event: ClassVar[machine.Event] = "create"


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
    #: Sends of :attr:`request` as it is now: a later step of an upload starts at 0.
    step_sends: int = 0
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


# -- what the core asks to keep, and what an outbox gives back ----------------------


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

_NAMES = {"checkpoint": "checkpoint", "final": "final weights"}


def pending_counts(metrics: int, checkpoint: bool, final: bool) -> dict[str, int]:
    """What is pending, per channel: epochs of metrics, and 0 or 1 checkpoint and final.

    The one shape every count of what is pending takes (the core's, an outbox's saved
    records, an outbox read from outside), so :func:`describe_pending` reads them all.
    """
    return {"metrics": metrics, "checkpoint": int(checkpoint), "final": int(final)}


def describe_pending(pending: dict[str, int]) -> str:
    """``3 epochs of metrics, checkpoint, final weights`` (``1 epoch``), or ``nothing``."""
    parts = [
        (f"{n} epoch{'s' if n != 1 else ''} of metrics" if kind == "metrics" else _NAMES[kind])
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
