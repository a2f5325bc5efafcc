"""The local hub's WSGI application: HTTP requests in, :class:`~hubfsm.hub.domain.Hub` calls out.

Order of work for an API request, cheapest refusal first: who the API key names (a key
the hub knows, else no one), the rate limit (a bucket per known key, one per client address
for the rest) and injected faults, then refusing a missing, unknown or revoked key (before
a byte of the body is read: such a client costs no memory and no disk), then the size of
the body against its cap, and only then the body itself, parsed as strict JSON or streamed
as a multipart upload: into the data directory, or (with an object store) on to the store
as it arrives (see :mod:`hubfsm.hub.bodies`). Pages, page data and weight files are served
by :mod:`hubfsm.hub.web`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from hubfsm.hub import downloads, web
from hubfsm.hub.access import GUARD_HEADERS, PageAccess
from hubfsm.hub.bodies import (
    BodyError,
    BodyLimits,
    Received,
    api_key_of,
    bad_length,
    bare_call,
    close_after,
    read_call,
    refuse_body,
    release,
)
from hubfsm.hub.calls import HubCall, HubReply, fail, safe
from hubfsm.hub.domain import Hub
from hubfsm.hub.summary import dumps
from hubfsm.logs import get_logger
from transports.faults import NO_FAULT, Fault, FaultMix, draw

_log = get_logger("hubfsm.hub")


#: SQLite's result code for a write the disk has no room for (``sqlite3.SQLITE_FULL``).
_SQLITE_FULL = 13

#: Seconds between two log lines of a disk that stays full (a client retries meanwhile).
DISK_FULL_EVERY = 60.0

#: Spends a token of a client's bucket kept elsewhere (a database every process shares):
#: ``(who, rate, capacity) -> (spent, tokens left)``.
SharedBuckets = Callable[[str, float, float], tuple[bool, float]]


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, bursts up to ``max(1, rate)``.

    Args:
        rate: Requests per second per client.
        clock: Seconds now (for the buckets kept in this process).
        shared: Keeps the buckets where every process of the hub counts into them (see
            :meth:`~hubfsm.hub.store_postgres.PostgresStore.take_token`); in this process
            when None.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate limit must be positive")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._shared = shared
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, who: str) -> tuple[bool, dict[str, str]]:
        """Spend one token of ``who``: (allowed, the ``X-RateLimit-*``/``Retry-After`` headers)."""
        if self._shared is not None:
            allowed, tokens = self._shared(who, self.rate, self.capacity)
        else:
            with self._lock:
                now = self._clock()
                tokens, last = self._buckets.get(who, (self.capacity, now))
                tokens = min(self.capacity, tokens + (now - last) * self.rate)
                allowed = tokens >= 1.0
                if allowed:
                    tokens -= 1.0
                self._buckets[who] = (tokens, now)
        headers = {
            "X-RateLimit-Limit": str(int(self.capacity)),
            "X-RateLimit-Remaining": str(int(tokens)),
            "X-RateLimit-Reset": str(math.ceil((self.capacity - tokens) / self.rate)),
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil((1.0 - tokens) / self.rate)))
        return allowed, headers


class HubApp:
    """The WSGI application of the local hub.

    Args:
        hub: Answers the API.
        faults: Faults to inject into API requests, or None.
        seed: Seeds the fault draws.
        rate_limit: Requests per second per API key, or None for no limit.
        hang: Seconds an injected timeout stalls before the connection is dropped.
        sleep: Waits (latency and hangs).
        limits: The largest bodies read.
        spool_dir: Where uploads are received (the data directory, so a large file is not
            written to a small temporary file system); the system's temporary directory
            when None.
        stream_uploads: Hand the store an upload's file part as it arrives
            (:class:`StreamedUpload`), not a received copy: for a store that sends it on
            (to an object store) rather than keeping the received file.
        access: Who may see the pages (see :class:`~hubfsm.hub.access.PageAccess`); loopback
            browsers only, without a sign-in, when None.
        shared_buckets: Count the rate limit where every process of the hub sees it; in
            this process when None.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        faults: FaultMix | None = None,
        seed: int = 0,
        rate_limit: float | None = None,
        hang: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        limits: BodyLimits | None = None,
        spool_dir: Path | None = None,
        access: PageAccess | None = None,
        shared_buckets: SharedBuckets | None = None,
        stream_uploads: bool = False,
    ) -> None:
        self.stream_uploads = stream_uploads
        self.hub = hub
        self.access = access
        self.faults = faults
        self.limiter = RateLimiter(rate_limit, shared=shared_buckets) if rate_limit else None
        self.hang = hang
        self.limits = limits if limits is not None else BodyLimits()
        self.spool_dir = spool_dir
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        #: When a full disk was last logged (monotonic seconds): a line a minute at most.
        self._disk_full_said: float | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Serve one WSGI request."""
        received = Received.watch(environ)
        request = Request(environ)
        started = time.perf_counter()
        fault = NO_FAULT
        path = request.path
        try:
            if path == "/v1" or path.startswith(("/v1/", "/api/")):
                fault = self._draw()
                response = self._api(request, environ, fault)
            elif path.startswith("/uploads/") and request.method == "PUT":
                response = self._put_upload(request, environ)
            else:
                response = web.serve(self.hub, request, environ, self.access, self._spend)
        except HTTPException as error:
            response = _json(fail(error.code or 400, error.description or error.name))
        except Exception as error:  # noqa: BLE001 - the server must answer, whatever broke
            if _disk_full(error):
                # Nothing is broken: the client keeps it and retries, so it hears why, and
                # the person running the hub reads it once, not once per retry.
                said, now = self._disk_full_said, time.monotonic()
                if said is None or now - said >= DISK_FULL_EVERY:
                    self._disk_full_said = now
                    _log.error("hub.disk_full", path=safe(path), detail=safe(str(error)))
                response = _json(fail(507, "the hub's disk is full"))
            else:
                kind = type(error).__name__
                _log.error("hub.error", path=safe(path), error=kind, detail=safe(str(error)))
                response = _json(fail(500, "internal error in the local hub"))
        finally:
            request.close()
        if received is not None and received.cut and response.status_code == 400:
            # Not malformed, cut: a 400 would be the hub's word that the request is wrong.
            close_after(environ)
            response = _json(received.reply())
        # Every answer, the API's too: what a page is, a browser may be tricked into opening.
        response.headers.update(GUARD_HEADERS)
        _log.info(
            "hub.request",
            method=request.method,
            path=safe(path),
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 1),
            fault=fault.kind,
        )
        return response(environ, start_response)

    def _spend(self, who: str | None, request: Request) -> tuple[bool, dict[str, str]]:
        """Spend a token of the rate limit for a request made with a key (see ``Spend``)."""
        if self.limiter is None:
            return True, {}
        # A key the hub knows has a bucket of its own (by its id: the server holds no
        # extra copy of a key). Any other (a guess, a revoked key, none) spends its
        # client address's: a bucket per guessed key let guesses through unlimited,
        # and kept one more bucket, in memory or the database, for every guess. The
        # pages' sign-in form and page actions spend it too, or guesses would go there.
        bucket = f"key {who}" if who is not None else f"addr {request.remote_addr or '-'}"
        allowed, headers = self.limiter.take(bucket)
        if not allowed:
            _log.info("hub.rate_limited", path=safe(request.path))
        return allowed, headers

    def _draw(self) -> Fault:
        if self.faults is None:
            return NO_FAULT
        with self._rng_lock:
            return draw(self.faults, self._rng)

    def _api(self, request: Request, environ: dict[str, Any], fault: Fault) -> Response:
        limit_headers: dict[str, str] = {}
        api_key = api_key_of(request)
        who = self.hub.principal(api_key)
        allowed, limit_headers = self._spend(who, request)
        if not allowed:
            refuse_body(request, environ)
            return _json(fail(429, "rate limit exceeded; retry later", limit_headers))
        if fault.latency > 0.0:
            self._sleep(fault.latency)
        if fault.kind in ("server_error", "rate_limited"):
            refuse_body(request, environ)
        if fault.kind == "server_error":
            return _json(fail(fault.status or 500, "injected server error"), limit_headers)
        if fault.kind == "rate_limited":
            retry = {"Retry-After": str(math.ceil(fault.retry_after or 1.0))}
            return _json(fail(429, "injected rate limit", retry), limit_headers)
        if fault.kind == "connection_error":
            return _drop(environ)
        if fault.kind == "timeout":
            self._sleep(self.hang)
            return _drop(environ)
        spooled: list[IO[bytes]] = []
        try:
            if who is None:
                # The hub answers 401 (and counts the call) without seeing the body.
                refuse_body(request, environ)
                call: HubCall | HubReply = bare_call(request)
            else:
                try:
                    call = read_call(
                        request, environ, spooled, self.limits, self.spool_dir, self.stream_uploads
                    )
                except BodyError as error:
                    close_after(environ)
                    call = fail(error.status, safe(str(error))[:200])
                except ValueError as error:
                    # A body the server cannot frame: a bad chunk size, a short body.
                    close_after(environ)
                    call = fail(400, f"malformed request body: {safe(str(error))[:200]}")
            try:
                reply = call if isinstance(call, HubReply) else self.hub.handle(call)
            except BodyError as error:
                # The streamed file broke off on its way to the store (which dropped it).
                close_after(environ)
                reply = fail(error.status, safe(str(error))[:200])
        finally:
            release(spooled, environ)
        if fault.kind == "lost_response":
            if reply.content is not None and not isinstance(reply.content, bytes):
                reply.content.close()
            return _drop(environ)
        return _json(reply, limit_headers) if reply.content is None else _file(reply, request)

    def _put_upload(self, request: Request, environ: dict[str, Any]) -> Response:
        """A file PUT to a signed Platform upload URL: raw bytes, streamed to staging."""
        bad = bad_length(request, environ)
        if bad is not None:
            return _json(bad)
        length = request.content_length
        if length is None:
            # Like a storage bucket's signed URL: the size comes first, so the cap holds.
            close_after(environ)
            return _json(fail(411, "a PUT upload needs a Content-Length"))
        cap = self.limits.upload
        if length > cap:
            close_after(environ)
            return _json(fail(413, f"upload larger than {cap} bytes"))
        reply = self.hub.receive_upload(request.path, request.args, request.stream)
        if not reply.ok:
            refuse_body(request, environ)
        return _json(reply)


def _disk_full(error: BaseException) -> bool:
    """True for a write the disk refused for want of room (a file, or SQLite's database)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, sqlite3.OperationalError):
        return getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL or (
            "disk is full" in str(error)
        )
    # PostgreSQL's "could not extend file": psycopg names the class after the SQLSTATE.
    return type(error).__name__ == "DiskFull"


def _json(reply: HubReply, extra: dict[str, str] | None = None) -> Response:
    response = Response(dumps(reply.body), status=reply.status, mimetype="application/json")
    response.headers.update(extra or {})
    response.headers.update(reply.headers)
    return response


def _file(reply: HubReply, request: Request) -> Response:
    data = reply.body["data"]
    content = reply.content
    assert content is not None
    return downloads.file_response(
        content, int(data["size"]), str(data["sha256"]), f"{data['kind']}.pt", request
    )


def _drop(environ: dict[str, Any]) -> Response:
    """Cut the connection so the client gets no answer; a 504 where that is impossible."""
    sock = environ.get("hubfsm.socket")
    if not isinstance(sock, socket.socket):
        return _json(fail(504, "injected lost response"))
    close_after(environ)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    # Writing this fails on the closed socket; the server takes that as a dropped connection.
    return Response(b"", status=504)
