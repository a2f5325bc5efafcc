"""The HTTP transport: the hub's REST API over a pooled ``requests`` session.

It sends what the core asks for and reports what came back, nothing more: no retries
(the retry policy decides those), no redirects (the API key must not follow one to another
host), and no exception but :class:`~hubfsm.transport.TransportError` for anything that
goes wrong on the network.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from http.client import HTTPException
from typing import Any, TextIO
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.exceptions import ChunkedEncodingError, ContentDecodingError
from requests.exceptions import SSLError as RequestsSSLError
from tqdm import tqdm
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from hubfsm.core.retry import parse_retry_after
from hubfsm.logs import get_logger
from hubfsm.masking import redact, redact_value
from hubfsm.transport import (
    Announced,
    ErrorKind,
    RateLimit,
    Request,
    Response,
    Sink,
    Transport,
    TransportError,
)
from hubfsm.version import __version__
from transports.multipart import FileChangedError, FileReadError, MultipartBody

__all__ = [
    "API_ROOT_ENV",
    "DEFAULT_API_ROOT",
    "MAX_RESPONSE_BYTES",
    "MIN_UPLOAD_RATE",
    "RequestsTransport",
]

#: Where the hub's API lives unless told otherwise.
DEFAULT_API_ROOT = "https://api.ultralytics.com"

#: The environment variable that overrides :data:`DEFAULT_API_ROOT`.
API_ROOT_ENV = "ULTRALYTICS_HUB_API"

#: The largest response body read; the API's answers are small JSON, so more means
#: trouble (a misrouted request, a hostile server), and it must not exhaust memory.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

#: The slowest upload rate (bytes per second) an attempt's deadline allows for: about
#: 2 Mbit/s, so that a slow but working uplink still gets large checkpoints through.
MIN_UPLOAD_RATE = 250_000

#: How much of a redirect's ``Location`` a message quotes.
_LOCATION_CHARS = 120

#: The smallest upload whose speed is logged.
_SPEED_BYTES = 1_000_000

#: How much of an unexpected body an error message quotes.
_SNIPPET_CHARS = 80

_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_TYPES[type(None)] = "null"

log = get_logger("hubfsm.http")


class _Secret:
    """A string that never shows itself in a repr or str, so not in ``vars()`` dumps either."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The string itself, for the one header that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def _is_loopback(host: str) -> bool:
    """True when ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class _Deadline:
    """When the attempt in progress must be over (monotonic seconds), or None."""

    __slots__ = ("at", "budget")

    def __init__(self) -> None:
        self.at: float | None = None
        self.budget = 0.0

    def start(self, budget: float) -> None:
        self.budget = budget
        self.at = time.monotonic() + budget

    def clear(self) -> None:
        self.at = None

    def cap(self, timeout: float) -> float:
        """``timeout``, cut to what is left of the attempt; past the deadline, a timeout."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the attempt's {self.budget:g} s are up")
        return min(timeout, left)

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


def _arm(sock: socket.socket | None, timeout: float) -> None:
    # urllib3 leaves the connect timeout on the socket while the request goes out; the
    # read timeout is the one meant for a peer that stops making progress.
    if sock is not None and sock.gettimeout() != timeout:
        sock.settimeout(timeout)


class _DeadlineReader(io.RawIOBase):
    """A response's socket reader whose every read is cut to what is left of the attempt.

    A socket timeout bounds one read; a server that sends a byte every few seconds never
    trips it. Cutting each read's timeout to the attempt's remaining time does.
    """

    def __init__(
        self, raw: Any, sock: socket.socket, deadline: _Deadline, read_timeout: float
    ) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline
        self._read_timeout = read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        _arm(self._sock, self._deadline.cap(self._read_timeout))
        result: int | None = self._raw.readinto(buffer)
        return result

    def close(self) -> None:
        if not self.closed:
            self._raw.close()  # lets the socket go when its connection has closed it
        super().close()


