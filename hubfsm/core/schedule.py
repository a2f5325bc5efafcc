"""The core's scheduling: when each channel's work becomes an operation, and when it goes.

Part of :class:`hubfsm.core.engine.Core`, kept apart so the engine reads as the events it
takes and the actions it gives; this part owns the limits, the keys and the retries.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from hubfsm.core.changes import Change, Offered, OpClosed, OpOpened, Rejected
from hubfsm.core.config import DATA_CHANNELS, CoreConfig, Notify, Stats
from hubfsm.core.dialect import Dialect
from hubfsm.core.identifier import Identifier
from hubfsm.core.machine import SessionMachine
from hubfsm.core.ops import (
    CheckpointUpload,
    FinalUpload,
    Heartbeat,
    MetricsBatch,
    Op,
    Purpose,
    Send,
)
from hubfsm.core.retry import RetryPolicy, retry_after_of
from hubfsm.errors import HubfsmError
from hubfsm.transport import FilePart, Outcome, Request, Response, TransportError


class Scheduling:
    """Turns due work into operations and schedules their attempts."""

    # The core's state, set by Core.__init__ (declared here for the parts that use it).
    config: CoreConfig
    dialect: Dialect
    run_id: int | None
    cancelled: bool
    on_cancel: Callable[[], None] | None
    model_url: str | None
    _rng: random.Random
    _nonce: str
    machine: SessionMachine
    identifier: Identifier | None
    model_id: str | None
    record: Mapping[str, Any]
    agent_id: str | None
    error: HubfsmError | None
    last_failure: str | None
    stats: Stats
    _next_key: int
    _next_op: int
    _ops: dict[str, Op | None]
    _in_flight: Op | None
    _unsent: dict[int, str]
    _solo: dict[int, str]
    rejected: list[Rejected]
    heartbeat_refusal: str | None
    _refusal_kept: bool
    notify: Notify | None
    _checkpoint: tuple[int, FilePart, bool] | None
    _checkpoint_at: float
    _save_gap: float
    _last_metrics: float
    _last_checkpoint: float
    _next_heartbeat: float
    _final: tuple[int, FilePart, float] | None
    _finish_deadline: float
    _hold_until: float
    durable: bool
    changes: list[Change]
    offline: bool
    answered: bool
    retry_wait: float | None

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

    def _schedule(self, final: bool, now: float) -> None:
        """Turn due work into operations, channel by channel.

        Args:
            final: The machine's state uploads the final weights (see its traits).
            now: The current time.
        """
        ops = self._ops
        limits = self.config.limits
        model_id = self.model_id
        if model_id is None:
            return
        if ops["heartbeat"] is None and now >= self._next_heartbeat and self.machine.heartbeats:
            self._add(
                "heartbeat", self.dialect.heartbeat(model_id, self.agent_id), Heartbeat(), now=now
            )
        # The final flush is exempt from the metrics limit (as the official client's final
        # upload is): the trainer is waiting, and it is the last metrics request.
        metrics_due = self._last_metrics + (0.0 if final else limits.metrics)
        if ops["metrics"] is None and (self._solo or self._unsent) and now >= metrics_due:
            if self._solo:
                epoch = next(iter(self._solo))
                batch = {epoch: self._solo.pop(epoch)}
            elif self.dialect.batches:
                batch = self._unsent
                self._unsent = {}
            else:
                epoch = next(iter(self._unsent))
                batch = {epoch: self._unsent.pop(epoch)}
            request = self.dialect.metrics(model_id, batch, key=self._key())
            self._add("metrics", request, MetricsBatch(tuple(batch)), now=now)
        if (
            ops["checkpoint"] is None
            and self._checkpoint is not None
            and now >= self._checkpoint_due()
        ):
            epoch, file, is_best = self._checkpoint
            self._offer_checkpoint(None)
            request = self.dialect.checkpoint(
                model_id, self.run_id, epoch, file, is_best=is_best, key=self._key()
            )
            self._add("checkpoint", request, CheckpointUpload(epoch), now=now)
        if (
            final
            and self._final is not None
            and ops["final"] is None
            and ops["metrics"] is None
            and not self._unsent
            and not self._solo
            and not (self.dialect.final_after_checkpoint and ops["checkpoint"] is not None)
        ):
            epoch, file, map50_95 = self._final
            # The key follows the content, so finishing again with the same weights after
            # an interrupted upload that did land is replayed by the hub, not refused. The
            # mAP is part of the body, so it is part of the key: one key, one request.
            key = f"final-{model_id}-{epoch}-{file.sha256[:32]}-{float(map50_95)!r}"
            request = self.dialect.final(
                model_id, self.run_id, epoch, file, map50_95=map50_95, key=key
            )
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

    def _retry(
        self, op: Op, outcome: Outcome, now: float, first_contact: bool = False
    ) -> bool:
        """Schedule the operation's next attempt; False when opening should fail instead."""
        # Honoured up to the policy's maximum: one answer of the hub (a Retry-After of
        # decades, say) must not hold every channel, and finish(), for longer.
        retry_after = op.policy.honoured(retry_after_of(outcome))
        if isinstance(outcome, Response):
            self.last_failure = f"{outcome.status} {outcome.message}".rstrip()
        else:
            self.last_failure = f"{outcome.kind}: {outcome}"
        if retry_after is not None:
            self._hold_until = max(self._hold_until, now + retry_after)
        # Nothing listens there, or the name does not resolve: most likely a wrong address.
        refused = isinstance(outcome, TransportError) and outcome.kind in ("refused", "dns")
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
        # rests before a fresh round, never sooner than the hub asked (as honoured).
        self.stats.give_ups += 1
        op.round_attempts = 0
        op.not_before = now + max(self.config.limits.park, retry_after or 0.0)
        self.retry_wait = op.not_before - now
        if op.channel == "heartbeat":
            self._ops["heartbeat"] = None
        return True
