"""The local hub's WSGI application: HTTP requests in, :class:`~hubfsm.hub.domain.Hub` calls out.

Order of work for an API request, cheapest refusal first: the rate limit and injected
faults, then the API key (before a byte of the body is read: a keyless or revoked client
costs no memory and no disk), then the size of the body against its cap, and only then the
body itself, parsed as strict JSON or streamed as a multipart upload: into the data
directory, or (with an object store) on to the store as it arrives. Pages, page data and
weight files are served by :mod:`hubfsm.hub.web`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, cast

import attrs
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData
from werkzeug.wrappers import Request, Response

from hubfsm.hub import parse, web
from hubfsm.hub.access import PageAccess
from hubfsm.hub.calls import BadJson, HubCall, HubReply, fail
from hubfsm.hub.domain import Hub
from hubfsm.hub.summary import dumps
from hubfsm.logs import get_logger
from transports.faults import NO_FAULT, Fault, FaultMix, draw

_log = get_logger("hubfsm.hub")

#: Bodies of refused requests up to this size are read and dropped (so the connection stays
#: usable); larger ones are not read at all, and the connection is closed after the answer.
_DRAIN = 1 << 20
_CHUNK = 1 << 16
#: The most bytes of a multipart form's text fields held in memory.
_FIELD_MEMORY = 1 << 20


@attrs.frozen
class BodyLimits:
    """The largest request bodies the hub reads.

    Attributes:
        json: JSON bodies (metrics of a thousand epochs take about 1 MiB).
        upload: Multipart weight uploads (a large model's checkpoint with optimizer state).
    """

    json: int = 4 << 20
    upload: int = 4 << 30


class BodyError(ValueError):
    """A streamed request body that cannot be read to its end (cut short, too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StreamedUpload(io.RawIOBase):
    """A multipart upload decoded as the store reads it: no copy on disk or in memory.

    :meth:`head` reads the form's fields up to its first file part; reading the object
    then yields that part's bytes straight from the request, a chunk at a time, so an
    object store receives the file while the client is still sending it. Fields that
    follow the file part are not seen: every client sends its fields first.

    Args:
        source: The request body.
        boundary: The multipart boundary.
        cap: The most bytes of body read.
    """

    def __init__(self, source: IO[bytes], boundary: bytes, cap: int) -> None:
        super().__init__()
        self._source = source
        self._decoder = MultipartDecoder(boundary, _FIELD_MEMORY, max_parts=32)
        self._cap = cap
        self._taken = 0
        self._ended = False
        self._pending = bytearray()
        self._file_done = False
        self._epilogue = False
        self.fields: dict[str, str] = {}
        self.file_name: str | None = None

    def readable(self) -> bool:
        """True: this is a stream to read."""
        return True

    @property
    def finished(self) -> bool:
        """The whole body was read (its closing boundary included)."""
        return self._epilogue or self._ended

    def _event(self) -> object:
        while True:
            try:
                event = self._decoder.next_event()
            except (ValueError, RequestEntityTooLarge) as error:
                raise BodyError(400, f"malformed multipart body: {error}") from None
            if not isinstance(event, NeedData):
                return event
            if self._ended:
                raise BodyError(400, "malformed request body: it ended before its last part")
            try:
                chunk = self._source.read(_CHUNK)
            except (HTTPException, OSError) as error:  # the client went away mid-body
                raise BodyError(400, f"malformed request body: {error}") from None
            self._taken += len(chunk)
            if self._taken > self._cap:
                raise BodyError(413, f"upload larger than {self._cap} bytes")
            self._ended = not chunk
            self._decoder.receive_data(chunk or None)

    def head(self) -> None:
        """Read the fields up to the first file part (or the end of the form)."""
        name: str | None = None
        value = bytearray()
        while True:
            event = self._event()
            if isinstance(event, Field):
                name, value = event.name, bytearray()
            elif isinstance(event, Data) and name is not None:
                value += event.data
                if not event.more_data:
                    self.fields[name] = value.decode("utf-8", "replace")
                    name = None
            elif isinstance(event, File):
                self.file_name = event.name
                return
            elif isinstance(event, Epilogue):
                self._file_done = self._epilogue = True
                return

    def _rest(self) -> None:
        # Read past the parts after the file (none, from every known client) to the end,
        # so the connection can serve the next request.
        while not isinstance(self._event(), Epilogue):
            pass
        self._epilogue = True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next bytes of the file part; 0 at its end."""
        while not self._pending and not self._file_done:
            event = self._event()
            if not isinstance(event, Data):
                raise BodyError(400, "malformed multipart body: the file part broke off")
            self._pending += event.data
            self._file_done = not event.more_data
            if self._file_done:
                self._rest()
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        del self._pending[:count]
        return count


def _digest(key: str | None) -> str:
    # Rate-limit buckets are keyed by a digest, so the server holds no extra copy of a key.
    if key is None:
        return "-"
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


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

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Serve one WSGI request."""
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
                response = web.serve(self.hub, request, environ, self.access)
        except HTTPException as error:
            response = _json(fail(error.code or 400, error.description or error.name))
        except Exception as error:  # noqa: BLE001 - the server must answer, whatever broke
            kind = type(error).__name__
            _log.error("hub.error", path=_safe(path), error=kind, detail=_safe(str(error)))
            response = _json(fail(500, "internal error in the local hub"))
        finally:
            request.close()
        _log.info(
            "hub.request",
            method=request.method,
            path=_safe(path),
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 1),
            fault=fault.kind,
        )
        return response(environ, start_response)

    def _draw(self) -> Fault:
        if self.faults is None:
            return NO_FAULT
        with self._rng_lock:
            return draw(self.faults, self._rng)

    def _api(self, request: Request, environ: dict[str, Any], fault: Fault) -> Response:
        limit_headers: dict[str, str] = {}
        api_key = _api_key(request)
        if self.limiter is not None:
            allowed, limit_headers = self.limiter.take(_digest(api_key))
            if not allowed:
                _log.info("hub.rate_limited", path=_safe(request.path))
                _refuse_body(request, environ)
                return _json(fail(429, "rate limit exceeded; retry later", limit_headers))
        if fault.latency > 0.0:
            self._sleep(fault.latency)
        if fault.kind in ("server_error", "rate_limited"):
            _refuse_body(request, environ)
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
            if self.hub.principal(api_key) is None:
                # The hub answers 401 (and counts the call) without seeing the body.
                _refuse_body(request, environ)
                call: HubCall | HubReply = _bare_call(request)
            else:
                try:
                    call = self._call(request, environ, spooled)
                except BodyError as error:
                    _close_after(environ)
                    call = fail(error.status, _safe(str(error))[:200])
                except ValueError as error:
                    # A body the server cannot frame: a bad chunk size, a short body.
                    _close_after(environ)
                    call = fail(400, f"malformed request body: {_safe(str(error))[:200]}")
            try:
                reply = call if isinstance(call, HubReply) else self.hub.handle(call)
            except BodyError as error:
                # The streamed file broke off on its way to the store (which dropped it).
                _close_after(environ)
                reply = fail(error.status, _safe(str(error))[:200])
        finally:
            for each in spooled:
                if isinstance(each, StreamedUpload):
                    if not each.finished:
                        # Answered before the file was read (a refused upload): the rest
                        # of the body is not read, and the connection not reused.
                        _close_after(environ)
                    continue
                each.close()
                # Gone already when the upload was committed (renamed into place).
                Path(each.name).unlink(missing_ok=True)
        if fault.kind == "lost_response":
            if reply.content is not None and not isinstance(reply.content, bytes):
                reply.content.close()
            return _drop(environ)
        return _json(reply, limit_headers) if reply.content is None else _file(reply, request)

    def _call(
        self, request: Request, environ: dict[str, Any], spooled: list[IO[bytes]]
    ) -> HubCall | HubReply:
        """The request as a hub call, or the reply when its body cannot be one."""
        declared = request.headers.get("Content-Length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            _close_after(environ)
            return fail(400, "Content-Length must be a non-negative integer")
        multipart = request.mimetype == "multipart/form-data"
        cap = self.limits.upload if multipart else self.limits.json
        length = request.content_length
        if length is not None and length > cap:
            _close_after(environ)
            return fail(413, f"body larger than {cap} bytes")
        if not multipart:
            raw = request.stream.read(cap + 1)
            if len(raw) > cap:
                _close_after(environ)
                return fail(413, f"JSON body larger than {cap} bytes")
            body: object = None
            if raw:
                try:
                    body = parse.loads(raw)
                except ValueError as error:
                    body = BadJson(_safe(str(error)))
            return attrs.evolve(_bare_call(request), json=body)

        if self.stream_uploads:
            boundary = request.mimetype_params.get("boundary", "")
            if not boundary:
                return fail(400, "malformed multipart body: no boundary")
            streamed = StreamedUpload(request.stream, boundary.encode("latin-1"), cap)
            # A binary stream as the store reads one (io's classes are not typing.IO).
            as_file = cast("IO[bytes]", streamed)
            spooled.append(as_file)
            streamed.head()
            named = streamed.file_name
            return attrs.evolve(
                _bare_call(request),
                fields={_safe(k): _safe(v) for k, v in streamed.fields.items()},
                file_name=None if named is None else _safe(named),
                file=None if named is None else as_file,
            )

        def factory(
            total_content_length: int | None,
            content_type: str | None,
            filename: str | None,
            content_length: int | None = None,
        ) -> IO[bytes]:
            # Received straight into the store's staging folder: a store that finds it there
            # hashes it in place and renames it into place, with no second copy.
            spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by the caller
                dir=self.spool_dir, suffix=".part", delete=False
            )
            spooled.append(spool)
            return spool

        parser = FormDataParser(
            factory,
            max_form_memory_size=1 << 20,  # text fields; above the parser's read size
            max_content_length=cap,
            silent=False,
            max_form_parts=32,
        )
        try:
            _, form, files = parser.parse_from_environ(environ)
        except RequestEntityTooLarge:
            _close_after(environ)
            return fail(413, f"upload larger than {cap} bytes, or too many form parts")
        except ValueError as error:
            return fail(400, f"malformed multipart body: {_safe(str(error))}")
        fields = {_safe(k): _safe(v) for k, v in form.items()}
        file_name: str | None = None
        file: IO[bytes] | None = None
        for name, storage in files.items(multi=True):
            file_name, file = _safe(name), storage.stream  # one file part; further ones ignored
            break
        if file is not None:
            file.seek(0)
        return attrs.evolve(_bare_call(request), fields=fields, file_name=file_name, file=file)

    def _put_upload(self, request: Request, environ: dict[str, Any]) -> Response:
        """A file PUT to a signed Platform upload URL: raw bytes, streamed to staging."""
        declared = request.headers.get("Content-Length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            _close_after(environ)
            return _json(fail(400, "Content-Length must be a non-negative integer"))
        length = request.content_length
        if length is None:
            # Like a storage bucket's signed URL: the size comes first, so the cap holds.
            _close_after(environ)
            return _json(fail(411, "a PUT upload needs a Content-Length"))
        cap = self.limits.upload
        if length > cap:
            _close_after(environ)
            return _json(fail(413, f"upload larger than {cap} bytes"))
        reply = self.hub.receive_upload(request.path, request.args, request.stream)
        if not reply.ok:
            _refuse_body(request, environ)
        return _json(reply)


def _api_key(request: Request) -> str | None:
    """The key a request bears: ``x-api-key`` on HUB v1, ``Authorization: Bearer`` on Platform."""
    if request.path.startswith("/api/"):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


def _bare_call(request: Request) -> HubCall:
    headers = request.headers
    return HubCall(
        request.method,
        request.path,
        _api_key(request),
        idempotency_key=headers.get("Idempotency-Key"),
    )


def _safe(text: str) -> str:
    # Paths, headers and form fields may hold lone surrogates; logs and JSON must not break.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _close_after(environ: dict[str, Any]) -> None:
    close = environ.get("hubfsm.close_connection")
    if callable(close):
        close()


def _refuse_body(request: Request, environ: dict[str, Any]) -> None:
    """Drop a refused request's body: read (not kept) when small, else close the connection."""
    length = request.content_length
    if length is None and request.headers.get("Transfer-Encoding") is None:
        return
    if length is None or length > _DRAIN:
        _close_after(environ)
        return
    try:
        stream = request.stream
        while stream.read(_CHUNK):
            pass
    except (ValueError, OSError):
        _close_after(environ)


def _json(reply: HubReply, extra: dict[str, str] | None = None) -> Response:
    response = Response(dumps(reply.body), status=reply.status, mimetype="application/json")
    response.headers.update(extra or {})
    response.headers.update(reply.headers)
    return response


def _file(reply: HubReply, request: Request) -> Response:
    data = reply.body["data"]
    content = reply.content
    assert content is not None
    return web.file_response(
        content, int(data["size"]), str(data["sha256"]), f"{data['kind']}.pt", request
    )


def _drop(environ: dict[str, Any]) -> Response:
    """Cut the connection so the client gets no answer; a 504 where that is impossible."""
    sock = environ.get("hubfsm.socket")
    if not isinstance(sock, socket.socket):
        return _json(fail(504, "injected lost response"))
    _close_after(environ)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    # Writing this fails on the closed socket; the server takes that as a dropped connection.
    return Response(b"", status=504)
