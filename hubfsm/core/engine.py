"""The sans-I/O core: events and the current time in, requests to send and wake-ups out.

The core never reads a clock, sleeps, touches a socket or a file. A runner feeds it the
trainer's events and the transport's outcomes, asks :meth:`Core.poll` what to do next,
and does it. One request is in flight at a time, so the hub sees every channel in order.

The core is the session's machine (what may happen next, and what an answer does), its
identity on the hub (model, run, agent), and a :class:`~hubfsm.core.schedule.Schedule`
it owns (what waits to be sent, and when).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from hubfsm.core import answers, protocol
from hubfsm.core.config import DATA_CHANNELS, CoreConfig, Notify
from hubfsm.core.identifier import Identifier
from hubfsm.core.machine import Answer, SessionMachine, Verdict, answer_to
from hubfsm.core.platform import DIALECTS, PLATFORM
from hubfsm.core.schedule import Schedule
from hubfsm.core.values import (
    Action,
    Change,
    Create,
    Load,
    Op,
    Opening,
    Refusal,
    Rejected,
    Saved,
    Wait,
)
from hubfsm.errors import DeliveryIncomplete, HubError, HubfsmError, IdentifierError
from hubfsm.transport import FilePart, Outcome, Response, TransportError

__all__ = ["Core"]


class Core:
    """One training session's logic, with no I/O.

    Args:
        config: Limits and retry policies.
        rng: The source of jitter; a seed fixes every decision but the idempotency keys,
            which come from ``config.nonce``.
        on_change: Called as ``on_change(source, event, dest)`` after every machine event.
        durable: List what must be kept durably (see :meth:`take_changes`).
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
        self.machine = SessionMachine(on_change)
        self.identifier: Identifier | None = None
        self.model_id: str | None = None
        #: The Platform run the events belong to (None for HUB, or before it opened).
        self.run_id: int | None = None
        #: Where a person sees the model, as the service said (shown, never fetched).
        self.model_url: str | None = None
        #: True once an answer said the run was cancelled.
        self.cancelled = False
        #: Called once, on the driver's thread, when an answer says the run was cancelled.
        self.on_cancel: Callable[[], None] | None = None
        self.record: Mapping[str, Any] = {}
        self.agent_id: str | None = None
        self.error: HubfsmError | None = None
        self.last_failure: str | None = None
        #: Records the hub refused (400/422), set aside and kept, never sent again.
        self.rejected: list[Rejected] = []
        #: Why heartbeats stopped for good (the hub refused one), if they did.
        self.heartbeat_refusal: str | None = None
        # The outbox says an earlier session was stopped by a refusal; a delivery ends it.
        self._refusal_kept = False
        #: Told of refusals that do not stop the session (a warning each), if set.
        self.notify: Notify | None = None
        #: When True, nothing is sent: everything waits (for ``hubfsm sync``).
        self.offline = offline
        #: True once the hub has answered anything: refusals after that are outages.
        self.answered = False
        #: The wait the last failed request was given before its retry (None: none).
        self.retry_wait: float | None = None
        #: What waits to be sent, and when it goes.
        self.schedule = Schedule(self.config, self.dialect, rng or random.Random(), durable=durable)
        self.stats = self.schedule.stats
        self._keep = self.schedule.keep

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
        dialect = self.dialect
        if dialect is not PLATFORM and identifier.project is not None:
            # A project names a Platform run: HUB cannot open it, so it fails to parse.
            self.error = IdentifierError("a HUB session needs a model id or a model file")
            self.machine.fire("fail")
            return
        self.machine.fire("parse")
        schedule = self.schedule
        if identifier.model_id is not None:
            self.model_id = identifier.model_id
            # Offline, or a Platform run an outbox already names (``hubfsm sync``, or a
            # trainer back after a kill): its records go on to the same run, unannounced.
            if self.offline or (dialect is PLATFORM and self.run_id is not None):
                self.machine.fire("load")
                return
        request = dialect.opening(identifier, dict(create or {}), key=schedule.key)
        purpose = Create() if identifier.model_id is None else Load()
        schedule.add("control", request, purpose, now=now)

    def start(self, *, now: float) -> None:
        """Training begins: heartbeats start at once."""
        self.machine.fire("start")
        if self.heartbeat_refusal is None and self.dialect.heartbeats:
            self.schedule.next_heartbeat = now

    def epoch_end(self, epoch: int, metrics: Mapping[str, Any], *, now: float) -> None:
        """Queue an epoch's metrics; a later value for the same epoch replaces it."""
        self.machine.fire("epoch_end")
        self.schedule.queue_metrics(epoch, protocol.encode_metrics(metrics))

    def checkpoint(self, epoch: int, file: FilePart, *, is_best: bool, now: float) -> None:
        """Offer epoch weights; only the newest offer waiting to be sent is kept."""
        self.machine.fire("checkpoint")
        self.schedule.saved(epoch, file, is_best=is_best, now=now)

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
        self.schedule.finishing((epoch, file, map50_95), deadline=now + timeout, now=now)

    def interrupt(self, *, now: float) -> None:
        """Training stopped early: stop heartbeats; data channels keep draining."""
        self.machine.fire("interrupt")
        self.schedule.stop_heartbeats()

    def resume(self, *, now: float) -> None:
        """Training goes on after an interruption."""
        self.machine.fire("resume")
        if self.heartbeat_refusal is None and self.dialect.heartbeats:
            self.schedule.next_heartbeat = now
        # The final weights wait no more (``finish`` offers them again).
        if self.schedule.final is not None:
            self.schedule.offer_final(None)
        self.schedule.close_op("final")

    def restore(self, saved: Saved, *, now: float) -> None:
        """Take back what an outbox kept: its operations go first, with their keys."""
        self.schedule.restore(saved, now=now)
        self.rejected.extend(saved.rejected)
        self._refusal_kept = saved.refusal is not None

    @property
    def saved_final(self) -> tuple[int, FilePart, float] | None:
        """The final weights still waiting to be sent, if any."""
        return self.schedule.final

    def take_changes(self) -> list[Change]:
        """Hand over what must be kept durably, listed since the last call."""
        return self.schedule.take_changes()

    # -- what the runner asks -------------------------------------------------------

    def poll(self, now: float) -> Action:
        """Say what to do at ``now``: send one request, or wait."""
        schedule = self.schedule
        if schedule.in_flight is not None:
            raise RuntimeError("poll() while a request is in flight")
        traits = self.machine.traits
        if not traits.sends or self.offline:
            return Wait(None)
        final = traits.final
        if final and self._finish_overdue(now):
            return Wait(None)
        return schedule.next_action(
            now,
            final=final,
            heartbeats=traits.heartbeats,
            model_id=self.model_id,
            run_id=self.run_id,
            agent_id=self.agent_id,
        )

    def receive(self, op_id: int, outcome: Outcome, *, now: float) -> None:
        """Take the outcome of the request sent as ``op_id``."""
        self._answer(op_id, outcome, now)
        if self.machine.traits.final:  # an answer past finish()'s deadline ends the wait
            self._finish_overdue(now)

    def _finish_overdue(self, now: float) -> bool:
        """Interrupt an unfinished final upload past finish()'s deadline; True if so."""
        if now < self.schedule.finish_deadline:
            return False
        self.interrupt(now=now)
        late = "the final upload did not complete in time; what is left stays pending"
        self.error = DeliveryIncomplete(late, self.pending())
        return True

    def _answer(self, op_id: int, outcome: Outcome, now: float) -> None:
        schedule = self.schedule
        op = schedule.in_flight
        if op is None or op.id != op_id:
            raise RuntimeError(f"no request {op_id} in flight")
        schedule.in_flight = None
        self.retry_wait = None
        first_contact = not self.answered and isinstance(op.purpose, Opening)
        if isinstance(outcome, Response):
            self.answered = True
            if not self.cancelled and self.dialect.cancelled(outcome):
                # A person cancelled the run: tell the trainer, once.
                self.cancelled = True
                self._tell("run.cancelled", model_id=self.model_id)
                if self.on_cancel is not None:
                    self.on_cancel()
        if self.dialect.restart(op, outcome):
            self._retry(op, outcome, now)
            return
        verdict = self.dialect.verdict(outcome, first_contact=first_contact)
        if verdict is Verdict.SUCCESS:
            assert isinstance(outcome, Response)
            try:
                final = schedule.final if op.channel == "final" else None
                if self.dialect.advance(op, outcome, now=now, final=final):
                    return
            except protocol.HubProtocolError as exc:
                # An answer without a usable signed URL: ask again, as for any failed step.
                self._retry(op, outcome, now)
                self.last_failure = str(exc)
                return
            self._succeeded(op, outcome)
        elif isinstance(outcome, TransportError):
            if verdict is Verdict.FATAL or not self._retry(op, outcome, now, first_contact):
                # Only an opening request meets a hub that never answered (first contact).
                self.error = answers.unreachable_error(outcome)
                schedule.ops[op.channel] = None
                self.machine.fire("fail")
        elif verdict is Verdict.FATAL:
            self._fatal(op, outcome)
        else:
            self._retry(op, outcome, now)

    def pending(self) -> dict[str, int]:
        """What the hub has not acknowledged yet, per channel."""
        return self.schedule.pending()

    def unacknowledged_epochs(self) -> set[int]:
        """The epochs whose metrics the hub has not acknowledged."""
        schedule = self.schedule
        op = schedule.ops["metrics"]
        return set(schedule.unsent) | set(schedule.solo) | set(op.epochs if op else ())

    def rejected_epochs(self) -> set[int]:
        """The epochs whose metrics the hub refused, kept aside."""
        return {epoch for record in self.rejected for epoch in record.epochs}

    @property
    def drained(self) -> bool:
        """True when no data (metrics, checkpoint, final weights) waits to be sent."""
        return not any(self.pending().values())

    def __repr__(self) -> str:
        return f"<Core state={self.state} model={self.model_id} pending={self.pending()}>"

    # -- the hub's answers ----------------------------------------------------------

    def _retry(self, op: Op, outcome: Outcome, now: float, first_contact: bool = False) -> bool:
        """Schedule the next attempt; False when opening should fail instead."""
        self.last_failure = answers.failure_text(outcome)
        self.retry_wait = self.schedule.retry(op, outcome, now, first_contact)
        return self.retry_wait is not None

    def _succeeded(self, op: Op, response: Response) -> None:
        channel = op.channel
        if self._refusal_kept and channel in DATA_CHANNELS:
            # The cause of the earlier refusal is fixed: the hub takes data again.
            self._refusal_kept = False
            self._keep(Refusal(None))
        self.schedule.acknowledged(op)
        if channel == "heartbeat":
            try:
                self.agent_id = answers.agent_id(response) or self.agent_id
            except protocol.HubProtocolError as exc:
                self.last_failure = str(exc)  # not adopted; heartbeats go on without it
        elif channel == "final":
            self.machine.fire("acknowledged")
        elif channel == "control":
            purpose = op.purpose
            assert isinstance(purpose, Opening), purpose
            ours = self.schedule.final is not None or self.schedule.ops["final"] is not None
            try:
                opened = answers.opened(
                    self.dialect, purpose, response, model_id=self.model_id, ours=ours
                )
            except HubError as exc:
                self.error = exc
                self.machine.fire("fail")
                return
            self.model_id, self.run_id, self.model_url = attrs.astuple(opened)
            if isinstance(purpose, Load) and self.dialect is not PLATFORM:
                self.record = dict(response.data)
            self.machine.fire(purpose.event)

    def _fatal(self, op: Op, response: Response) -> None:
        """A refusal: what it does is the answer table's (:data:`hubfsm.core.machine.ANSWERS`)."""
        channel = op.channel
        if isinstance(op.purpose, Opening) and self.machine.traits.opening:
            # A refused opening: the session never opened. (A kept upload that ``hubfsm
            # sync`` sends while the model opens is answered as in any other state.)
            self.schedule.ops[channel] = None
            self.error = answers.opening_error(op, response, self.model_id)
            self.machine.fire("fail")
            return
        answer = answer_to(response.status, channel)
        status, message = response.status, response.message
        if answer is Answer.REJECT:
            # One payload is set aside (kept) and the rest goes on; a batch splits first.
            record = self.schedule.reject(op, response)
            if record is None:
                epochs = len(op.epochs)
                self._tell("metrics.batch_refused", model_id=self.model_id, epochs=epochs,
                           status=status, message=message)  # fmt: skip
                return
            self.rejected.append(record)
            self._tell("record.rejected", model_id=self.model_id, channel=channel,
                       record=record.describe())  # fmt: skip
            if channel == "final":
                # Nothing else is left to send by now (the final goes last): the session
                # stops, with the weights kept aside and the answer in the error.
                self.schedule.offer_final(None)
                self.error = answers.rejected_final_error(op, response)
                self.machine.fire("refuse")
            return
        self.schedule.stop_heartbeats()
        if answer is Answer.STOP_HEARTBEATS:
            # For good, with a warning; data goes on.
            self.heartbeat_refusal = f"{status} {message}".rstrip()
            self._tell("heartbeat.stopped", model_id=self.model_id, status=status, message=message)
            return
        # All sending stops; what is pending stays, and every later event is still kept.
        # The refused operation keeps its key and data, for ``hubfsm sync`` once fixed.
        self.schedule.ops[channel] = op if channel in DATA_CHANNELS else None
        self.error = answers.refusal_error(op, response, self.model_id)
        self._keep(Refusal(str(self.error)))
        self.machine.fire("refuse")

    def _tell(self, event: str, **fields: Any) -> None:
        notify = self.notify
        if notify is not None:
            notify(event, fields)
