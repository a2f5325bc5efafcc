"""The protocols a session speaks: what a dialect is, and HUB v1's requests as values.

States, invariants, the outbox, the journal, the driver and ``sync`` are one; a
:class:`Dialect` is what differs between two services that keep the same session: the
request builders, the answer rules, and the channels with their limits. There are two:
:data:`HUB_V1` here (the Ultralytics HUB REST API: one request builder per endpoint, no
I/O), and :data:`~hubfsm.core.platform.PLATFORM` (the Ultralytics Platform webhooks).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import attrs

from hubfsm.core.config import Limits
from hubfsm.core.identifier import Identifier
from hubfsm.core.machine import Verdict, classify
from hubfsm.core.plain import finite, json_text, plain
from hubfsm.core.values import Op
from hubfsm.errors import HubError
from hubfsm.masking import show_untrusted
from hubfsm.transport import FilePart, Outcome, Request, Response

#: What the official client calls its agent in heartbeats.
AGENT_NAME = f"python-{sys.version.split()[0]}-hubfsm"


#: What every id the hub hands out looks like: 20 ASCII letters and digits.
HUB_ID = re.compile(r"[A-Za-z0-9]{20}")


class HubProtocolError(HubError):
    """The hub answered outside the protocol (an id that is not an id, say); never retried.

    Nothing from such an answer is used: the value that broke the rules is only shown,
    cut short and escaped.
    """


def hub_id(value: Any, *, what: str, response: Response, channel: str) -> str:
    """``value`` if it is a hub id (see :data:`HUB_ID`); else a :class:`HubProtocolError`.

    Args:
        value: What the hub sent where an id belongs.
        what: What the id names, for the message (``"model id"``).
        response: The answer it came in.
        channel: The kind of request that was answered.

    Raises:
        HubProtocolError: ``value`` is missing or is not a hub id. It never names a
            path, a URL or a log field.
    """
    if isinstance(value, str) and HUB_ID.fullmatch(value):
        return value
    where = f"the hub at {response.origin}" if response.origin else "the hub"
    sent = "no " + what if value is None else f"{what} {show_untrusted(value, limit=16)}"
    raise HubProtocolError(
        f"{where} answered {response.status} with {sent}, which is not a hub id "
        "(20 ASCII letters and digits); nothing was done with it",
        status=response.status,
        channel=channel,
    )


def check_record(data: Mapping[str, Any], model_id: str | None, *, response: Response) -> None:
    """Check the model record the hub sent for a load of ``model_id``.

    Raises:
        HubProtocolError: The record's ``id`` is not a hub id, or is another model's.
    """
    if "id" not in data:
        return
    sent = hub_id(data["id"], what="model id", response=response, channel="load")
    if sent != model_id:
        where = f"the hub at {response.origin}" if response.origin else "the hub"
        raise HubProtocolError(
            f"{where} answered a load of model {model_id} with the record of another model",
            status=response.status,
            channel="load",
        )


def auth() -> Request:
    """Check the API key."""
    return Request("POST", "/v1/auth")


def get_model(model_id: str) -> Request:
    """Read a model record."""
    return Request("GET", f"/v1/models/{model_id}")


def create_model(payload: Mapping[str, Any], *, key: str | None = None) -> Request:
    """Create a model from a ``config``/``dataset``/``lineage``/``meta`` payload."""
    return Request("POST", "/v1/models", json=dict(payload), idempotency_key=key)


def upload_metrics(model_id: str, metrics: Mapping[int, str], *, key: str) -> Request:
    """Upload metrics of several epochs; each value is that epoch's JSON-encoded dict."""
    body = {"type": "metrics", "metrics": {str(e): m for e, m in metrics.items()}}
    return Request("POST", f"/v1/models/{model_id}", json=body, idempotency_key=key)


def encode_metrics(metrics: Mapping[str, Any]) -> str:
    """Encode one epoch's metrics as the hub wants them: a JSON string, strict JSON.

    NaN and infinities (a diverged loss) go as ``null``: a strict reader refuses the
    ``NaN`` that ``json.dumps`` writes by default, and with it the whole epoch.

    Raises:
        TypeError: A name is not a string (``log_metrics`` refuses those at the call;
            this meets them only in records an older version kept).
        ValueError: A value JSON cannot carry (the same).
    """
    # What JSON cannot encode is made plain here rather than lost on the worker, far
    # from the call that logged it.
    try:
        return json_text(dict(metrics), sort_keys=True, allow_nan=False, default=plain)
    except ValueError:
        made = finite(plain(dict(metrics)))
        return json_text(made, sort_keys=True, allow_nan=False)


