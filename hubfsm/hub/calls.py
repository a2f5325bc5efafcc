"""The hub's calls and replies: what goes in, what comes out, and how a path is routed.

HUB v1 answers in an envelope (:func:`ok`, :func:`fail`); the Platform API with
``{"error": ...}`` (:func:`error`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeGuard

import attrs

from hubfsm.core.plain import json_text
from hubfsm.hub.keys import ALPHABET


def id_factory(rng: random.Random) -> Callable[[], str]:
    """Make 20-character ``[A-Za-z0-9]`` ids from ``rng`` (deterministic when it is seeded)."""

    def new_id() -> str:
        return "".join(rng.choices(ALPHABET, k=20))

    return new_id


def is_model_id(text: str | None) -> TypeGuard[str]:
    """True for a string shaped like a model id: 20 ASCII letters and digits."""
    return text is not None and len(text) == 20 and text.isascii() and text.isalnum()


@attrs.frozen
class BadJson:
    """Stands in for a request body that was not valid JSON, so the hub can say why."""

    reason: str


@attrs.frozen
class HubCall:
    """One API request, as the hub sees it.

    Attributes:
        method: ``GET`` or ``POST`` (others get 405).
        path: The path without query string, such as ``/v1/models/abc``.
        api_key: The ``x-api-key`` header, or None.
        json: The decoded JSON body, None without one, or :class:`BadJson`.
        fields: Multipart form fields, or None.
        file_name: The multipart file part's name (``last.pt`` or ``best.pt``), or None.
        file: The file's bytes or a binary stream of them (read in chunks), or None.
        idempotency_key: The ``Idempotency-Key`` header, or None.
    """

    method: str
    path: str
    api_key: str | None = attrs.field(default=None, repr=False)
    json: object = None
    fields: Mapping[str, str] | None = None
    file_name: str | None = None
    file: bytes | IO[bytes] | None = attrs.field(default=None, repr=False)
    idempotency_key: str | None = None


@attrs.frozen
class HubReply:
    """The hub's answer.

    Attributes:
        status: The HTTP status.
        body: The envelope ``{"success", "message", "data"}``.
        headers: Extra response headers.
        content: A downloaded file (bytes, or a stream the receiver closes), else None.
    """

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = attrs.field(factory=dict)
    content: bytes | IO[bytes] | None = attrs.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True for a 2xx reply."""
        return 200 <= self.status < 300


@attrs.frozen
class UploadEntry:
    """One applied weights upload, as the audit lists it."""

    model_id: str
    type: str
    epoch: int
    sha256: str
    size: int
    time: float
    is_best: bool = False


@attrs.frozen
class Audit:
    """What the hub applied, for invariant checks (a snapshot; it does not change later).

    Attributes:
        metrics_applied: How often each ``(model_id, epoch)`` metrics write was applied
            (idempotent replays excluded).
        uploads: Every applied weights upload, in order.
        heartbeats: The hub-clock times of each model's heartbeats.
        requests: Calls per endpoint (``unknown`` for unrouted paths), failures included.
        replayed: Idempotent replays per endpoint.
        reused: Requests refused per endpoint because their idempotency key had answered
            another request (a client must never send one).
    """

    metrics_applied: Mapping[tuple[str, int], int]
    uploads: tuple[UploadEntry, ...]
    heartbeats: Mapping[str, tuple[float, ...]]
    requests: Mapping[str, int]
    replayed: Mapping[str, int]
    reused: Mapping[str, int] = attrs.field(factory=dict)


def request_digest(call: HubCall, file_sha256: str | None = None) -> str:
    """What an idempotency key is bound to: the method, the path and the body.

    The body is the JSON (keys sorted, so the same object spelt otherwise is the same
    request), or the form fields with the file part's name and ``file_sha256``. A retry
    of one request has the same digest; another request under the same key has not.
    """
    body = call.json
    shown = ["bad json", body.reason] if isinstance(body, BadJson) else body
    fields = sorted((call.fields or {}).items())
    parts = [call.method, call.path, shown, fields, call.file_name, file_sha256]
    try:
        text = json_text(parts, sort_keys=True)
    except (TypeError, ValueError):  # keys of mixed types, or values no JSON holds
        text = repr(parts)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def safe(text: str) -> str:
    """Text with lone surrogates escaped, as logs, JSON and the store take it."""
    # Paths, headers and form fields may hold lone surrogates; logs and JSON must not
    # break (ASCII text, as nearly all is, holds none).
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def ok(message: str, data: Any = None) -> HubReply:
    """A 200 reply in the envelope."""
    body = {"success": True, "message": message, "data": {} if data is None else data}
    return HubReply(200, body)


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> HubReply:
    """An error reply in the envelope."""
    body = {"success": False, "message": message, "data": {}}
    return HubReply(status, body, headers if headers is not None else {})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> HubReply:
    """A Platform error answer: ``{"error": message}`` (HUB v1 answers :func:`fail`)."""
    return HubReply(status, {"error": message}, headers if headers is not None else {})


# (resource, method) -> endpoint name; the resource comes from the path (see route).
ENDPOINTS = {
    ("auth", "POST"): "auth",
    ("models", "POST"): "create_model",
    ("model", "GET"): "get_model",
    ("model", "POST"): "upload_metrics",
    ("metrics", "GET"): "get_metrics",
    ("upload", "POST"): "upload_weights",
    ("weights", "GET"): "download_weights",
    ("heartbeat", "POST"): "heartbeat",
}
ALLOWED = {
    resource: ", ".join(sorted(m for r, m in ENDPOINTS if r == resource))
    for resource, _ in ENDPOINTS
}


def route(path: str) -> tuple[str, str | None, str | None]:
    """Split a path into (resource, model id, weights kind); resource ``unknown`` if none fits."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] or parts[1] != "v1":
        return "unknown", None, None
    rest = parts[2:]
    size = len(rest)
    if rest[0] == "models":
        if size == 1:
            return "models", None, None
        if size == 2:
            return "model", rest[1], None
        if size == 3 and rest[2] in ("metrics", "upload"):
            return rest[2], rest[1], None
        if size == 4 and rest[2] == "weights" and rest[3] in ("last", "best"):
            return "weights", rest[1], rest[3]
    elif size == 1 and rest[0] == "auth":
        return "auth", None, None
    elif size == 4 and rest[0] == "agent" and rest[1] == "heartbeat" and rest[2] == "models":
        return "heartbeat", rest[3], None
    return "unknown", None, None
