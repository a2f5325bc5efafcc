"""The hub's domain logic: one call in, one reply out; no sockets, no wall clock.

:class:`Hub` answers the REST API of ``PROTOCOL.md`` over any :class:`~hubfsm.hub.store.Store`.
The HTTP server turns its requests into a :class:`HubCall` and sends back the
:class:`HubReply`; :meth:`Hub.handler` does the same for transport requests in the same
process (the in-memory transport). The hub also keeps an audit of what
it applied, so a simulation can check that nothing took effect twice.

This module holds the entry point: checking the key, the route and the JSON of a call,
and replaying idempotent retries. The rest of the hub is in its parts:
:mod:`hubfsm.hub.keys` (API keys), :mod:`hubfsm.hub.endpoints` (applying each call)
and :mod:`hubfsm.hub.records` (what the replies and pages show).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from hubfsm.hub.calls import (
    ALLOWED,
    ENDPOINTS,
    Audit,
    BadJson,
    HubCall,
    HubReply,
    fail,
    id_factory,
    request_digest,
    route,
    safe,
)
from hubfsm.hub.keys import UrlSigner
from hubfsm.hub.parse import check_json
from hubfsm.hub.platform import PlatformEndpoints
from hubfsm.hub.store import Store
from hubfsm.hub.stored import StoredReply
from hubfsm.transport import Handler, Request, Response

__all__ = ["Hub"]


class Hub(PlatformEndpoints):
    """The hub: models, metrics, weights and heartbeats behind API keys.

    It answers HUB v1 (``/v1/...``, :mod:`hubfsm.hub.endpoints`) and the Ultralytics
    Platform API (``/api/...``, :mod:`hubfsm.hub.platform`) over the same store.

    Thread-safe: writes are serialised by a lock, except the receiving of a weight file,
    which happens outside it so a large upload does not hold up other requests.

    Args:
        store: Where the state lives.
        clock: Seconds now (a virtual clock in simulations).
        new_id: Makes model and agent ids; by default drawn from ``random.Random(seed)``.
        seed: Seeds the default ``new_id``.
        public_root: Prefix of the weight URLs in model records, such as
            ``http://127.0.0.1:8000``.
        keys: API keys accepted from the start.
        signer: Signs the weight URLs of model records; without one they are unsigned
            ``{public_root}/files/...`` paths (simulations and tests).
    """

    #: Seconds between a client's heartbeats: the pages call a run stalled after two
    #: without a heartbeat or an upload (a class default; tests set a short one).
    heartbeat_interval: float = 300.0

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] | None = None,
        *,
        seed: int | None = 0,
        public_root: str = "",
        keys: Iterable[str] = (),
        signer: UrlSigner | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.new_id = new_id if new_id is not None else id_factory(random.Random(seed))
        self.public_root = public_root
        self.signer = signer
        # Re-entrant: the read helpers lock too, and endpoints call them under the lock.
        # A store whose database isolates requests (row locks, per-scope claims) needs no
        # lock in the process: several processes share it anyway.
        self._lock = _UNLOCKED if getattr(store, "isolates", False) else threading.RLock()
        self._metrics_applied = Counter()
        self._uploads = []
        self._heartbeats = {}
        self._requests: Counter[str] = Counter()
        self._replayed = Counter()
        self._reused = Counter()
        self._digests = {}
        self._handlers: dict[str, Callable[[HubCall, str, str | None, str | None], HubReply]] = {
            "auth": self._auth,
            "create_model": self._create,
            "get_model": self._get_model,
            "upload_metrics": self._upload_metrics,
            "get_metrics": self._get_metrics,
            "download_weights": self._download,
            "heartbeat": self._heartbeat,
        }
        for key in keys:
            self.add_key(key)

    def __repr__(self) -> str:
        return f"Hub(store={type(self.store).__name__})"

    def delete_model(self, model_id: str) -> bool:
        """Delete a model with its metrics and weights; False if there was none."""
        with self._lock:
            return self.store.delete_model(model_id)

    def audit(self) -> Audit:
        """A snapshot of what the hub applied so far."""
        with self._lock:
            return Audit(
                metrics_applied=dict(self._metrics_applied),
                uploads=tuple(self._uploads),
                heartbeats={m: tuple(t) for m, t in self._heartbeats.items()},
                requests=dict(self._requests),
                replayed=dict(self._replayed),
                reused=dict(self._reused),
            )

    def handler(self, api_key: str, *, read_file: Callable[[str], bytes]) -> Handler:
        """A handler answering transport requests as this hub, sent with ``api_key``.

        A Platform ``PUT`` to a signed URL goes to the hub by the URL's path and query,
        without the key; a Platform event's file rides along for later steps, unsent.

        Args:
            api_key: Sent as the ``x-api-key`` of every request.
            read_file: Reads a file part's bytes by path. Its errors propagate: a missing
                local file is no transport failure.
        """

        def answer(request: Request) -> Response:
            part = request.file
            path = request.path
            key: str | None = api_key
            if request.method == "PUT":
                split = urlsplit(path)
                path = split.path + (f"?{split.query}" if split.query else "")
                key = None
            elif request.json is not None:
                part = None
            reply = self.handle(
                HubCall(
                    request.method,
                    path,
                    key,
                    request.json,
                    request.fields,
                    None if part is None else part.name,
                    None if part is None else read_file(part.path),
                    request.idempotency_key,
                )
            )
            content = reply.content
            if content is not None and not isinstance(content, bytes):
                content.close()  # a download's stream: the envelope already says what it holds
            retry_after = reply.headers.get("Retry-After")
            if retry_after is None:
                return Response(reply.status, reply.body)
            try:
                seconds: float | None = float(retry_after)
            except ValueError:
                seconds = None
            return Response(reply.status, reply.body, retry_after=seconds)

        return answer

    def handle(self, call: HubCall) -> HubReply:
        """Answer one API call."""
        if call.path.startswith("/api/"):
            return self.platform_handle(call)
        if call.method == "PUT" and call.path.startswith("/uploads/"):
            # In-process callers pass a signed upload URL's path with its query.
            path, _, query = call.path.partition("?")
            return self.receive_upload(path, dict(parse_qsl(query)), call.file or b"")
        resource, model_id, kind = route(call.path)
        method = call.method
        known = ENDPOINTS.get((resource, method))
        endpoint = resource if known is None else known
        with self._lock:
            self._requests[endpoint] += 1
        principal = self.principal(call.api_key)
        if principal is None:
            return fail(401, "invalid or revoked API key" if call.api_key else "missing API key")
        if resource == "unknown":
            return fail(404, f"no such endpoint: {method} {safe(call.path[:200])}")
        if known is None:
            allowed = ALLOWED[resource]
            return fail(405, f"{method} not allowed here; use {allowed}", {"Allow": allowed})
        body = call.json
        if body is not None and type(body) is not BadJson:
            problem = check_json(body)
            if problem is not None:
                return fail(400, f"body is not valid JSON: {problem}")
        scope = None
        if method == "POST" and call.idempotency_key:
            scope = f"{principal}\x1f{call.path}\x1f{safe(call.idempotency_key)}"
        if endpoint == "upload_weights":
            return self._upload(call, principal, model_id, scope)
        handler = self._handlers[endpoint]
        digest = None if scope is None else request_digest(call)
        with self._lock, self.store.transaction():
            replay = self._replay(scope, endpoint, digest)
            if replay is not None:
                return replay
            reply = handler(call, principal, model_id, kind)
            if scope is not None and digest is not None and reply.ok:
                self.store.put_reply(scope, StoredReply(reply.status, reply.body, digest))
        return reply


class _Unlocked:
    """A lock that never waits (for stores that isolate concurrent requests themselves)."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        return None

    def __enter__(self) -> bool:
        return True

    def __exit__(self, *exc: object) -> None:
        return None


_UNLOCKED = cast("threading.RLock", _Unlocked())