def upload_checkpoint(
    model_id: str, epoch: int, file: FilePart, *, is_best: bool, key: str
) -> Request:
    """Upload epoch weights (``last.pt``)."""
    fields = {"epoch": str(epoch), "type": "epoch", "isBest": str(bool(is_best))}
    return Request(
        "POST", f"/v1/models/{model_id}/upload", fields=fields, file=file, idempotency_key=key
    )


def upload_final(
    model_id: str, epoch: int, file: FilePart, *, map50_95: float, key: str
) -> Request:
    """Upload the final weights (``best.pt``) with the model's mAP50-95."""
    fields = {"epoch": str(epoch), "type": "final", "map": repr(float(map50_95))}
    return Request(
        "POST", f"/v1/models/{model_id}/upload", fields=fields, file=file, idempotency_key=key
    )


def heartbeat(model_id: str, agent_id: str | None) -> Request:
    """Tell the hub the agent is alive."""
    body = {"agent": AGENT_NAME, "agentId": agent_id}
    return Request("POST", f"/v1/agent/heartbeat/models/{model_id}", json=body)


#: The training arguments the HUB v1 create body carries (its ``config`` and ``dataset``).
WIRE_ARGS = ("data", "epochs", "batch", "imgsz", "patience", "device", "cache")


def extension(
    train_args: Mapping[str, Any], tags: tuple[str, ...] = (), notes: str | None = None
) -> dict[str, Any]:
    """What a hubfsm hub keeps beside the HUB v1 create body: every argument, tags, notes.

    The HUB v1 body has room for the :data:`WIRE_ARGS` only, and none for tags or notes;
    the local hub reads this object under the body's ``hubfsm`` key (the public HUB
    never got it: its official client sent nothing of the kind).
    """
    out: dict[str, Any] = {"trainArgs": {str(k): finite(plain(v)) for k, v in train_args.items()}}
    if tags:
        out["tags"] = list(tags)
    if notes:
        out["notes"] = notes
    return out


def ended(model_id: str, agent_id: str | None, reason: str) -> Request:
    """A last heartbeat saying the run stopped before its end, and why (``Ctrl-C``, say).

    Its ``hubfsm`` field is for a hubfsm hub only (the public HUB's official client never
    sent one): the hub marks the run interrupted, where else it could only see silence.
    """
    body = {
        "agent": AGENT_NAME,
        "agentId": agent_id,
        "hubfsm": {"ended": "interrupted", "reason": reason},
    }
    return Request("POST", f"/v1/agent/heartbeat/models/{model_id}", json=body)


