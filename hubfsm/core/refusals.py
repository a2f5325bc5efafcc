"""What the hub's answers do to the core: successes, refusals and rejected records.

Part of :class:`hubfsm.core.engine.Core`. Which answer stops what follows the refusal
table of the design: a refused opening fails the session, a refused heartbeat stops
heartbeats, a rejected record is set aside, anything else stops all sending.
"""

from __future__ import annotations

import math
from typing import Any

from hubfsm.core import protocol
from hubfsm.core.changes import MetricsQueued, OpClosed, Refusal, Rejected
from hubfsm.core.config import DATA_CHANNELS
from hubfsm.core.dialect import PLATFORM
from hubfsm.core.machine import Answer, answer_to
from hubfsm.core.ops import Load, MetricsBatch, Op, Opening, what
from hubfsm.core.schedule import Scheduling
from hubfsm.errors import (
    AuthError,
    HubError,
    HubUnavailableError,
    ModelNotFoundError,
    ModelTrainedError,
)
from hubfsm.transport import Response, TransportError


class Answers(Scheduling):
    """Applies the hub's answers: what a success adopts, and what a refusal stops."""

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
        elif isinstance(op.purpose, Opening) and self.dialect is PLATFORM:
            self._run_opened(op, response)
        elif isinstance(op.purpose, Load):
            try:
                protocol.check_record(data, self.model_id, response=response)
            except protocol.HubProtocolError as exc:
                self.error = exc
                self.machine.fire("fail")
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
                self.machine.fire("fail")
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
                self.machine.fire("fail")
            else:
                self.model_id = model_id
                self.machine.fire("create")

    def _run_opened(self, op: Op, response: Response) -> None:
        """``training_started`` was answered: adopt the model and its run."""
        purpose = op.purpose
        assert isinstance(purpose, Opening), purpose
        known = self.model_id if isinstance(purpose, Load) else None
        try:
            opened = PLATFORM.opened(response, model_id=known)
        except protocol.HubProtocolError as exc:
            self.error = exc
            self.machine.fire("fail")
            return
        # The id names the outbox directory: PLATFORM.opened checked it is no path.
        self.model_id = opened.model_id
        self.run_id = opened.run_id
        self.model_url = opened.model_url
        self.machine.fire(purpose.event)

    def _fatal(self, op: Op, response: Response) -> None:
        """A refusal: decide what it stops, by channel and answer (see the docs' table)."""
        channel = op.channel
        status = response.status
        if isinstance(op.purpose, Opening) and self.machine.traits.opening:
            # A refused opening: the session never opened. (A kept upload that ``hubfsm
            # sync`` sends while the model opens is answered as in any other state.)
            self._ops[channel] = None
            self.error = self._open_error(op, response)
            self.machine.fire("fail")
            return
        answer = answer_to(status, channel)
        if answer is Answer.STOP_HEARTBEATS:
            self._stop_heartbeats(op, response)
        elif answer is Answer.REJECT:
            self._reject(op, response)
        else:
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
        elif outcome.kind in ("url", "dns"):
            hint = f"check the API root {where}"
        else:
            hint = f"is the hub at {where} running?"
        self.error = HubUnavailableError(f"cannot reach the hub ({outcome}); {hint}")
        self._ops[op.channel] = None
        # Only an opening request meets a hub that never answered (see ``receive``).
        self.machine.fire("fail")
