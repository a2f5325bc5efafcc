"""What waits to be sent, and when each channel's work goes: the core's schedule.

A plain object :class:`hubfsm.core.engine.Core` owns: it holds the operations, the
metrics queue, the checkpoint and final slots, the limits' clocks, the keys and the
retries. It never reads the machine: the core tells it what the state means (the final
upload is under way, heartbeats are due) and which model the requests name.
"""

from __future__ import annotations

import math
import random

from hubfsm.core.config import CHANNELS, DATA_CHANNELS, CoreConfig, RetryPolicy, Stats
from hubfsm.core.machine import retry_after_of
from hubfsm.core.protocol import Dialect
from hubfsm.core.values import (
    Action,
    Change,
    CheckpointUpload,
    FinalUpload,
    Heartbeat,
    MetricsBatch,
    MetricsQueued,
    Offered,
    Op,
    OpClosed,
    OpOpened,
    Purpose,
    Rejected,
    Saved,
    Send,
    Wait,
    pending_counts,
    purpose_of,
)
from hubfsm.transport import FilePart, Outcome, Request, Response, TransportError


class Schedule:
    """Turns due work into operations and schedules their attempts.

    Args:
        config: Limits and retry policies.
        dialect: Builds the requests.
        rng: The source of jitter (and of the keys' nonce, unless the config says).
        durable: List what must be kept durably in :attr:`changes`.
    """

    def __init__(
        self,
        config: CoreConfig,
        dialect: Dialect,
        rng: random.Random,
        *,
        durable: bool = False,
    ) -> None:
        self.config = config
        self.dialect = dialect
        self.rng = rng
        #: Counters of what was asked for and what came back.
        self.stats = Stats()
        #: When True, what must be kept durably is listed in :attr:`changes`.
        self.durable = durable
        self.changes: list[Change] = []
        self.nonce = config.nonce(rng)
        self.next_key = 0
        self.next_op = 0
        #: The operation of each channel (one at a time), None when it has none.
        self.ops: dict[str, Op | None] = dict.fromkeys(CHANNELS)
        self.in_flight: Op | None = None
        #: Epochs' metrics (JSON-encoded) waiting for a request.
        self.unsent: dict[int, str] = {}
        # Epochs of a batch the hub refused: each goes alone, once, to find the bad one.
        self.solo: dict[int, str] = {}
        self.checkpoint: tuple[int, FilePart, bool] | None = None
        # When the waiting checkpoint was offered, and the gap between the last two offers.
        self.checkpoint_at = -math.inf
        self.save_gap = 0.0
        self.final: tuple[int, FilePart, float] | None = None
        self.finish_deadline = math.inf
        self.last_metrics = -math.inf
        self.last_checkpoint = -math.inf
        self.next_heartbeat = math.inf
        # The hub's Retry-After holds back every request, not only the one it answered:
        # its rate limit is per key.
        self.hold_until = -math.inf

    def keep(self, change: Change) -> None:
        """List ``change`` for the outbox, if the session keeps one."""
        if self.durable:
            self.changes.append(change)

    def take_changes(self) -> list[Change]:
        """Hand over the changes listed since the last call."""
        changes = self.changes
        self.changes = []
        return changes

    # -- the trainer's data ---------------------------------------------------------

    def queue_metrics(self, epoch: int, encoded: str) -> None:
        """Queue an epoch's metrics; a later value for the same epoch replaces it."""
        self.unsent.pop(epoch, None)
        self.solo.pop(epoch, None)
        self.unsent[epoch] = encoded
        self.keep(MetricsQueued(epoch, encoded))

    def offer_checkpoint(self, value: tuple[int, FilePart, bool] | None) -> None:
        """Put epoch weights in the checkpoint slot (None: clear it)."""
        self.checkpoint = value
        self.keep(Offered("checkpoint", value))

    def offer_final(self, value: tuple[int, FilePart, float] | None) -> None:
        """Put the final weights in their slot (None: clear it)."""
        self.final = value
        self.keep(Offered("final", value))

    def saved(self, epoch: int, file: FilePart, *, is_best: bool, now: float) -> None:
        """The trainer saved epoch weights: they replace any that wait."""
        if self.checkpoint_at > -math.inf:
            self.save_gap = max(0.0, now - self.checkpoint_at)
        self.checkpoint_at = now
        self.offer_checkpoint((epoch, file, is_best))

    def finishing(self, final: tuple[int, FilePart, float], *, deadline: float, now: float) -> None:
        """The final weights wait; epoch weights not sent yet are superseded by them.

        An operation resting after its policy gave up goes again at once: the trainer
        waits from now on, and the hub may have been back for most of that rest.
        """
        self.offer_final(final)
        self.finish_deadline = deadline
        if self.checkpoint is not None:
            self.offer_checkpoint(None)
        self.close_op("checkpoint")
        for op in self.ops.values():
            if op is not None and op.attempts and not op.round_attempts:
                op.not_before = min(op.not_before, max(now, self.hold_until))

    def restore(self, saved: Saved, *, now: float) -> None:
        """Take back what an outbox kept: its operations go first, with their keys."""
        for kept in saved.ops:
            purpose = purpose_of(kept.channel, kept.payload)
            self.add(kept.channel, kept.request, purpose, now=now, listed=True)
        for epoch, encoded in saved.metrics:
            self.unsent.pop(epoch, None)
            self.unsent[epoch] = encoded
        if saved.checkpoint is not None:
            self.checkpoint = saved.checkpoint
            kept_op = self.ops["checkpoint"]
            if kept_op is not None and kept_op.payload < saved.checkpoint[0]:
                # Newer weights wait behind it: sending both would hold the newer ones
                # for the 900 s limit, and the hub keeps only the newest anyway. The kept
                # upload may have landed before the crash; then the newer one replaces it.
                self.close_op("checkpoint")
        if saved.final is not None:
            self.final = saved.final

    def stop_heartbeats(self) -> None:
        """No heartbeat is due until the core says so again."""
        self.ops["heartbeat"] = None
        self.next_heartbeat = math.inf

    def acknowledged(self, op: Op) -> None:
        """The hub acknowledged ``op``: it closes, and the final weights leave their slot."""
        self.close_op(op.channel)
        if op.channel == "metrics":
            self.stats.acknowledged_epochs += len(op.epochs)
        elif op.channel == "checkpoint":
            self.stats.checkpoints += 1
        elif op.channel == "final":
            self.offer_final(None)
            self.next_heartbeat = math.inf

    def reject(self, op: Op, response: Response) -> Rejected | None:
        """The hub refused ``op``'s payload: its record is set aside (None: a batch split)."""
        if isinstance(op.purpose, MetricsBatch) and len(op.epochs) > 1:
            # One bad epoch must not take the good ones of its batch with it: each goes
            # alone, once, and only the one the hub refuses again is set aside.
            encoded = (op.request.json or {}).get("metrics", {})
            for epoch in op.epochs:
                self.solo[epoch] = encoded[str(epoch)]
                self.keep(MetricsQueued(epoch, encoded[str(epoch)]))
            self.ops[op.channel] = None  # only now: no reader sees the epochs nowhere
            self.keep(OpClosed(op.request.idempotency_key or ""))
            return None
        self.ops[op.channel] = None
        record = Rejected(op.channel, op.request, op.payload, response.status, response.message)
        self.keep(record)
        return record

    # -- what is pending ------------------------------------------------------------

    def pending(self) -> dict[str, int]:
        """What the hub has not acknowledged yet, per channel."""
        metrics_op = self.ops["metrics"]
        in_op = len(metrics_op.epochs) if metrics_op is not None else 0
        checkpoint = self.checkpoint is not None or self.ops["checkpoint"] is not None
        metrics = len(self.unsent) + len(self.solo) + in_op
        return pending_counts(metrics, checkpoint, self.final is not None)

    # -- operations -----------------------------------------------------------------

    def close_op(self, channel: str) -> None:
        """Forget the channel's operation (acknowledged, or superseded), unless in flight."""
        op = self.ops[channel]
        if op is None or op is self.in_flight:
            return
        self.ops[channel] = None
        key = op.request.idempotency_key
        if key is not None and channel in DATA_CHANNELS:
            self.keep(OpClosed(key))

    def key(self) -> str:
        """A fresh idempotency key."""
        self.next_key += 1
        return f"{self.nonce}-{self.next_key}"

    def add(
        self, channel: str, request: Request, purpose: Purpose, *, now: float, listed: bool = False
    ) -> Op:
        """Open an operation on ``channel``, due at once (``listed``: the outbox has it)."""
        policy: RetryPolicy = getattr(self.config.policies, channel)
        self.next_op += 1
        op = Op(self.next_op, channel, request, policy, purpose, round_start=now)
        op.not_before = now
        self.ops[channel] = op
        if channel in DATA_CHANNELS and not listed:
            # The outbox keeps the plain payload (epochs, or epoch): its format stays.
            self.keep(OpOpened(channel, request, op.payload))
        return op

    def checkpoint_due(self) -> float:
        """When the checkpoint waiting now may go."""
        limits = self.config.limits
        clear = self.last_checkpoint + limits.checkpoint
        if self.checkpoint_at >= clear:
            return clear
        # It was saved while the limit held, so the trainer will likely save newer
        # weights about one save interval after the limit clears: an upload spent on
        # these now would be replaced almost at once.
        return clear + min(self.save_gap, limits.checkpoint_grace)

    def next_action(
        self,
        now: float,
        *,
        final: bool,
        heartbeats: bool,
        model_id: str | None,
        run_id: int | None,
        agent_id: str | None,
    ) -> Action:
        """Send the first due operation, or say when one is due.

        Args:
            now: The current time.
            final: The final upload is under way (see the machine's traits).
            heartbeats: Heartbeats are due in the machine's state.
            model_id: The model the requests name (None: nothing is opened to send).
            run_id: The Platform run, if any.
            agent_id: The agent id the hub gave, if any.
        """
        if now < self.hold_until:
            return Wait(min(self.hold_until, self.finish_deadline if final else math.inf))
        if model_id is not None:
            self.make_due(now, final=final, heartbeats=heartbeats, model_id=model_id,
                          run_id=run_id, agent_id=agent_id)  # fmt: skip
        earliest = math.inf
        # The channels in CHANNELS order (the dict is made from it and never rebuilt);
        # comparisons rather than min(): this runs on every poll.
        for channel, op in self.ops.items():
            if op is None or (not final and channel == "final"):
                continue
            not_before = op.not_before
            if not_before <= now:
                return self.send(op, now)
            if not_before < earliest:
                earliest = not_before
        if heartbeats and self.next_heartbeat < earliest:
            earliest = self.next_heartbeat
        if final and self.finish_deadline < earliest:
            earliest = self.finish_deadline
        ops = self.ops
        if (self.unsent or self.solo) and ops["metrics"] is None and not final:
            earliest = min(earliest, self.last_metrics + self.config.limits.metrics)
        if self.checkpoint is not None and ops["checkpoint"] is None:
            earliest = min(earliest, self.checkpoint_due())
        return Wait(None if earliest == math.inf else max(earliest, now))

    def make_due(
        self,
        now: float,
        *,
        final: bool,
        heartbeats: bool,
        model_id: str,
        run_id: int | None,
        agent_id: str | None,
    ) -> None:
        """Turn due work into operations, channel by channel (see :meth:`next_action`)."""
        ops = self.ops
        limits = self.config.limits
        dialect = self.dialect
        if ops["heartbeat"] is None and now >= self.next_heartbeat and heartbeats:
            self.add("heartbeat", dialect.heartbeat(model_id, agent_id), Heartbeat(), now=now)
        # The final flush is exempt from the metrics limit (as the official client's final
        # upload is): the trainer is waiting, and it is the last metrics request.
        metrics_due = self.last_metrics + (0.0 if final else limits.metrics)
        if ops["metrics"] is None and (self.solo or self.unsent) and now >= metrics_due:
            queue = self.solo or self.unsent
            if queue is self.unsent and dialect.batches:
                batch = queue
            else:
                epoch = next(iter(queue))
                batch = {epoch: queue[epoch]}
            request = dialect.metrics(model_id, batch, key=self.key())
            self.add("metrics", request, MetricsBatch(tuple(batch)), now=now)
            # Off the queue only once the operation holds them: another thread reading
            # what is pending may count an epoch twice for an instant, never miss it.
            if batch is queue:
                self.unsent = {}
            else:
                del queue[epoch]
        if (
            ops["checkpoint"] is None
            and self.checkpoint is not None
            and now >= self.checkpoint_due()
        ):
            epoch, file, is_best = self.checkpoint
            self.keep(Offered("checkpoint", None))  # for the outbox, before the operation
            request = dialect.checkpoint(
                model_id, run_id, epoch, file, is_best=is_best, key=self.key()
            )
            self.add("checkpoint", request, CheckpointUpload(epoch), now=now)
            self.checkpoint = None  # as the metrics: out of the slot once the operation holds it
        if (
            final
            and self.final is not None
            and ops["final"] is None
            and ops["metrics"] is None
            and not self.unsent
            and not self.solo
            and not (dialect.final_after_checkpoint and ops["checkpoint"] is not None)
        ):
            epoch, file, map50_95 = self.final
            # The key follows the content, so finishing again with the same weights after
            # an interrupted upload that did land is replayed by the hub, not refused. The
            # mAP is part of the body, so it is part of the key: one key, one request.
            key = f"final-{model_id}-{epoch}-{file.sha256[:32]}-{float(map50_95)!r}"
            request = dialect.final(model_id, run_id, epoch, file, map50_95=map50_95, key=key)
            self.add("final", request, FinalUpload(epoch), now=now)
        metrics_op = ops["metrics"]
        if metrics_op is not None:
            # The hub's limit counts every metrics request, retries included.
            metrics_op.not_before = max(metrics_op.not_before, metrics_due)

    def send(self, op: Op, now: float) -> Send:
        """Send ``op`` now: count it, and start the limits' clocks."""
        if op.round_attempts == 0:
            op.round_start = now
        op.attempts += 1
        op.round_attempts += 1
        self.in_flight = op
        self.stats.sent[op.channel] += 1
        # A retry sends again what went out before; the next step of an upload is new.
        if op.step_sends:
            self.stats.retries += 1
        op.step_sends += 1
        # Limits count from the moment a request leaves, not from when it was queued.
        if op.channel == "metrics":
            self.last_metrics = now
        elif op.attempts == 1 and op.channel == "checkpoint":
            self.last_checkpoint = now
        elif op.attempts == 1 and op.channel == "heartbeat":
            self.next_heartbeat = now + self.config.limits.heartbeat
        return Send(op.id, op.channel, op.attempts, op.request)

    def retry(
        self, op: Op, outcome: Outcome, now: float, first_contact: bool = False
    ) -> float | None:
        """Schedule the operation's next attempt and return the wait before it.

        None when opening should fail instead: a first contact that nothing answers.
        """
        # Honoured up to the policy's maximum: one answer of the hub (a Retry-After of
        # decades, say) must not hold every channel, and finish(), for longer.
        retry_after = op.policy.honoured(retry_after_of(outcome))
        if retry_after is not None:
            self.hold_until = max(self.hold_until, now + retry_after)
        # Nothing listens there, or the name does not resolve: most likely a wrong address.
        refused = isinstance(outcome, TransportError) and outcome.kind in ("refused", "dns")
        brief = first_contact and refused
        policy = self.config.policies.first_contact if brief else op.policy
        wait = policy.next_wait(
            attempts=op.round_attempts,
            elapsed=now - op.round_start,
            rng=self.rng,
            retry_after=retry_after,
        )
        if wait is not None:
            op.not_before = now + wait
            return wait
        if brief:
            return None
        # The policy gave up for now: the operation keeps its key and its data, and
        # rests before a fresh round, never sooner than the hub asked (as honoured).
        self.stats.give_ups += 1
        op.round_attempts = 0
        rest = self.config.limits.park
        if self.final is not None:
            # The trainer waits for the final upload: a full rest would hold it long
            # after the hub is back. The policy's longest wait, jittered, paces it.
            rest = self.rng.uniform(0.0, min(rest, op.policy.cap))
        op.not_before = now + max(rest, retry_after or 0.0)
        if op.channel == "heartbeat":
            self.ops["heartbeat"] = None
        return op.not_before - now
