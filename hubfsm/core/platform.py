"""The Ultralytics Platform dialect, and the choice between it and HUB v1.

Against the real Platform, the Platform dialect sends nothing its official client would
not send: the same endpoints, the same keys, the same event names. What it adds is order
and durability: one ``epoch_end`` per epoch, in order, each retried until acknowledged,
and ``training_complete`` only once everything before it was acknowledged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import attrs

from hubfsm.core import protocol
from hubfsm.core.config import Limits
from hubfsm.core.identifier import PLATFORM_ID, Identifier
from hubfsm.core.machine import Verdict, classify
from hubfsm.core.protocol import HUB_V1, Dialect, Opened, ProtocolName
from hubfsm.core.values import Op
from hubfsm.masking import show_untrusted
from hubfsm.transport import FilePart, Outcome, Request, Response

__all__ = [
    "DIALECTS",
    "EPOCH_FIELDS",
    "EVENTS_PATH",
    "PLATFORM",
    "PLATFORM_API_ROOT",
    "PLATFORM_KEY",
    "UPLOAD_PATH",
    "Platform",
    "choose",
]

#: A Platform API key: ``ul_`` and 40 hex digits.
PLATFORM_KEY = re.compile(r"ul_[0-9a-fA-F]{40}")

#: Where the Platform API lives unless ``ULTRALYTICS_PLATFORM_URL`` says otherwise.
PLATFORM_API_ROOT = "https://platform.ultralytics.com"

#: The one endpoint that carries every training event.
EVENTS_PATH = "/api/webhooks/training/metrics"
#: Where a checkpoint upload starts: it answers a signed URL to PUT the bytes to.
UPLOAD_PATH = "/api/webhooks/models/upload"

#: Keys of a logged metrics mapping that the Platform dialect sends beside ``metrics``
#: in an ``epoch_end`` (as the official client does), not inside it.
EPOCH_FIELDS = ("fitness", "best_fitness", "modelInfo", "system")


@attrs.frozen(repr=False)
class Platform(Dialect):
    """The Ultralytics Platform webhooks, as the ultralytics 8.4.190 callbacks send them.

    Every event is ``POST /api/webhooks/training/metrics`` with ``{modelId | project +
    name, event, data}``; a checkpoint is ``POST /api/webhooks/models/upload``, then a
    ``PUT`` of the raw bytes to the signed URL it answers, then ``checkpoint_saved``.
    """

    name: ClassVar[ProtocolName] = "platform"
    #: Epochs go one request each, as soon as the one before is acknowledged; the
    #: checkpoint limit is the official client's 900 s; no heartbeat goes on the wire.
    limits: ClassVar[Limits] = Limits(metrics=0.0, heartbeat=math.inf)
    heartbeats: ClassVar[bool] = False
    batches: ClassVar[bool] = False
    #: ``training_complete`` goes only after every earlier request was acknowledged.
    final_after_checkpoint: ClassVar[bool] = True

    def data(self, response: Response) -> Mapping[str, Any]:
        """The answer's JSON object itself: Platform has no envelope."""
        return response.body

    def metrics(self, model_id: str, batch: Mapping[int, str], *, key: str) -> Request:
        """One ``epoch_end``: the Platform takes one epoch per request."""
        if len(batch) != 1:
            raise ValueError("the Platform dialect sends one epoch per request")
        [(epoch, encoded)] = batch.items()
        return self.epoch_end(model_id, epoch, encoded, key=key)

    def checkpoint(
        self, model_id: str, run_id: int | None, epoch: int, file: FilePart, *,
        is_best: bool, key: str,
    ) -> Request:  # fmt: skip
        """Ask for a signed URL for epoch weights (step one of three)."""
        return self.upload(model_id, run_id, file, key=key)

    def final(
        self, model_id: str, run_id: int | None, epoch: int, file: FilePart, *,
        map50_95: float, key: str,
    ) -> Request:  # fmt: skip
        """Ask for a signed URL for the final weights (step one of four)."""
        return self.upload(model_id, run_id, file, key=key)

    def opening(
        self, identifier: Identifier, create: Mapping[str, Any], *, key: Callable[[], str]
    ) -> Request:
        """``training_started``: a new run in a project, or a new run of a model."""
        return self.training_started(identifier, create, key=key())

    def heartbeat(self, model_id: str, agent_id: str | None) -> Request:
        """Never called: the official client sends no liveness event."""
        raise NotImplementedError("the Platform dialect sends no heartbeats")

    def verdict(self, outcome: Outcome, *, first_contact: bool) -> Verdict:
        """As HUB's, except that a 409 is retried (as the Platform SDK does)."""
        if isinstance(outcome, Response) and outcome.status == 409:
            return Verdict.RETRY
        return classify(outcome, first_contact=first_contact)

    def cancelled(self, response: Response) -> bool:
        """``cancelled: true`` in any answer."""
        return response.ok and response.body.get("cancelled") is True

    # -- requests -------------------------------------------------------------------

    def event(
        self,
        event: str,
        data: Mapping[str, Any],
        *,
        model_id: str | None = None,
        project: str | None = None,
        name: str | None = None,
        key: str | None = None,
        file: FilePart | None = None,
    ) -> Request:
        """One training event; ``file`` rides along unsent, for the steps after it."""
        body: dict[str, Any] = {}
        if model_id is not None:
            body["modelId"] = model_id
        else:
            body["project"] = project
            body["name"] = name
        body["event"] = event
        body["data"] = finite(dict(data))
        return Request("POST", EVENTS_PATH, json=body, file=file, idempotency_key=key)

    def training_started(
        self, identifier: Identifier, data: Mapping[str, Any], *, key: str | None
    ) -> Request:
        """Open a run: a new one in a project, or a new run of an existing model."""
        if identifier.model_id is not None:
            return self.event("training_started", data, model_id=identifier.model_id, key=key)
        return self.event(
            "training_started",
            data,
            project=identifier.project,
            name=identifier.run_name,
            key=key,
        )

    def epoch_end(self, model_id: str, epoch: int, encoded: str, *, key: str) -> Request:
        """One epoch's ``epoch_end``, from the metrics as the queue keeps them."""
        metrics = json.loads(encoded)
        data: dict[str, Any] = {"epoch": epoch}
        data["metrics"] = {k: v for k, v in metrics.items() if k not in EPOCH_FIELDS}
        data.update({k: metrics[k] for k in EPOCH_FIELDS if k in metrics})
        return self.event("epoch_end", data, model_id=model_id, key=key)

    def upload(self, model_id: str, run_id: int | None, file: FilePart, *, key: str) -> Request:
        """The first step of a checkpoint upload: ask for a signed URL."""
        body: dict[str, Any] = {"filename": file.name, "modelId": model_id}
        if run_id is not None:
            body["runId"] = run_id
        return Request("POST", UPLOAD_PATH, json=body, file=file, idempotency_key=key)

    def next_step(
        self,
        request: Request,
        response: Response,
        *,
        first: Request,
        answer: Mapping[str, Any],
        final: tuple[int, FilePart, float] | None,
    ) -> Request | None:
        """Upload → PUT → ``checkpoint_saved`` (→ ``training_complete`` for the final).

        Raises:
            HubProtocolError: The upload's answer has no usable ``uploadUrl``.
        """
        file = first.file
        if file is None or first.path != UPLOAD_PATH:
            return None
        key = first.idempotency_key
        sent = first.json or {}
        model_id = sent.get("modelId")
        run_id = sent.get("runId")
        if request is first:
            url = signed_url(response.body.get("uploadUrl"), response=response)
            return Request("PUT", url, file=file, idempotency_key=key)
        if request.method == "PUT":
            data: dict[str, Any] = {"modelPath": answer.get("gcsPath"), "runId": run_id}
            if answer.get("uploadPath") is not None:
                data["uploadPath"] = answer.get("uploadPath")
            return self.event("checkpoint_saved", data, model_id=model_id, key=key)
        body = request.json or {}
        if final is not None and body.get("event") == "checkpoint_saved":
            _, _, map50_95 = final
            results = {
                "metrics": {"metrics/mAP50-95(B)": float(map50_95)},
                "modelPath": answer.get("gcsPath"),
                "modelSize": file.size,
            }
            data = {"results": results, "runId": run_id}
            return self.event("training_complete", data, model_id=model_id, key=key)
        return None

    def advance(
        self, op: Op, response: Response, *, now: float, final: tuple[int, FilePart, float] | None
    ) -> bool:
        """Go on to the next step of the upload ``op`` carries; False when it is done.

        Raises:
            HubProtocolError: The answer has no usable signed URL; ``op`` starts over
                from its first step (the caller schedules the retry).
        """
        first = op.first or op.request
        try:
            step = self.next_step(op.request, response, first=first, answer=op.answer, final=final)
        except protocol.HubProtocolError:
            op.request, op.first, op.answer = first, None, {}
            raise
        if step is None:
            return False
        if op.request is first:
            op.answer = dict(self.data(response))
        op.first = first
        op.request = step
        op.step_sends = 0
        op.round_attempts = 0
        op.round_start = now
        op.not_before = now
        return True

    def restart(self, op: Op, outcome: Outcome) -> bool:
        """A signed URL that refused the bytes, or bytes the service lost: start over."""
        if op.first is None or not self.restarts(op.request, outcome):
            return False
        op.request, op.first, op.answer = op.first, None, {}
        return True

    def restarts(self, request: Request, outcome: Outcome) -> bool:
        """A signed URL that refuses the bytes (expired, say) is asked for anew.

        So is an upload whose ``checkpoint_saved`` finds nothing under its path (404): a
        service restarted between the PUT and the event lost the bytes, not the model (a
        model that is gone answers the next step's request for a signed URL so).
        """
        if not isinstance(outcome, Response) or outcome.ok:
            return False
        if request.method == "PUT":
            return 400 <= outcome.status < 500
        event = (request.json or {}).get("event")
        return outcome.status == 404 and event == "checkpoint_saved"

    # -- answers --------------------------------------------------------------------

    def opened(self, response: Response, *, model_id: str | None) -> Opened:
        """Read the answer to ``training_started``.

        Raises:
            HubProtocolError: No model id, an id that is not one, another model's id
                on a resume, or a run id that is not a number.
        """
        body = response.body
        sent = body.get("modelId", model_id)
        if not isinstance(sent, str) or not PLATFORM_ID.fullmatch(sent):
            shown = "no model id" if sent is None else f"model id {show_untrusted(sent, limit=16)}"
            raise _breach(response, f"answered with {shown}, which is not a model id")
        if model_id is not None and sent != model_id:
            raise _breach(response, f"answered a resume of model {model_id} with another model")
        run_id = body.get("runId")
        if run_id is not None and (isinstance(run_id, bool) or not isinstance(run_id, int)):
            raise _breach(response, f"answered run id {show_untrusted(run_id, limit=16)}")
        url = body.get("modelUrl")
        # Shown to a person as it is (printed, logged): a URL, and nothing a terminal
        # would act on (escape sequences, line breaks), or none.
        if not (
            isinstance(url, str)
            and len(url) <= _MAX_URL
            and url.isprintable()
            and re.match(r"https?://", url)
        ):
            url = None
        return Opened(sent, run_id, url)

    def train_data(self, train_args: Mapping[str, Any]) -> dict[str, Any]:
        """``training_started``'s data: every argument as a string, and the epochs."""
        data: dict[str, Any] = {"trainArgs": {k: str(v) for k, v in train_args.items()}}
        epochs = train_args.get("epochs")
        if isinstance(epochs, int) and not isinstance(epochs, bool):
            data["epochs"] = epochs
        return data