def create_payload(
    filename: str,
    train_args: Mapping[str, Any],
    *,
    name: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The create-model payload for a local ``.pt``/``.yaml``, as ultralytics 8.2.0 builds it.

    Values keep their JSON types as the user gave them (``cache`` a bool or a string,
    ``imgsz`` an int or a list, ``device`` as given); what the user did not give takes
    the official defaults (``batch`` -1, ``epochs`` 300, ``imgsz`` 640, ``patience``
    100, ``device`` "", ``cache`` "ram"). The model is named after the file's base name,
    so no local directory reaches the hub.

    Args:
        filename: The local model file the identifier named.
        train_args: Training arguments in ultralytics' names (``data``, ``epochs``,
            ``batch``, ``imgsz``, ``patience``, ``device``, ``cache``), as the user gave
            them: ``data`` is sent as given, not as a trainer resolved it.
        name: The model's name (``meta.name``), instead of the file's base name.
        extra: The :func:`extension` object, sent under ``hubfsm`` (None sends none).
    """
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0]
    payload: dict[str, Any] = {
        "config": {
            "batchSize": plain(train_args.get("batch", -1)),
            "epochs": plain(train_args.get("epochs", 300)),
            "imageSize": plain(train_args.get("imgsz", 640)),
            "patience": plain(train_args.get("patience", 100)),
            "device": plain(train_args.get("device", "")),
            "cache": plain(train_args.get("cache", "ram")),
        },
        "dataset": {"name": plain(train_args.get("data"))},
        "lineage": {"architecture": {"name": stem}, "parent": {}},
        "meta": {"name": name or base},
    }
    if extra is not None:
        payload["hubfsm"] = dict(extra)
    if base.lower().endswith(".pt"):
        payload["lineage"]["parent"]["name"] = base
    return payload


#: A dialect's name, as ``protocol=`` and ``--protocol`` take it and an outbox records it.
ProtocolName = Literal["hub", "platform"]


@attrs.frozen
class Opened:
    """What an answer to the opening request says of the run.

    Attributes:
        model_id: The model the events go to.
        run_id: The run of that model (Platform only).
        model_url: Where a person sees the model (Platform only; shown, never fetched).
    """

    model_id: str
    run_id: int | None = None
    model_url: str | None = None


class Dialect:
    """One protocol's requests and answer rules; see :data:`HUB_V1` and :data:`PLATFORM`.

    Attributes:
        name: ``hub`` or ``platform``.
        limits: The channels' limits the official client keeps.
        heartbeats: Whether liveness goes on the wire.
        batches: Whether several epochs' metrics go in one request.
    """

    name: ClassVar[ProtocolName]
    limits: ClassVar[Limits]
    heartbeats: ClassVar[bool]
    batches: ClassVar[bool]

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"

    #: Whether the final upload waits for a checkpoint upload under way to end.
    final_after_checkpoint: ClassVar[bool]

    def data(self, response: Response) -> Mapping[str, Any]:
        """Where an answer keeps its fields."""
        raise NotImplementedError

    def metrics(self, model_id: str, batch: Mapping[int, str], *, key: str) -> Request:
        """Send queued epochs (JSON-encoded metrics by epoch)."""
        raise NotImplementedError

    def checkpoint(
        self, model_id: str, run_id: int | None, epoch: int, file: FilePart, *,
        is_best: bool, key: str,
    ) -> Request:  # fmt: skip
        """Upload epoch weights (the first request of the upload)."""
        raise NotImplementedError

    def final(
        self, model_id: str, run_id: int | None, epoch: int, file: FilePart, *,
        map50_95: float, key: str,
    ) -> Request:  # fmt: skip
        """Upload the final weights (the first request of the upload)."""
        raise NotImplementedError

    def opening(
        self, identifier: Identifier, create: Mapping[str, Any], *, key: Callable[[], str]
    ) -> Request:
        """The request that opens the session, given a fresh idempotency key's source."""
        raise NotImplementedError

    def heartbeat(self, model_id: str, agent_id: str | None) -> Request:
        """Tell the service the trainer is alive."""
        raise NotImplementedError

    def verdict(self, outcome: Outcome, *, first_contact: bool) -> Verdict:
        """Success, a retry, or a refusal (see :func:`hubfsm.core.machine.classify`)."""
        return classify(outcome, first_contact=first_contact)

    def cancelled(self, response: Response) -> bool:
        """True when the answer says the run was cancelled by a person."""
        return False

    def advance(
        self, op: Op, response: Response, *, now: float, final: tuple[int, FilePart, float] | None
    ) -> bool:
        """Go on to the next step of a several-step upload; False when ``op`` is done.

        HUB v1 uploads in one request; see :meth:`hubfsm.core.platform.Platform.advance`.
        """
        return False

    def restart(self, op: Op, outcome: Outcome) -> bool:
        """True when a failed step starts the upload over (an expired signed URL)."""
        return False


@attrs.frozen(repr=False)
class HubV1(Dialect):
    """The Ultralytics HUB REST API (``/v1``), as ultralytics 8.2 speaks it."""

    name: ClassVar[ProtocolName] = "hub"
    limits: ClassVar[Limits] = Limits()
    heartbeats: ClassVar[bool] = True
    batches: ClassVar[bool] = True

    final_after_checkpoint: ClassVar[bool] = False

    def data(self, response: Response) -> Mapping[str, Any]:
        """The envelope's ``data``."""
        return response.data

    def metrics(self, model_id: str, batch: Mapping[int, str], *, key: str) -> Request:
        """``POST /v1/models/{id}`` with every queued epoch."""
        return upload_metrics(model_id, batch, key=key)

    def checkpoint(
        self, model_id: str, run_id: int | None, epoch: int, file: FilePart, *,
        is_best: bool, key: str,
    ) -> Request:  # fmt: skip
        """A multipart upload of ``last.pt``."""
        return upload_checkpoint(model_id, epoch, file, is_best=is_best, key=key)

    def final(
        self, model_id: str, run_id: int | None, epoch: int, file: FilePart, *,
        map50_95: float, key: str,
    ) -> Request:  # fmt: skip
        """A multipart upload of ``best.pt`` with the mAP50-95."""
        return upload_final(model_id, epoch, file, map50_95=map50_95, key=key)

    def opening(
        self, identifier: Identifier, create: Mapping[str, Any], *, key: Callable[[], str]
    ) -> Request:
        """Load the model the identifier names, or create one from ``create``."""
        if identifier.model_id is not None:
            return get_model(identifier.model_id)
        return create_model(create, key=key())

    def heartbeat(self, model_id: str, agent_id: str | None) -> Request:
        """``POST /v1/agent/heartbeat/models/{id}``."""
        return heartbeat(model_id, agent_id)


#: The HUB v1 dialect.
HUB_V1 = HubV1()