def _pool_classes(send_timeout: float, deadline: _Deadline) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pool classes whose sockets send with ``send_timeout`` within ``deadline``."""

    class _Response(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            raw = self.fp.detach()  # the socket reader, without closing it
            self.fp = io.BufferedReader(_DeadlineReader(raw, sock, deadline, send_timeout))

    class _HTTPConnection(HTTPConnection):
        response_class = _Response

        def send(self, data: Any) -> None:
            _arm(self.sock, deadline.cap(send_timeout))
            super().send(data)

    class _HTTPSConnection(HTTPSConnection):
        response_class = _Response

        def send(self, data: Any) -> None:
            _arm(self.sock, deadline.cap(send_timeout))
            super().send(data)

    class _HTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = _HTTPConnection

    class _HTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPSConnection

    return {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class _SendTimeoutAdapter(HTTPAdapter):
    """An adapter whose sockets send under the read timeout and stop at the deadline.

    Request bodies go out under the read timeout, not the connect one. Without it, a
    server that stops reading an upload fails it after the connect timeout (10 s by
    default): too short for a slow uplink and not what the caller configured.
    """

    def __init__(self, send_timeout: float, deadline: _Deadline) -> None:
        # Before super(), which builds the pool manager.
        self._send_timeout = send_timeout
        self._deadline = deadline
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """Build the pool manager with the send-timeout pools."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._send_timeout, self._deadline)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception it wraps: causes, contexts, reasons and arguments."""
    seen: list[BaseException] = []
    stack = [error]
    while stack:
        current = stack.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        if isinstance(current, ConnectTimeoutError) and not isinstance(
            current,
            NewConnectionError,  # which urllib3 derives from ConnectTimeoutError
        ):
            continue  # the socket timeout under it is a connect failure, not a stall
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(current.args)
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return seen


def _stalled(error: BaseException) -> bool:
    """True when a socket operation timed out after the connection was made."""
    return any(isinstance(e, (TimeoutError, ReadTimeoutError)) for e in _chain(error))


def _os_reason(error: BaseException) -> str:
    """The operating system's words for a network failure, or the error's class name."""
    for e in reversed(_chain(error)):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return type(error).__name__


def _sanitize(text: str, limit: int) -> str:
    """One printable line of at most ``limit`` characters."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def _int_header(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None


def _float_header(value: str | None) -> float | None:
    try:
        number = float(value.strip()) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The ``X-RateLimit-*`` headers that are present and readable, or None."""
    limit = _int_header(headers.get("X-RateLimit-Limit"))
    remaining = _int_header(headers.get("X-RateLimit-Remaining"))
    reset = _float_header(headers.get("X-RateLimit-Reset"))
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset=reset)


class _Sent:
    """Counts body bytes handed to the socket, and moves the progress bar along."""

    def __init__(self) -> None:
        self.bytes = 0
        self.bar: tqdm[Any] | None = None

    def __call__(self, count: int) -> None:
        self.bytes += count
        if self.bar is not None:
            self.bar.update(count)