#: The longest model URL shown to a person.
_MAX_URL = 2048


def _breach(response: Response, what: str) -> protocol.HubProtocolError:
    where = f"Platform at {response.origin}" if response.origin else "Platform"
    return protocol.HubProtocolError(
        f"{where} {what}; nothing was done with it", status=response.status, channel="control"
    )


def signed_url(value: Any, *, response: Response) -> str:
    """The ``uploadUrl`` of an upload answer, if it is an http(s) URL a client can request.

    Signed URLs are ASCII (their query percent-encoded), name a host and a port that is
    one, and carry no user name or password (the PUT carries no credentials but its
    own). Anything else fails every attempt the same way, so it is refused here, and
    the upload starts over for a fresh one.

    Raises:
        HubProtocolError: It is missing or not one.
    """
    if (
        isinstance(value, str)
        and re.match(r"https?://[^\s/]+", value)
        and value.isascii()
        and value.isprintable()
    ):
        try:
            parts = urlsplit(value)
            usable = bool(parts.hostname) and parts.username is None and parts.port != 0
        except ValueError:  # a port out of range or not a number, an unclosed bracket
            usable = False
        if usable:
            return value
    raise _breach(response, "answered an upload without a usable uploadUrl")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float made ``None``, as the official client sends it."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: The Platform dialect.
