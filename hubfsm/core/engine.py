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

import attrs

from hubfsm.core import protocol
from hubfsm.core.changes import (
    Change,
    MetricsQueued,
    Offered,
    OpClosed,
    OpOpened,
    Refusal,
    Rejected,
    Saved,
)
from hubfsm.core.identifier import Identifier
from hubfsm.core.machine import SessionMachine
from hubfsm.core.ops import (
    CheckpointUpload,
    Create,
    FinalUpload,
    Heartbeat,
    Load,
    MetricsBatch,
    Op,
    Opening,
    Purpose,
    purpose_of,
    what,
)
from hubfsm.core.retry import ChannelPolicies, RetryPolicy, Verdict, classify, retry_after_of
from hubfsm.errors import (
    AuthError,
    DeliveryIncomplete,
    HubError,
    HubfsmError,
    HubUnavailableError,
    ModelNotFoundError,
    ModelTrainedError,
)
from hubfsm.transport import FilePart, Outcome, Request, Response, TransportError

#: Channels in the order the core serves them when several are due at once.
CHANNELS = ("control", "heartbeat", "metrics", "checkpoint", "final")

#: The channels that carry the trainer's data (kept durably until acknowledged).
DATA_CHANNELS = ("metrics", "checkpoint", "final")

#: Answers that refuse one payload, not the session: that record is set aside.
REJECTING_STATUSES = frozenset({400, 413, 422})

#: Answers that stop every channel: the key, the model or the hub's address is wrong.
#: (A redirect arrives as a 3xx: the key never follows one.)
STOPPING_STATUSES = frozenset({401, 403})

#: Called as ``notify(event, fields)`` for what the runner should log as a warning.
Notify = Callable[[str, dict[str, Any]], None]


@attrs.frozen
class Limits:
    """Minimum seconds between sends on each rate-limited channel (the hub's limits).

    Attributes:
        metrics: Between any two metrics requests, retries included.
        checkpoint: Between the starts of two epoch-weight uploads (retries of one excepted).
        heartbeat: Between two heartbeats (retries of one excepted).
        park: How long a channel rests after its policy gave up, before a fresh round.
        checkpoint_grace: The most a checkpoint held back by the limit waits, once the
            limit clears, for newer weights to replace it.
    """

    metrics: float = 3.0
    checkpoint: float = 900.0
    heartbeat: float = 300.0
    park: float = 60.0
    checkpoint_grace: float = 120.0

    def scaled(self, factor: float) -> Limits:
        """Every limit times ``factor``."""
        return Limits(*(value * factor for value in attrs.astuple(self)))


@attrs.frozen
class CoreConfig:
    """What the core needs to know beyond the events themselves."""

    limits: Limits = Limits()
    policies: ChannelPolicies = ChannelPolicies()
    #: Where idempotency keys come from: the OS's randomness unless a simulation seeds it.
    nonce: protocol.KeySource = protocol.os_nonce

    def scaled(self, factor: float) -> CoreConfig:
        """The same behaviour on a clock ``factor`` times as fast.

        Every limit and wait is multiplied by ``factor`` (``0.001`` turns the 900 s
        checkpoint limit into 0.9 s): for rehearsals and tests that drive a real
        session in real time.
        """
        return attrs.evolve(
            self, limits=self.limits.scaled(factor), policies=self.policies.scaled(factor)
        )


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


@attrs.define
class Stats:
    """Counters of what the core asked for and what came back."""

    sent: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(CHANNELS, 0))
    retries: int = 0
    give_ups: int = 0
    acknowledged_epochs: int = 0
    checkpoints: int = 0