class RequestsTransport(Transport):
    """Sends hub API requests over HTTP(S) with ``requests``.

    One session (so one connection pool) serves every request. Every request carries the
    API key in ``x-api-key``, a ``User-Agent`` naming hubfsm, and the request's
    ``Idempotency-Key`` when it has one. Uploads are streamed from disk as
    ``multipart/form-data`` with a ``Content-Length``, a read buffer at a time; final
    uploads show a progress bar of the bytes sent.

    Timeouts: ``connect_timeout`` (default 10 s) bounds opening a connection; a healthy
    hub accepts in well under a second, and a dead route should fail fast so the retry
    policy can take over. ``read_timeout`` (default 60 s) bounds every later socket
    operation without progress, sending the request body included; it is generous because
    the hub may store a large checkpoint before it answers, yet a stalled connection
    still fails within a minute instead of hanging training forever. A server can make a
    little progress now and then (a byte every few seconds) and never trip it, so every
    attempt also has a total deadline: ``total_timeout`` (default 120 s), plus, for an
    upload, its size at ``min_upload_rate`` (default 250 kB/s). Past it the attempt
    fails as a ``timeout``, which the retry policy retries.

    Trust: nothing in an answer is believed beyond the protocol. Redirects are not
    followed (the key would go with them): a 3xx comes back as a refusal naming where it
    pointed. Bodies over :data:`MAX_RESPONSE_BYTES` are a protocol error. The key, and
    any run of 8 or more of its characters, is blotted out of every text taken from an
    answer (the JSON body, headers quoted in messages) before it reaches an exception,
    a log line or the caller.

    Not safe for concurrent use from several threads: a runner sends from one worker.

    Args:
        api_key: The hub API key. Surrounding whitespace is dropped.
        api_root: The API root URL; default ``$ULTRALYTICS_HUB_API``, else
            :data:`DEFAULT_API_ROOT`.
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds any later socket operation may go without progress.
        total_timeout: Seconds an attempt may take in all (an upload gets more, see
            ``min_upload_rate``).
        min_upload_rate: Bytes per second an upload's deadline allows for.
        allow_insecure: Allow plain ``http://`` to a host other than this machine.
        progress: Progress bar for final uploads: True on, False off, None (default) on
            when standard error is a terminal.
        session: A session to use instead of a new one, for custom TLS or proxy settings.
            It is used as it is (its body sends then keep requests' own timeout, the
            connect timeout, and the attempt's deadline is checked only between the
            chunks of an answer), except that certificates are always verified, and
            :meth:`close` leaves it open: its owner closes it. A session made here for a
            plain ``http://`` root ignores proxy settings from the environment, so a
            clear-text key does not leave through a proxy.
        progress_file: Where the progress bar goes; default standard error.

    Raises:
        ValueError: The key is empty or malformed, the root is not an http(s) URL, a
            timeout is not positive, or the root is plain ``http://`` to another machine
            without ``allow_insecure``.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_root: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        total_timeout: float = 120.0,
        min_upload_rate: float = MIN_UPLOAD_RATE,
        allow_insecure: bool = False,
        progress: bool | None = None,
        session: requests.Session | None = None,
        progress_file: TextIO | None = None,
    ) -> None:
        key = api_key.strip()
        # A header value with a line break or a space would be rejected by requests with
        # the value, i.e. the key, in the message; refuse it here without it.
        if not key or not key.isascii() or not key.isprintable() or " " in key:
            raise ValueError("the API key is empty or holds spaces, control or non-ASCII chars")
        self._key = _Secret(key)
        root = api_root if api_root is not None else os.environ.get(API_ROOT_ENV) or ""
        root = (root.strip() or DEFAULT_API_ROOT).rstrip("/")
        parts = urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API root {self._redact(root)!r} is not an http:// or https:// URL")
        try:
            port_ok = parts.port != 0  # reading the port checks it
        except ValueError:
            port_ok = False
        if not port_ok:
            raise ValueError(
                f"API root {self._redact(root)!r} has an invalid port (a number from 1 to 65535)"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(
                f"the API root for {parts.hostname} must not have credentials, a query or "
                "a fragment"
            )
        if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname):
            raise ValueError(
                f"refusing plain http:// to {parts.hostname}: the API key would travel in "
                "clear text; use https://, or pass allow_insecure=True if you trust every "
                "network between here and there"
            )
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("total_timeout", total_timeout),
            ("min_upload_rate", min_upload_rate),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, not {value!r}")
        self._root = root
        self._connect_timeout = float(connect_timeout)
        self._read_timeout = float(read_timeout)
        self._total_timeout = float(total_timeout)
        self._min_upload_rate = float(min_upload_rate)
        self._deadline = _Deadline()
        self._progress = progress
        self._progress_file = progress_file
        self._user_agent = f"hubfsm/{__version__} python-requests/{requests.__version__}"
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = _SendTimeoutAdapter(self._read_timeout, self._deadline)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            if parts.scheme == "http":
                # Environment proxies would carry a clear-text key off this machine.
                session.trust_env = False
        self._session = session

    @property
    def api_root(self) -> str:
        """The API root every request path is appended to."""
        return self._root

    def __repr__(self) -> str:
        return (
            f"RequestsTransport(api_root={self._root!r}, connect_timeout="
            f"{self._connect_timeout}, read_timeout={self._read_timeout})"
        )

    def close(self) -> None:
        """Close the session's connections, if this transport made the session."""
        if self._owns_session:
            self._session.close()

    def send(self, request: Request) -> Response:
        """Send ``request`` and return the hub's answer, whatever its status.

        Raises:
            TransportError: ``connect`` when the hub cannot be reached, ``timeout`` when
                it stops answering (or reading) for ``read_timeout``, ``protocol`` when a
                2xx answer is not a JSON object, the body is garbled, or the upload's
                file changed size since it was handed over.
            FileNotFoundError: The upload's file is gone (and any other :class:`OSError`
                reading it): the caller's problem, not the network's.
            ValueError: The request is malformed (a relative path; JSON and form fields).
        """
        if not request.path.startswith("/"):
            raise ValueError(f"request path {request.path!r} must start with '/'")
        if request.fields is None and request.file is None:
            return self._exchange(request, None)
        if request.json is not None:
            raise ValueError("a request carries either JSON or form fields, not both")
        sent = _Sent()
        try:
            body = MultipartBody(request.fields or {}, request.file, on_sent=sent)
        except FileChangedError as error:
            raise self._fail(request, "protocol", str(error)) from None
        with body:
            sent.bar = self._progress_bar(request, len(body))
            started = time.monotonic()
            try:
                response = self._exchange(request, body)
            finally:
                if sent.bar is not None:
                    sent.bar.close()
            seconds = time.monotonic() - started
            log.info(
                "http.upload",
                path=request.path,
                file=request.file.name if request.file is not None else None,
                bytes=sent.bytes,
                seconds=round(seconds, 3),
                # A speed is only telling for a body big enough to outlast the round trip.
                mb_per_s=(
                    round(sent.bytes / 1e6 / seconds, 1)
                    if seconds > 0 and sent.bytes >= _SPEED_BYTES
                    else None
                ),
                status=response.status,
            )
        return response

    def download(
        self,
        url: str,
        dest: str | os.PathLike[str] | Sink,
        *,
        max_bytes: int,
        hops: int = 5,
        deadline: float | None = None,
        on_answer: Callable[[Announced], None] | None = None,
    ) -> int:
        """Fetch a URL the hub handed out (weights, resume) into ``dest``.

        The API key goes only to the API root's origin (scheme, host and port), on the
        first request only; redirects are followed by hand, ``hops`` at most, never with
        the key. This is :class:`hubfsm.transport.Downloader`, done by
        :class:`transports.downloads.HttpDownloader` with this transport's key, root and
        timeouts, on a session of its own (unless one was handed in), so it may run while
        the transport sends from another thread.

        Args:
            url: An ``http(s)`` URL.
            dest: A path (written owner-only to a temporary name, then renamed into
                place), or a binary file (any :class:`~hubfsm.transport.Sink`) to write into.
            max_bytes: The most bytes accepted (the size the record states, say).
            hops: The most redirects followed.
            deadline: Seconds the whole download may take; default ``total_timeout``
                plus ``max_bytes`` at ``min_upload_rate``.
            on_answer: Called with what the answer announces, before the body is read.

        Returns:
            The number of bytes written.

        Raises:
            TransportError: The download failed, was too large, or redirected too often.
        """
        # Imported here: the downloader builds on this module's socket plumbing.
        from transports.downloads import HttpDownloader

        downloader = HttpDownloader(
            api_root=self._root,
            api_key=self._key.reveal(),
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            deadline=self._total_timeout + max_bytes / self._min_upload_rate,
            session=None if self._owns_session else self._session,
            user_agent=self._user_agent,
        )
        return downloader.download(
            url, dest, max_bytes=max_bytes, hops=hops, deadline=deadline, on_answer=on_answer
        )

    def _progress_bar(self, request: Request, total: int) -> tqdm[Any] | None:
        if request.fields is None or request.fields.get("type") != "final":
            return None
        enabled = self._progress
        if enabled is None:
            enabled = sys.stderr is not None and sys.stderr.isatty()
        if not enabled:
            return None
        name = request.file.name if request.file is not None else "final"
        return tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"Uploading {name}",
            file=self._progress_file if self._progress_file is not None else sys.stderr,
        )

    def _headers(self, request: Request, body: MultipartBody | None) -> dict[str, str]:
        headers = {
            "x-api-key": self._key.reveal(),
            "User-Agent": self._user_agent,
            "Accept": "application/json",
        }
        if request.idempotency_key is not None:
            headers["Idempotency-Key"] = request.idempotency_key
        if body is not None:
            headers["Content-Type"] = body.content_type
        return headers

    def _exchange(self, request: Request, body: MultipartBody | None) -> Response:
        """Send the request, read the whole answer, and map it to a Response."""
        session = self._session
        # Preparing can fail only on a malformed request (say, JSON that cannot be
        # encoded): a bug to surface as is, outside the network error mapping below.
        prepared = session.prepare_request(
            requests.Request(
                request.method,
                self._root + request.path,
                headers=self._headers(request, body),
                json=dict(request.json) if request.json is not None else None,
                data=body,
            )
        )
        # Certificate checks stay on even if a handed-in session switched them off; a
        # custom CA bundle (a path) is kept.
        verify: bool | str = session.verify if isinstance(session.verify, str) else True
        settings = session.merge_environment_settings(prepared.url or "", {}, True, verify, None)
        started = time.monotonic()
        budget = self._total_timeout + (len(body) / self._min_upload_rate if body else 0.0)
        self._deadline.start(budget)
        try:
            answer = session.send(
                prepared,
                timeout=(self._connect_timeout, self._read_timeout),
                allow_redirects=False,
                **settings,
            )
            try:
                content = self._read(request, answer)
            finally:
                answer.close()
        except FileChangedError as error:
            raise self._fail(request, "protocol", str(error)) from None
        except FileReadError as error:
            raise error.error from None
        except requests.RequestException as error:
            kind, reason = self._explain(error)
            # Not chained: the library's exception may quote what the server sent.
            raise self._fail(request, kind, reason) from None
        except (OSError, HTTPException, urllib3.exceptions.HTTPError) as error:
            # requests wraps these; this is for the odd one a future version lets through.
            kind, reason = self._explain(error)
            raise self._fail(request, kind, reason) from None
        finally:
            self._deadline.clear()
        status = answer.status_code
        if 300 <= status < 400:
            envelope: Mapping[str, Any] = self._redirected(request, status, answer.headers)
        else:
            envelope = self._decode(request, status, answer.headers.get("Content-Type"), content)
        response = Response(
            status=status,
            body=envelope,
            retry_after=parse_retry_after(answer.headers.get("Retry-After"), now=time.time()),
            rate_limit=_rate_limit(answer.headers),
            origin=self._root,
        )
        log.debug(
            "http.response",
            method=request.method,
            path=request.path,
            status=status,
            bytes=len(content),
            ms=round((time.monotonic() - started) * 1000, 1),
            retry_after=response.retry_after,
        )
        return response

    def _redirected(
        self, request: Request, status: int, headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """The envelope of a redirect, which is never followed: it says where it pointed."""
        location = _sanitize(self._redact(headers.get("Location") or "nowhere"), _LOCATION_CHARS)
        message = (
            f"the hub redirected to {location!r}; not followed, since the API key goes "
            f"only to {urlsplit(self._root).netloc}"
        )
        log.warning(
            "http.redirect",
            method=request.method,
            path=request.path,
            status=status,
            location=location,
        )
        return {"success": False, "message": message}

    def _read(self, request: Request, answer: requests.Response) -> bytes:
        """The whole response body, refusing one larger than :data:`MAX_RESPONSE_BYTES`."""
        declared = _int_header(answer.headers.get("Content-Length"))
        if declared is not None and declared > MAX_RESPONSE_BYTES:
            raise self._fail(
                request,
                "protocol",
                f"answered {answer.status_code} with a body of {declared} bytes, over "
                f"{MAX_RESPONSE_BYTES}",
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in answer.iter_content(64 * 1024):
            self._deadline.cap(self._read_timeout)  # a server handed in has no socket cap
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise self._fail(
                    request,
                    "protocol",
                    f"answered {answer.status_code} with a body over {MAX_RESPONSE_BYTES} bytes",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _explain(self, error: BaseException) -> tuple[ErrorKind, str]:
        """The error kind of a requests failure and a short reason without the URL."""
        host = urlsplit(self._root).netloc
        if self._deadline.expired or (
            isinstance(error, TimeoutError) and "attempt's" in str(error)
        ):
            budget = self._deadline.budget
            return "timeout", f"{host} did not complete the exchange within {budget:g} s"
        if isinstance(error, requests.ConnectTimeout):
            return "connect", f"no connection to {host} within {self._connect_timeout:g} s"
        if isinstance(error, requests.ReadTimeout) or _stalled(error):
            return "timeout", f"{host} made no progress for {self._read_timeout:g} s"
        if isinstance(error, (ChunkedEncodingError, ContentDecodingError)):
            return "protocol", f"{host} sent a garbled body ({_os_reason(error)})"
        if isinstance(error, RequestsSSLError):
            return "tls", f"TLS with {host} failed ({_os_reason(error)})"
        if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
            return "url", f"cannot request {host} ({type(error).__name__})"
        if any(isinstance(e, ConnectionRefusedError) for e in _chain(error)):
            return "refused", f"{host} refused the connection (nothing listens on that port)"
        return "connect", f"cannot talk to {host} ({_os_reason(error)})"

    def _fail(self, request: Request, kind: ErrorKind, reason: str) -> TransportError:
        """Log a failed request and make its error; the message never holds the key."""
        reason = self._redact(reason)
        log.info("http.error", method=request.method, path=request.path, kind=kind, reason=reason)
        return TransportError(kind, f"{request.method} {request.path}: {reason}", url=self._root)

    def _decode(
        self, request: Request, status: int, content_type: str | None, content: bytes
    ) -> Mapping[str, Any]:
        """The JSON envelope of an answer; only a 2xx answer must have one."""
        value: Any = None
        valid = False
        if content:
            try:
                value = json.loads(content)
                valid = True
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                pass
        if isinstance(value, dict):
            try:
                # Whatever the hub says goes on to messages and logs: never the key.
                masked: dict[str, Any] = redact_value(value, self._secret())
                return masked
            except RecursionError:
                value, valid = None, False
        if not 200 <= status < 300:
            return {}  # the status says it all; an error page is no protocol breach
        if not content:
            what = "an empty body"
        elif not valid:
            what = "invalid JSON"
        else:
            what = f"a JSON {_JSON_TYPES.get(type(value), 'value')}"
        ctype = _sanitize(self._redact(content_type or "no content-type"), 60)
        quote = _sanitize(self._redact(content[:400].decode("utf-8", "replace")), _SNIPPET_CHARS)
        reason = f"answered {status} with {what} ({ctype}, {len(content)} bytes), not a JSON object"
        if quote:
            reason += f": {quote!r}"
        raise self._fail(request, "protocol", reason)

    def _secret(self) -> str | None:
        key = getattr(self, "_key", None)
        return key.reveal() if isinstance(key, _Secret) else None

    def _redact(self, text: str) -> str:
        """``text`` without the API key or any run of 8 of its characters, wherever put."""
        return redact(text, self._secret())