PLATFORM = Platform()
#: Every dialect by name.
DIALECTS: dict[str, Dialect] = {"hub": HUB_V1, "platform": PLATFORM}


def choose(
    protocol_name: str | None,
    *,
    api_key: str | None,
    identifier: str,
    platform_url: str | None,
    platform_key: str | None,
    hub_key: str | None = None,
) -> Dialect:
    """Pick the dialect: ``protocol=``, else the key's form, else the environment.

    Args:
        protocol_name: ``hub`` or ``platform`` as the caller said, or None.
        api_key: The key the caller passed, if any.
        identifier: The identifier text (``apiKey_modelId``, model URLs and model files
            are HUB's).
        platform_url: ``ULTRALYTICS_PLATFORM_URL``, if set.
        platform_key: ``ULTRALYTICS_API_KEY``, if set: a ``ul_`` key there selects
            Platform, unless ``hub_key`` (``HUB_API_KEY``) is set too.
        hub_key: ``HUB_API_KEY``, if set.

    Raises:
        ValueError: ``protocol_name`` names no dialect.
    """
    if protocol_name is not None:
        try:
            return DIALECTS[protocol_name]
        except KeyError:
            raise ValueError(
                f"unknown protocol {show_untrusted(protocol_name, limit=16)}: 'hub' or 'platform'"
            ) from None
    if api_key is not None:
        return PLATFORM if PLATFORM_KEY.fullmatch(api_key.strip()) else HUB_V1
    text = identifier.strip()
    hub_form = (
        ("://" in text and not text.startswith("ul://"))
        or re.search(r"\.(pt|ya?ml)\Z", text, re.IGNORECASE) is not None
        or ("_" in text and "/" not in text)
    )
    if hub_form:
        # A model URL, a model file or ``apiKey_modelId`` only HUB understands.
        return HUB_V1
    if text.startswith("ul://") or platform_url is not None:
        return PLATFORM
    if hub_key is None and platform_key and PLATFORM_KEY.fullmatch(platform_key.strip()):
        return PLATFORM
    return HUB_V1