class Core:
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
        self._rng = rng or random.Random()
        self._nonce = self.config.nonce(self._rng)
        self.machine = SessionMachine(on_change)
        self.identifier: Identifier | None = None
        self.model_id: str | None = None
        self.record: Mapping[str, Any] = {}
        self.agent_id: str | None = None
        self.error: HubfsmError | None = None
        self.last_failure: str | None = None
        self.stats = Stats()
        self._next_key = 0
        self._next_op = 0
        self._ops: dict[str, Op | None] = dict.fromkeys(CHANNELS)
        self._in_flight: Op | None = None
        self._unsent: dict[int, str] = {}
        # Epochs of a batch the hub refused: each goes alone, once, to find the bad one.
        self._solo: dict[int, str] = {}
        #: Records the hub refused (400/422), set aside and kept, never sent again.
        self.rejected: list[Rejected] = []
        #: Why heartbeats stopped for good (the hub refused one), if they did.
        self.heartbeat_refusal: str | None = None
        # The outbox says an earlier session was stopped by a refusal; a delivery ends it.
        self._refusal_kept = False
        #: Told of refusals that do not stop the session (a warning each), if set.
        self.notify: Notify | None = None
        self._checkpoint: tuple[int, FilePart, bool] | None = None
        # When the waiting checkpoint was offered, and the gap between the last two offers.
        self._checkpoint_at = -math.inf
        self._save_gap = 0.0
        self._last_metrics = -math.inf
        self._last_checkpoint = -math.inf
        self._next_heartbeat = math.inf
        self._final: tuple[int, FilePart, float] | None = None
        self._finish_deadline = math.inf
        # The hub's Retry-After holds back every request, not only the one it answered:
        # its rate limit is per key.
        self._hold_until = -math.inf
        #: When True, the core lists what must be kept durably in :attr:`changes`.
        self.durable = durable
        self.changes: list[Change] = []
        #: When True, nothing is sent: everything waits (for ``hubfsm sync``).
        self.offline = offline
        #: True once the hub has answered anything: refusals after that are outages.
        self.answered = False
        #: The wait the last failed request was given before its retry (None: none).
        self.retry_wait: float | None = None

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
        self.machine.fire("parse")
        self.identifier = identifier
        if identifier.model_id is not None and self.offline:
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
        if self.heartbeat_refusal is None:
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
        if self.heartbeat_refusal is None:
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
        state = machine.state
        if not machine.sends or self.offline:
            return Wait(None)
        if state == "final_uploading" and now >= self._finish_deadline:
            self.interrupt(now=now)
            self.error = DeliveryIncomplete(
                "the final upload did not complete in time; what is left stays pending",
                self.pending(),
            )
            return Wait(None)
        if now < self._hold_until:
            deadline = self._finish_deadline if state == "final_uploading" else math.inf
            return Wait(min(self._hold_until, deadline))
        self._schedule(state, now)
        earliest = math.inf
        for channel in CHANNELS:
            op = self._ops[channel]
            if op is None or (channel == "final" and state != "final_uploading"):
                continue
            if op.not_before <= now:
                return self._send(op, now)
            earliest = min(earliest, op.not_before)
        if machine.heartbeats:
            earliest = min(earliest, self._next_heartbeat)
        if state == "final_uploading":
            earliest = min(earliest, self._finish_deadline)
        waiting = self._unsent or self._solo
        if waiting and self._ops["metrics"] is None and state != "final_uploading":
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
        verdict = classify(outcome, first_contact=first_contact)
        if verdict is Verdict.SUCCESS:
            assert isinstance(outcome, Response)
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

    def _checkpoint_due(self) -> float:
        """When the checkpoint waiting now may go."""
        limits = self.config.limits
        clear = self._last_checkpoint + limits.checkpoint
        if self._checkpoint_at >= clear:
            return clear
        # It was saved while the limit held, so the trainer will likely save newer
        # weights about one save interval after the limit clears: an upload spent on
        # these now would be replaced almost at once.
        return clear + min(self._save_gap, limits.checkpoint_grace)

    def _offer_checkpoint(self, value: tuple[int, FilePart, bool] | None) -> None:
        self._checkpoint = value
        if self.durable:
            self.changes.append(Offered("checkpoint", value))

    def _offer_final(self, value: tuple[int, FilePart, float] | None) -> None:
        self._final = value
        if self.durable:
            self.changes.append(Offered("final", value))

    def _close_op(self, channel: str) -> None:
        op = self._ops[channel]
        if op is None or op is self._in_flight:
            return
        self._ops[channel] = None
        key = op.request.idempotency_key
        if self.durable and key is not None and channel in DATA_CHANNELS:
            self.changes.append(OpClosed(key))

    def _key(self) -> str:
        self._next_key += 1
        return f"{self._nonce}-{self._next_key}"

    def _add(self, channel: str, request: Request, purpose: Purpose, *, now: float) -> Op:
        policy: RetryPolicy = getattr(self.config.policies, channel)
        self._next_op += 1
        op = Op(self._next_op, channel, request, policy, purpose, round_start=now)
        op.not_before = now
        self._ops[channel] = op
        if self.durable and channel in DATA_CHANNELS:
            # The outbox keeps the plain payload (epochs, or epoch): its format stays.
            self.changes.append(OpOpened(channel, request, op.payload))
        return op

    def _schedule(self, state: str, now: float) -> None:
        """Turn due work into operations, channel by channel."""
        ops = self._ops
        limits = self.config.limits
        model_id = self.model_id
        if model_id is None:
            return
        if ops["heartbeat"] is None and now >= self._next_heartbeat and self.machine.heartbeats:
            self._add(
                "heartbeat", protocol.heartbeat(model_id, self.agent_id), Heartbeat(), now=now
            )
        # The final flush is exempt from the metrics limit (as the official client's final
        # upload is): the trainer is waiting, and it is the last metrics request.
        metrics_due = self._last_metrics + (0.0 if state == "final_uploading" else limits.metrics)
        if ops["metrics"] is None and (self._solo or self._unsent) and now >= metrics_due:
            if self._solo:
                epoch = next(iter(self._solo))
                batch = {epoch: self._solo.pop(epoch)}
            else:
                batch = self._unsent
                self._unsent = {}
            request = protocol.upload_metrics(model_id, batch, key=self._key())
            self._add("metrics", request, MetricsBatch(tuple(batch)), now=now)
        if (
            ops["checkpoint"] is None
            and self._checkpoint is not None
            and now >= self._checkpoint_due()
        ):
            epoch, file, is_best = self._checkpoint
            self._offer_checkpoint(None)
            request = protocol.upload_checkpoint(
                model_id, epoch, file, is_best=is_best, key=self._key()
            )
            self._add("checkpoint", request, CheckpointUpload(epoch), now=now)
        if (
            state == "final_uploading"
            and self._final is not None
            and ops["final"] is None
            and ops["metrics"] is None
            and not self._unsent
            and not self._solo
        ):
            epoch, file, map50_95 = self._final
            # The key follows the content, so finishing again with the same weights after
            # an interrupted upload that did land is replayed by the hub, not refused.
            key = f"final-{model_id}-{epoch}-{file.sha256[:32]}"
            request = protocol.upload_final(model_id, epoch, file, map50_95=map50_95, key=key)
            self._add("final", request, FinalUpload(epoch), now=now)
        metrics_op = ops["metrics"]
        if metrics_op is not None:
            # The hub's limit counts every metrics request, retries included.
            metrics_op.not_before = max(metrics_op.not_before, metrics_due)

    def _send(self, op: Op, now: float) -> Send:
        if op.round_attempts == 0:
            op.round_start = now
        op.attempts += 1
        op.round_attempts += 1
        self._in_flight = op
        self.stats.sent[op.channel] += 1
        if op.attempts > 1:
            self.stats.retries += 1
        # Limits count from the moment a request leaves, not from when it was queued.
        if op.channel == "metrics":
            self._last_metrics = now
        elif op.attempts == 1 and op.channel == "checkpoint":
            self._last_checkpoint = now
        elif op.attempts == 1 and op.channel == "heartbeat":
            self._next_heartbeat = now + self.config.limits.heartbeat
        return Send(op.id, op.channel, op.attempts, op.request)

    def _succeeded(self, op: Op, response: Response, now: float) -> None:
        channel = op.channel
        data = response.data
        if self._refusal_kept and channel in DATA_CHANNELS:
            # The cause of the earlier refusal is fixed: the hub takes data again.
            self._refusal_kept = False
            if self.durable:
                self.changes.append(Refusal(None))
        if channel == "metrics":
            self.stats.acknowledged_epochs += len(op.epochs)
        elif channel == "checkpoint":
            self.stats.checkpoints += 1
        elif channel == "heartbeat":
            agent_id = data.get("agentId")
            if agent_id is not None:
                try:
                    self.agent_id = protocol.hub_id(
                        agent_id, what="agent id", response=response, channel="heartbeat"
                    )
                except protocol.HubProtocolError as exc:
                    self.last_failure = str(exc)  # not adopted; heartbeats go on without it
        elif channel == "final":
            self._offer_final(None)
            self._next_heartbeat = math.inf
            self.machine.fire("acknowledged")
        elif isinstance(op.purpose, Load):
            try:
                protocol.check_record(data, self.model_id, response=response)
            except protocol.HubProtocolError as exc:
                self.error = exc
                self.machine.fire("load", ok=False)
                return
            self.record = dict(data)
            # Our own final upload may have landed before a crash: its kept operation
            # will be confirmed by the hub's idempotent replay, or refused with 409.
            ours = self._final is not None or self._ops["final"] is not None
            if data.get("status") == "trained" and not ours:
                self.error = ModelTrainedError(
                    f"model {self.model_id} is already trained; create a new model to train again",
                    status=response.status,
                    channel="load",
                )
                self.machine.fire("load", ok=False)
            else:
                self.machine.fire("load")
        else:
            try:
                # The id names the outbox directory: a hub must never choose a path.
                model_id = protocol.hub_id(
                    data.get("id"), what="model id", response=response, channel="create"
                )
            except protocol.HubProtocolError as exc:
                self.error = exc
                self.machine.fire("create", ok=False)
            else:
                self.model_id = model_id
                self.machine.fire("create")

    def _fatal(self, op: Op, response: Response) -> None:
        """A refusal: decide what it stops, by channel and answer (see the docs' table)."""
        channel = op.channel
        status = response.status
        if channel == "control" and self.machine.state == "resolved":
            self._ops[channel] = None
            self.error = self._open_error(op, response)
            self._fail_opening(op)
            return
        stops = status in STOPPING_STATUSES or 300 <= status < 400
        if channel == "heartbeat" and not stops:
            self._stop_heartbeats(op, response)
            return
        if channel in DATA_CHANNELS and status in REJECTING_STATUSES:
            self._reject(op, response)
            return
        self._refuse(op, response)

    def _open_error(self, op: Op, response: Response) -> HubError:
        """The error of a refused load or create: the session never opened."""
        status = response.status
        hub_says = f": {response.message}" if response.message else ""
        if status in (401, 403):
            return AuthError(
                f"the hub refused the API key ({status}) on {what(op)}{hub_says}",
                status=status,
                channel=op.channel,
            )
        if status == 404:
            return ModelNotFoundError(
                f"model {self.model_id} not found on the hub{hub_says}",
                status=status,
                channel=op.channel,
            )
        if status == 409:
            return ModelTrainedError(
                f"model {self.model_id} is already trained{hub_says}",
                status=status,
                channel=op.channel,
            )
        return HubError(
            f"the hub rejected {what(op)} with {status}{hub_says}",
            status=status,
            channel=op.channel,
        )

    def _refuse(self, op: Op, response: Response) -> None:
        """Stop all sending; what is pending stays, and every later event is still kept."""
        channel = op.channel
        # The refused operation keeps its key and data, for ``hubfsm sync`` once fixed.
        self._ops[channel] = op if channel in DATA_CHANNELS else None
        self._ops["heartbeat"] = None
        self._next_heartbeat = math.inf
        status = response.status
        asked = what(op)
        hub_says = f": {response.message}" if response.message else ""
        error: HubError
        if status in (401, 403):
            error = AuthError(
                f"the hub refused the API key ({status}) on {asked}{hub_says}",
                status=status,
                channel=channel,
            )
        elif 300 <= status < 400:
            error = HubError(
                f"the hub answered {asked} with a redirect ({status}), which is never "
                f"followed with the key; check the API root{hub_says}",
                status=status,
                channel=channel,
            )
        elif status == 404:
            error = ModelNotFoundError(
                f"model {self.model_id} not found on the hub ({status}) on {asked}{hub_says}",
                status=status,
                channel=channel,
            )
        elif status == 409:
            error = ModelTrainedError(
                f"model {self.model_id} is already trained ({status}) on {asked}{hub_says}",
                status=status,
                channel=channel,
            )
        else:
            error = HubError(
                f"the hub refused {asked} with {status}{hub_says}",
                status=status,
                channel=channel,
            )
        self.error = error
        if self.durable:
            self.changes.append(Refusal(str(error)))
        self.machine.fire("refuse")

    def _stop_heartbeats(self, op: Op, response: Response) -> None:
        """The hub refused a heartbeat: heartbeats stop for good; data goes on."""
        self._ops["heartbeat"] = None
        self._next_heartbeat = math.inf
        self.heartbeat_refusal = f"{response.status} {response.message}".rstrip()
        self._tell(
            "heartbeat.stopped",
            model_id=self.model_id,
            status=response.status,
            message=response.message,
        )

    def _reject(self, op: Op, response: Response) -> None:
        """The hub refused one payload: set it aside (kept) and go on with the rest."""
        channel = op.channel
        self._ops[channel] = None
        key = op.request.idempotency_key or ""
        body = op.request.json or {}
        if isinstance(op.purpose, MetricsBatch) and len(op.epochs) > 1:
            # One bad epoch must not take the good ones of its batch with it: each goes
            # alone, once, and only the one the hub refuses again is set aside.
            encoded = body.get("metrics", {})
            for epoch in op.epochs:
                self._solo[epoch] = encoded[str(epoch)]
                if self.durable:
                    self.changes.append(MetricsQueued(epoch, encoded[str(epoch)]))
            if self.durable:
                self.changes.append(OpClosed(key))
            self._tell(
                "metrics.batch_refused",
                model_id=self.model_id,
                epochs=len(op.epochs),
                status=response.status,
                message=response.message,
            )
            return
        record = Rejected(channel, op.request, op.payload, response.status, response.message)
        self.rejected.append(record)
        if self.durable:
            self.changes.append(record)
        self._tell(
            "record.rejected",
            model_id=self.model_id,
            channel=channel,
            record=record.describe(),
        )
        if channel == "final":
            # Nothing else is left to send by now (the final goes last): the session
            # stops, with the weights kept aside and the answer in the error.
            self._offer_final(None)
            self.error = HubError(
                f"the hub rejected the final weights ({response.status}) on {what(op)}"
                + (f": {response.message}" if response.message else ""),
                status=response.status,
                channel=channel,
            )
            self.machine.fire("refuse")

    def _fail_opening(self, op: Op) -> None:
        """The load or create ``op`` failed: the machine says which."""
        purpose = op.purpose
        assert isinstance(purpose, Opening), purpose
        self.machine.fire(purpose.event, ok=False)

    def _tell(self, event: str, **fields: Any) -> None:
        notify = self.notify
        if notify is not None:
            notify(event, fields)

    def _unreachable(self, op: Op, outcome: TransportError) -> None:
        """Opening failed on a hub that never answered: say what to check, and stop."""
        where = outcome.url or "the API root"
        if outcome.kind == "tls":
            hint = (
                f"check the scheme of {where}: https:// for a hub that speaks TLS, http:// "
                "for one that does not (such as the local hub)"
            )
        elif outcome.kind == "url":
            hint = f"check the API root {where}"
        else:
            hint = f"is the hub at {where} running?"
        self.error = HubUnavailableError(f"cannot reach the hub ({outcome}); {hint}")
        self._ops[op.channel] = None
        if self.machine.state == "resolved":
            self._fail_opening(op)
        else:
            self.machine.fire("fail")

    def _retry(
        self, op: Op, outcome: Outcome, now: float, first_contact: bool = False
    ) -> bool:
        """Schedule the operation's next attempt; False when opening should fail instead."""
        retry_after = retry_after_of(outcome)
        if isinstance(outcome, Response):
            self.last_failure = f"{outcome.status} {outcome.message}".rstrip()
        else:
            self.last_failure = f"{outcome.kind}: {outcome}"
        if retry_after is not None:
            self._hold_until = max(self._hold_until, now + retry_after)
        refused = isinstance(outcome, TransportError) and outcome.kind == "refused"
        brief = first_contact and refused
        policy = self.config.policies.first_contact if brief else op.policy
        wait = policy.next_wait(
            attempts=op.round_attempts,
            elapsed=now - op.round_start,
            rng=self._rng,
            retry_after=retry_after,
        )
        if wait is not None:
            op.not_before = now + wait
            self.retry_wait = wait
            return True
        if brief:
            return False
        # The policy gave up for now: the operation keeps its key and its data, and
        # rests before a fresh round, never sooner than the hub asked.
        self.stats.give_ups += 1
        op.round_attempts = 0
        op.not_before = now + max(self.config.limits.park, retry_after or 0.0)
        self.retry_wait = op.not_before - now
        if op.channel == "heartbeat":
            self._ops["heartbeat"] = None
        return True

