"""The sans-I/O core: events and the current time in, requests to send and wake-ups out.

The core never reads a clock, sleeps, touches a socket or a file. A runner feeds it the
trainer's events and the transport's outcomes, asks :meth:`Core.poll` what to do next,
and does it. One request is in flight at a time, so the hub sees every channel in order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from hubfsm.core import protocol
from hubfsm.core.changes import Change, MetricsQueued, Saved
from hubfsm.core.config import (
    CHANNELS,
    DATA_CHANNELS,
    CoreConfig,
    Limits,
    Notify,
    Stats,
)
from hubfsm.core.dialect import DIALECTS, PLATFORM
from hubfsm.core.identifier import Identifier
from hubfsm.core.machine import REJECTING_STATUSES, STOPPING_STATUSES, SessionMachine
from hubfsm.core.ops import (
    Action,
    CheckpointUpload,
    Create,
    Load,
    Op,
    Opening,
    Send,
    Wait,
    purpose_of,
)
from hubfsm.core.refusals import Answers
from hubfsm.core.retry import RetryPolicy, Verdict
from hubfsm.errors import DeliveryIncomplete, IdentifierError
from hubfsm.transport import FilePart, Outcome, Response, TransportError

# Where they always were: the public names of the core's parts.
__all__ = [
    "CHANNELS",
    "DATA_CHANNELS",
    "REJECTING_STATUSES",
    "STOPPING_STATUSES",
    "Action",
    "Core",
    "CoreConfig",
    "Limits",
    "Notify",
    "Send",
    "Stats",
    "Wait",
]


class Core(Answers):
    """One training session's logic, with no I/O.

    Args:
        config: Limits and retry policies.
        rng: The source of jitter; a seed fixes every decision but the idempotency keys,
            which come from ``config.nonce``.
        on_change: Called as ``on_change(source, event, dest)`` after every machine event.
        durable: List what must be kept durably in :attr:`changes`.
        offline: Send nothing: everything waits (for ``hubfsm sync``).
    """

    def __init__(
        self,
        config: CoreConfig | None = None,
        *,
        rng: random.Random | None = None,
        on_change: Callable[[str, str, str], None] | None = None,
        durable: bool = False,
        offline: bool = False,
    ) -> None:
        self.config = config or CoreConfig()
        #: The protocol dialect: request builders and answer rules.
        self.dialect = DIALECTS[self.config.protocol]
        self._rng = rng or random.Random()
        self._nonce = self.config.nonce(self._rng)
        self.machine = SessionMachine(on_change)
        self.identifier = None
        self.model_id = None
        #: The Platform run the events belong to (None for HUB, or before it opened).
        self.run_id = None
        #: Where a person sees the model, as the service said (shown, never fetched).
        self.model_url = None
        #: True once an answer said the run was cancelled.
        self.cancelled = False
        #: Called once, on the driver's thread, when an answer says the run was cancelled.
        self.on_cancel = None
        self.record = {}
        self.agent_id = None
        self.error = None
        self.last_failure = None
        self.stats = Stats()
        self._next_key = 0
        self._next_op = 0
        self._ops = dict.fromkeys(CHANNELS)
        self._in_flight = None
        self._unsent = {}
        # Epochs of a batch the hub refused: each goes alone, once, to find the bad one.
        self._solo = {}
        #: Records the hub refused (400/422), set aside and kept, never sent again.
        self.rejected = []
        #: Why heartbeats stopped for good (the hub refused one), if they did.
        self.heartbeat_refusal = None
        # The outbox says an earlier session was stopped by a refusal; a delivery ends it.
        self._refusal_kept = False
        #: Told of refusals that do not stop the session (a warning each), if set.
        self.notify = None
        self._checkpoint = None
        # When the waiting checkpoint was offered, and the gap between the last two offers.
        self._checkpoint_at = -math.inf
        self._save_gap = 0.0
        self._last_metrics = -math.inf
        self._last_checkpoint = -math.inf
        self._next_heartbeat = math.inf
        self._final = None
        self._finish_deadline = math.inf
        # The hub's Retry-After holds back every request, not only the one it answered:
        # its rate limit is per key.
        self._hold_until = -math.inf
        #: When True, the core lists what must be kept durably in :attr:`changes`.
        self.durable = durable
        self.changes = []
        #: When True, nothing is sent: everything waits (for ``hubfsm sync``).
        self.offline = offline
        #: True once the hub has answered anything: refusals after that are outages.
        self.answered = False
        #: The wait the last failed request was given before its retry (None: none).
        self.retry_wait = None

    # -- what the trainer says ------------------------------------------------------

    @property
    def state(self) -> str:
        """The machine's current state."""
        return self.machine.state

    def open(
        self,
        identifier: Identifier,
        *,
        create: Mapping[str, Any] | None = None,
        now: float,
    ) -> None:
        """Take a parsed identifier and ask the hub to load or create the model.

        Args:
            identifier: The parsed identifier (see :func:`hubfsm.parse_identifier`).
            create: The create-model payload, for an identifier that names a local file.
            now: The current time.
        """
        self.identifier = identifier
        if self.dialect is not PLATFORM and identifier.project is not None:
            # A project names a Platform run: HUB cannot open it, so it fails to parse.
            self.error = IdentifierError("a HUB session needs a model id or a model file")
            self.machine.fire("fail")
            return
        self.machine.fire("parse")
        if self.dialect is PLATFORM:
            self._open_run(identifier, dict(create or {}), now=now)
        elif identifier.model_id is not None and self.offline:
            self.model_id = identifier.model_id
            self.machine.fire("load")
        elif identifier.model_id is not None:
            self.model_id = identifier.model_id
            request = protocol.get_model(identifier.model_id)
            self._add("control", request, Load(), now=now)
        else:
            payload = dict(create or {})
            request = protocol.create_model(payload, key=self._key())
            self._add("control", request, Create(), now=now)

    def start(self, *, now: float) -> None:
        """Training begins: heartbeats start at once."""
        self.machine.fire("start")
        if self.heartbeat_refusal is None and self.dialect.heartbeats:
            self._next_heartbeat = now

    def epoch_end(self, epoch: int, metrics: Mapping[str, Any], *, now: float) -> None:
        """Queue an epoch's metrics; a later value for the same epoch replaces it."""
        self.machine.fire("epoch_end")
        self.queue_metrics(epoch, protocol.encode_metrics(metrics))

    def queue_metrics(self, epoch: int, encoded: str) -> None:
        """Queue already-encoded metrics (from the trainer or from a recovered outbox)."""
        self._unsent.pop(epoch, None)
        self._solo.pop(epoch, None)
        self._unsent[epoch] = encoded
        if self.durable:
            self.changes.append(MetricsQueued(epoch, encoded))

    def checkpoint(self, epoch: int, file: FilePart, *, is_best: bool, now: float) -> None:
        """Offer epoch weights; only the newest offer waiting to be sent is kept."""
        self.machine.fire("checkpoint")
        if self._checkpoint_at > -math.inf:
            self._save_gap = max(0.0, now - self._checkpoint_at)
        self._checkpoint_at = now
        self._offer_checkpoint((epoch, file, is_best))

    def finish(
        self,
        epoch: int,
        file: FilePart,
        *,
        map50_95: float,
        now: float,
        timeout: float = math.inf,
    ) -> None:
        """Training ended: flush the metrics, then upload the final weights.

        Args:
            epoch: The last epoch.
            file: The final (best) weights.
            map50_95: The model's mAP50-95, sent with the weights.
            now: The current time.
            timeout: Seconds after which an unfinished upload is interrupted, leaving
                the session ``resumable`` with what is left still pending.
        """
        self.machine.fire("finish")
        self._offer_final((epoch, file, map50_95))
        self._finish_deadline = now + timeout
        # The final weights supersede any epoch weights that have not gone out yet.
        if self._checkpoint is not None:
            self._offer_checkpoint(None)
        self._close_op("checkpoint")

    def interrupt(self, *, now: float) -> None:
        """Training stopped early: stop heartbeats; data channels keep draining."""
        self.machine.fire("interrupt")
        self._next_heartbeat = math.inf
        self._ops["heartbeat"] = None

    def resume(self, *, now: float) -> None:
        """Training goes on after an interruption."""
        self.machine.fire("resume")
        if self.heartbeat_refusal is None and self.dialect.heartbeats:
            self._next_heartbeat = now
        if self._final is not None:
            self._offer_final(None)
        self._close_op("final")

    def restore(self, saved: Saved, *, now: float) -> None:
        """Take back what an outbox kept: its operations go first, with their keys."""
        policies = self.config.policies
        for kept in saved.ops:
            self._next_op += 1
            policy: RetryPolicy = getattr(policies, kept.channel)
            purpose = purpose_of(kept.channel, kept.payload)
            op = Op(self._next_op, kept.channel, kept.request, policy, purpose, round_start=now)
            op.not_before = now
            self._ops[kept.channel] = op
        for epoch, encoded in saved.metrics:
            self._unsent.pop(epoch, None)
            self._unsent[epoch] = encoded
        if saved.checkpoint is not None:
            self._checkpoint = saved.checkpoint
            kept_op = self._ops["checkpoint"]
            if (
                kept_op is not None
                and isinstance(kept_op.purpose, CheckpointUpload)
                and kept_op.purpose.epoch < saved.checkpoint[0]
            ):
                # Newer weights wait behind it: sending both would hold the newer ones
                # for the 900 s limit, and the hub keeps only the newest anyway. The kept
                # upload may have landed before the crash; then the newer one replaces it.
                self._close_op("checkpoint")
        if saved.final is not None:
            self._final = saved.final
        self.rejected.extend(saved.rejected)
        self._refusal_kept = saved.refusal is not None

    @property
    def saved_final(self) -> tuple[int, FilePart, float] | None:
        """The final weights still waiting to be sent, if any."""
        return self._final

    def take_changes(self) -> list[Change]:
        """Hand over the changes listed since the last call."""
        changes = self.changes
        self.changes = []
        return changes

    # -- what the runner asks -------------------------------------------------------

    def poll(self, now: float) -> Action:
        """Say what to do at ``now``: send one request, or wait."""
        if self._in_flight is not None:
            raise RuntimeError("poll() while a request is in flight")
        machine = self.machine
        if not machine.sends or self.offline:
            return Wait(None)
        final = machine.traits.final
        if final and now >= self._finish_deadline:
            self.interrupt(now=now)
            self.error = DeliveryIncomplete(
                "the final upload did not complete in time; what is left stays pending",
                self.pending(),
            )
            return Wait(None)
        if now < self._hold_until:
            deadline = self._finish_deadline if final else math.inf
            return Wait(min(self._hold_until, deadline))
        self._schedule(final, now)
        earliest = math.inf
        for channel in CHANNELS:
            op = self._ops[channel]
            if op is None or (channel == "final" and not final):
                continue
            if op.not_before <= now:
                return self._send(op, now)
            earliest = min(earliest, op.not_before)
        if machine.heartbeats:
            earliest = min(earliest, self._next_heartbeat)
        if final:
            earliest = min(earliest, self._finish_deadline)
        waiting = self._unsent or self._solo
        if waiting and self._ops["metrics"] is None and not final:
            earliest = min(earliest, self._last_metrics + self.config.limits.metrics)
        if self._checkpoint is not None and self._ops["checkpoint"] is None:
            earliest = min(earliest, self._checkpoint_due())
        return Wait(None if earliest == math.inf else max(earliest, now))

    def receive(self, op_id: int, outcome: Outcome, *, now: float) -> None:
        """Take the outcome of the request sent as ``op_id``."""
        op = self._in_flight
        if op is None or op.id != op_id:
            raise RuntimeError(f"no request {op_id} in flight")
        self._in_flight = None
        self.retry_wait = None
        first_contact = not self.answered and isinstance(op.purpose, Opening)
        if isinstance(outcome, Response):
            self.answered = True
            if not self.cancelled and self.dialect.cancelled(outcome):
                self._cancel()
        if self.dialect.restarts(op.request, outcome):
            # The signed URL refused the bytes: the upload starts over for a fresh one.
            assert op.first is not None
            op.request, op.first, op.answer = op.first, None, {}
            self._retry(op, outcome, now)
            return
        verdict = self.dialect.verdict(outcome, first_contact=first_contact)
        if verdict is Verdict.SUCCESS:
            assert isinstance(outcome, Response)
            if self._next_step(op, outcome, now):
                return
            self._close_op(op.channel)
            self._succeeded(op, outcome, now)
        elif isinstance(outcome, TransportError):
            if verdict is Verdict.FATAL or not self._retry(op, outcome, now, first_contact):
                self._unreachable(op, outcome)
        elif verdict is Verdict.FATAL:
            self._fatal(op, outcome)
        else:
            self._retry(op, outcome, now)

    @property
    def in_flight(self) -> bool:
        """True between a :class:`Send` and its :meth:`receive`."""
        return self._in_flight is not None

    def pending(self) -> dict[str, int]:
        """What the hub has not acknowledged yet, per channel."""
        metrics_op = self._ops["metrics"]
        in_op = len(metrics_op.epochs) if metrics_op is not None else 0
        ckpt = int(self._checkpoint is not None or self._ops["checkpoint"] is not None)
        return {
            "metrics": len(self._unsent) + len(self._solo) + in_op,
            "checkpoint": ckpt,
            "final": int(self._final is not None),
        }

    def unacknowledged_epochs(self) -> set[int]:
        """The epochs whose metrics the hub has not acknowledged."""
        epochs = set(self._unsent) | set(self._solo)
        op = self._ops["metrics"]
        if op is not None:
            epochs.update(op.epochs)
        return epochs

    def rejected_epochs(self) -> set[int]:
        """The epochs whose metrics the hub refused, kept aside."""
        return {epoch for record in self.rejected for epoch in record.epochs}

    @property
    def drained(self) -> bool:
        """True when no data (metrics, checkpoint, final weights) waits to be sent."""
        return not any(self.pending().values())

    def __repr__(self) -> str:
        return f"<Core state={self.state} model={self.model_id} pending={self.pending()}>"

    # -- inside ---------------------------------------------------------------------

    def _open_run(self, identifier: Identifier, data: dict[str, Any], *, now: float) -> None:
        """Open a Platform run: ``training_started``, unless an outbox already names the run."""
        if identifier.model_id is not None:
            self.model_id = identifier.model_id
            if self.offline or self.run_id is not None:
                # The outbox kept the run its records belong to (``hubfsm sync``, or a
                # trainer back after a kill): they go on to the same run, unannounced.
                self.machine.fire("load")
                return
            request = PLATFORM.training_started(identifier, data, key=self._key())
            self._add("control", request, Load(), now=now)
        else:
            request = PLATFORM.training_started(identifier, data, key=self._key())
            self._add("control", request, Create(), now=now)

    def _cancel(self) -> None:
        """An answer said the run was cancelled: tell the trainer, once."""
        self.cancelled = True
        self._tell("run.cancelled", model_id=self.model_id)
        if self.on_cancel is not None:
            self.on_cancel()

    def _next_step(self, op: Op, response: Response, now: float) -> bool:
        """Go on to the next step of a several-step upload; False when ``op`` is done."""
        first = op.first or op.request
        final = self._final if op.channel == "final" else None
        try:
            step = self.dialect.next_step(
                op.request, response, first=first, answer=op.answer, final=final
            )
        except protocol.HubProtocolError as exc:
            # An answer without a usable signed URL: ask again, as for any failed step.
            op.request, op.first, op.answer = first, None, {}
            self._retry(op, response, now)
            self.last_failure = str(exc)
            return True
        if step is None:
            return False
        if op.request is first:
            op.answer = dict(self.dialect.data(response))
        op.first = first
        op.request = step
        op.round_attempts = 0
        op.round_start = now
        op.not_before = now
        return True
