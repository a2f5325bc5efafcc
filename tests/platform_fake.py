"""A small Platform service for tests: request in, answer out (see ``HandlerTransport``).

It answers the requests the ultralytics 8.4.190 callbacks send, and keeps what it was
told, per model and run, so a test checks what landed. It also checks every request
against what the official client sends: a request outside that set is answered 400
and kept in :attr:`FakePlatform.foreign`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from hubfsm.transport import Request, Response, TransportError

#: A Platform key as the fake accepts it.
PLATFORM_KEY = "ul_" + "0123456789abcdef" * 2 + "01234567"
assert len(PLATFORM_KEY) == 43

EVENTS = "/api/webhooks/training/metrics"
UPLOAD = "/api/webhooks/models/upload"

#: The keys each request of the official client may carry, by event.
OFFICIAL_DATA = {
    "training_started": {"trainArgs", "epochs", "device", "environment", "system"},
    "epoch_end": {"epoch", "metrics", "system", "fitness", "best_fitness", "modelInfo"},
    "checkpoint_saved": {"modelPath", "runId", "uploadPath"},
    "training_complete": {"results", "classNames", "plots", "runId"},
    "console_output": {"chunkId", "content", "lineCount", "progress"},
}
OFFICIAL_UPLOAD = {"filename", "modelId", "runId", "project", "name"}


@attrs.define
class Run:
    """One run of a model, as the fake keeps it."""

    id: int
    epochs: list[int] = attrs.Factory(list)
    metrics: dict[int, dict[str, Any]] = attrs.Factory(dict)
    promoted: list[str] = attrs.Factory(list)
    complete: dict[str, Any] | None = None
    #: Every event in the order it was acknowledged.
    events: list[str] = attrs.Factory(list)


@attrs.define
class Model:
    """A model of the fake: its project, name and runs."""

    id: str
    project: str
    name: str
    runs: dict[int, Run] = attrs.Factory(dict)


@attrs.define
class FakePlatform:
    """A Platform in memory; call it with a request.

    Attributes:
        fault: Called first with each request; what it returns (a response, or a
            transport error to raise) is the answer instead.
        cancel: Answer ``cancelled: true`` to every event.
        revoked: Answer 401 to every API request (the key was revoked).
        storage: The bytes PUT to each storage path.
        foreign: Requests the official client would not send.
        log: ``(method, path or event)`` of every request answered 2xx, in order.
        puts_with_key: PUTs that came with an Authorization header (none should).
    """

    fault: Callable[[Request], Response | TransportError | None] | None = None
    #: Where the signed upload URLs point.
    storage_root: str = "https://storage.test"
    cancel: bool = False
    revoked: bool = False
    models: dict[str, Model] = attrs.Factory(dict)
    storage: dict[str, bytes] = attrs.Factory(dict)
    foreign: list[Request] = attrs.Factory(list)
    log: list[tuple[str, str]] = attrs.Factory(list)
    puts_with_key: int = 0
    _signed: dict[str, tuple[str, str]] = attrs.Factory(dict)
    _ids: Any = attrs.Factory(lambda: itertools.count(1))

    def __call__(self, request: Request) -> Response:
        if self.fault is not None:
            answer = self.fault(request)
            if isinstance(answer, TransportError):
                raise answer
            if answer is not None:
                return answer
        if request.method == "PUT":
            return self._put(request, request.file.path if request.file else None)
        if self.revoked:
            return Response(401, {"error": "Invalid API key"})
        if request.method != "POST" or request.path not in (EVENTS, UPLOAD):
            return self._foreign(request)
        body = dict(request.json or {})
        if request.path == UPLOAD:
            return self._upload(request, body)
        return self._event(request, body)

    # -- what a test reads ------------------------------------------------------------

    def run(self, model_id: str, run_id: int | None = None) -> Run:
        """A model's run (its only or last one by default)."""
        runs = self.models[model_id].runs
        return runs[run_id if run_id is not None else max(runs)]

    def only_model(self) -> Model:
        """The one model the fake holds."""
        [model] = self.models.values()
        return model

    # -- inside -----------------------------------------------------------------------

    def _foreign(self, request: Request) -> Response:
        self.foreign.append(request)
        return Response(400, {"error": "not what the official client sends"})

    def _answer(self, extra: dict[str, Any]) -> Response:
        body = {"received": True, **extra}
        if self.cancel:
            body["cancelled"] = True
        return Response(200, body)

    def _event(self, request: Request, body: dict[str, Any]) -> Response:
        event = body.get("event")
        data = body.get("data")
        allowed = {"modelId", "project", "name", "event", "data"}
        if (
            event not in OFFICIAL_DATA
            or not isinstance(data, dict)
            or set(body) - allowed
            or set(data) - OFFICIAL_DATA[event]
        ):
            return self._foreign(request)
        if event == "training_started":
            return self._started(body, data)
        model = self.models.get(body.get("modelId", ""))
        if model is None:
            return Response(404, {"error": "model not found"})
        run = model.runs[max(model.runs)]
        if event == "epoch_end":
            epoch = data["epoch"]
            run.epochs.append(epoch)
            run.metrics[epoch] = data["metrics"]
        elif event == "checkpoint_saved":
            path = data["modelPath"]
            if path not in self.storage:
                return Response(400, {"error": "nothing uploaded there"})
            run = model.runs[data["runId"]]
            run.promoted.append(path)
        elif event == "training_complete":
            run = model.runs[data["runId"]]
            run.complete = data
        run.events.append(event)
        self.log.append(("POST", event))
        return self._answer({"event": event})

    def _started(self, body: dict[str, Any], data: dict[str, Any]) -> Response:
        if "modelId" in body:
            model = self.models.get(body["modelId"])
            if model is None:
                return Response(404, {"error": "model not found"})
        else:
            model_id = f"m{next(self._ids):023d}"
            model = Model(model_id, body["project"], body["name"])
            self.models[model_id] = model
        run_id = len(model.runs) + 1
        model.runs[run_id] = Run(run_id, events=["training_started"])
        self.log.append(("POST", "training_started"))
        return self._answer(
            {
                "event": "training_started",
                "modelId": model.id,
                "runId": run_id,
                "modelUrl": f"https://platform.test/{model.project}/{model.name}",
            }
        )

    def _upload(self, request: Request, body: dict[str, Any]) -> Response:
        if set(body) - OFFICIAL_UPLOAD or "filename" not in body:
            return self._foreign(request)
        model = self.models.get(body.get("modelId", ""))
        if model is None:
            return Response(404, {"error": "model not found"})
        token = f"t{next(self._ids)}"
        path = f"models/{model.id}/{body.get('runId')}/{token}/{body['filename']}"
        self._signed[token] = (model.id, path)
        self.log.append(("POST", "upload"))
        return Response(
            200,
            {
                "uploadUrl": f"{self.storage_root}/upload/{token}?signature=sig-{token}",
                "gcsPath": path,
                "uploadPath": path,
                "modelId": model.id,
            },
        )

    def _put(self, request: Request, file: str | None) -> Response:
        token = request.path.split("/upload/", 1)[-1].split("?", 1)[0]
        signed = self._signed.get(token)
        if signed is None or file is None:
            return Response(403, {})
        content = Path(file).read_bytes()
        if request.file is not None and hashlib.sha256(content).hexdigest() != request.file.sha256:
            return Response(400, {})
        self.storage[signed[1]] = content
        self.log.append(("PUT", signed[1]))
        return Response(200, {})
