"""The Platform dialect's own invariants, checked on the wire while a simulation runs.

Beside the design's invariants (:mod:`hubfsm.sim.invariants`), a Platform session must:

- send ``training_complete`` only after every epoch the trainer logged was acknowledged;
- deliver every ``epoch_end`` once (one operation per epoch in a process) and in order
  (an epoch is acknowledged only after every earlier one);
- send nothing the official 8.4.190 client does not: its endpoints, event names and
  data keys, and no heartbeat;
- never send the API key to the signed upload URL (checked where the headers are real:
  over HTTP).

:class:`PlatformChecker` is a :class:`~hubfsm.sim.invariants.Checker` that also watches
each request leave (its endpoint, event, keys and operation) and each answer the client
gets (what was acknowledged, in what order), and over HTTP the headers of each upload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import requests

from hubfsm.core.machine import Verdict
from hubfsm.core.platform import EPOCH_FIELDS, EVENTS_PATH, PLATFORM, UPLOAD_PATH
from hubfsm.core.values import Send
from hubfsm.hub.domain import Hub
from hubfsm.sim.invariants import Checker
from hubfsm.transport import Outcome, Request, Response

#: The number a violation of the dialect's own rules carries (after the design's 1 to 9).
DIALECT = 10

#: The keys of an event's body the official client sends.
BODY_KEYS = frozenset({"modelId", "project", "name", "event", "data"})
#: The keys of an upload request's body the official client sends.
UPLOAD_KEYS = frozenset({"filename", "modelId", "runId"})
#: Every event the official 8.4.190 client sends, with the keys of its ``data``.
OFFICIAL_EVENTS: Mapping[str, frozenset[str]] = {
    "training_started": frozenset({"trainArgs", "epochs", "environment", "device", "system"}),
    "epoch_end": frozenset({"epoch", "metrics", *EPOCH_FIELDS}),
    "console_output": frozenset({"chunkId", "content", "lineCount"}),
    "checkpoint_saved": frozenset({"modelPath", "runId", "uploadPath"}),
    "training_complete": frozenset({"results", "classNames", "plots", "runId"}),
}


class PlatformChecker(Checker):
    """A :class:`Checker` that also holds a Platform session to the dialect's own rules.

    Args:
        logged: The epochs the trainer logged so far (the world's own list, read live).
        **kwargs: For :class:`Checker`.
    """

    def __init__(self, *args: Any, logged: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logged = logged
        # Epochs the client saw acknowledged, over every life of the process: the hub
        # keeps them, whichever process sent them.
        self.acked: set[int] = set()
        # Epochs the hub refused for good (400/422): set aside, never acknowledged.
        self.refused: set[int] = set()
        # In this life of the process: the operation that carries each epoch.
        self._epoch_ops: dict[int, int] = {}
        #: Epochs the scenario itself has sent twice (a poison record the journal kept,
        #: then the trainer's own record of that epoch): a second operation is due.
        self.resent: set[int] = set()
        self._completed = False
        # Logged epochs neither acknowledged nor refused yet, and how much of ``logged``
        # (append-only) is in it: an acknowledgement looks at the few still open, not at
        # every epoch logged so far, which made a session's checks grow with its square.
        self._open: set[int] = set()
        self._taken = 0

    def restarted(
        self, message: str = "the process dies; a new one starts from the outbox"
    ) -> None:
        """A new process: its operations are new ones."""
        super().restarted(message)
        self._epoch_ops.clear()

    def sent(self, now: float, send: Send) -> None:
        """The design's checks, then the dialect's: what leaves, and in what operation."""
        seen = self._ops.get(send.op_id)
        if send.attempt > 1 and seen is not None and seen.verdict is Verdict.SUCCESS:
            # The next step of an upload (URL, PUT, checkpoint_saved, training_complete)
            # goes in the same operation: it follows a success, it is no retry.
            self._ops[send.op_id] = seen._replace(verdict=Verdict.RETRY, retry_after=0.0)
        super().sent(now, send)
        self._check_shape(send.request)
        body = send.request.json or {}
        found = body.get("data")
        data: dict[str, Any] = found if isinstance(found, dict) else {}
        event = body.get("event") if send.request.path == EVENTS_PATH else None
        if event == "epoch_end" and isinstance(data.get("epoch"), int):
            epoch = data["epoch"]
            op = self._epoch_ops.setdefault(epoch, send.op_id)
            if op != send.op_id and epoch not in self.resent:
                self.violate(2, f"epoch_end of epoch {epoch} in a second operation")
        elif event == "training_complete" and not self._completed:
            self._completed = True
            missing = sorted(set(self.logged) - self.acked - self.refused)
            if missing:
                self.violate(
                    DIALECT,
                    f"training_complete sent before epoch_end of epochs {missing[:10]} "
                    "was acknowledged",
                )

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        """As :meth:`Checker.answered`, with the dialect's verdicts: a 409 is retried.

        An upload whose ``PUT`` was refused, or whose bytes the service lost before its
        event, starts over: a retry of the operation too.
        """
        super().answered(now, send, outcome)
        if isinstance(outcome, Response):
            if outcome.status == 409 or PLATFORM.restarts(send.request, outcome):
                seen = self._ops[send.op_id]
                self._ops[send.op_id] = seen._replace(verdict=Verdict.RETRY)
            self._acknowledged(send.request, outcome)

    def _check_shape(self, request: Request) -> None:
        """Only the official client's endpoints, events and keys; no heartbeat."""
        if request.method == "PUT":
            if "://" not in request.path:
                self.violate(DIALECT, "a PUT that does not go to the signed upload URL")
            return
        body = request.json if isinstance(request.json, dict) else None
        if request.method != "POST" or body is None:
            self.violate(DIALECT, f"{request.method} {request.path}: not a request it sends")
            return
        if request.path == UPLOAD_PATH:
            extra = set(body) - UPLOAD_KEYS
        elif request.path == EVENTS_PATH:
            event = body.get("event")
            if event not in OFFICIAL_EVENTS:
                self.violate(DIALECT, f"event {str(event)[:40]!r}: the official client has none")
                return
            data = body.get("data")
            keys = set(data) if isinstance(data, dict) else set()
            extra = (set(body) - BODY_KEYS) | (keys - OFFICIAL_EVENTS[str(event)])
        else:
            self.violate(DIALECT, f"POST {request.path[:60]}: not an endpoint it sends to")
            return
        if extra:
            self.violate(DIALECT, f"keys the official client does not send: {sorted(extra)}")

    def _acknowledged(self, request: Request, response: Response) -> None:
        """An answer came back to the client: keep which epochs are acknowledged, in order."""
        body = request.json or {}
        if request.path != EVENTS_PATH or body.get("event") != "epoch_end":
            return
        data = body.get("data")
        epoch = data.get("epoch") if isinstance(data, dict) else None
        if not isinstance(epoch, int):
            return
        if response.ok:
            logged, acked, refused = self.logged, self.acked, self.refused
            if len(logged) > self._taken:
                new = logged[self._taken :]
                self._open.update(e for e in new if e not in acked and e not in refused)
                self._taken = len(logged)
            gaps = sorted(e for e in self._open if e < epoch)
            if gaps:
                self.violate(DIALECT, f"epoch {epoch} acknowledged before epochs {gaps[:10]}")
            self.acked.add(epoch)
            self._open.discard(epoch)
        elif response.status in (400, 413, 422):
            self.refused.add(epoch)
            self._open.discard(epoch)

    def check_put(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """A response hook over HTTP: a PUT to the signed upload URL went without the key.

        Only a real session's hook sees the headers each request really carried.
        """
        sent = response.request
        headers = {name.lower() for name in sent.headers}
        if sent.method == "PUT" and headers & {"authorization", "x-api-key"}:
            self.violate(7, "the API key was sent to the signed upload URL")


def platform_applied(hub: Hub, model_id: str) -> tuple[dict[int, int], list[tuple[str, int, str]]]:
    """What a local hub holds of a Platform run, as :meth:`Stage.applied` reports it.

    The Platform takes no idempotency key, so the hub cannot count deliveries: an
    ``epoch_end`` is delivered once when one operation carries it (checked by
    :class:`PlatformChecker` as requests leave), and the hub keeps its last values. The
    uploads are the final weights the hub holds, with their digest.
    """
    record = hub.store.get_model(model_id)
    content = hub.store.open_weights(model_id, "best") if record is not None else None
    if content is None or record is None:
        return {}, []
    try:
        data = content if isinstance(content, bytes) else content.read()
    finally:
        if not isinstance(content, bytes):
            content.close()
    epoch = record.final_epoch if record.final_epoch is not None else 0
    return {}, [("final", epoch, hashlib.sha256(data).hexdigest())]
