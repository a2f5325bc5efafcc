"""What comes back from a request: the hub's answer, read within limits, or a network error, named.

An answer is read as far as the protocol goes (the body within its limit, the JSON
envelope, the headers); a failure is named by its error kind and the operating system's
words, never the URL, which a message must not quote. :class:`Reporter` turns a failed
request into a :class:`~hubfsm.transport.TransportError` and an ``http.error`` log line,
and a redirect (never followed) into a refusal naming where it pointed and an
``http.redirect`` warning. Nothing taken from the network goes on without the API key
blotted out of it (see :func:`hubfsm.masking.redact`).
"""

from __future__ import annotations

import email.utils
import json
import math
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.exceptions import ChunkedEncodingError, ContentDecodingError
from requests.exceptions import SSLError as RequestsSSLError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from hubfsm.logs import get_logger
from hubfsm.masking import redact, redact_value
from hubfsm.transport import ErrorKind, RateLimit, Request, TransportError
from transports.deadline import Deadline
from transports.settings import Secret

__all__ = [
    "MAX_RESPONSE_BYTES",
    "BadAnswer",
    "decode",
    "int_header",
    "parse_retry_after",
    "rate_limit",
    "read_body",
    "redirect_envelope",
    "sanitize",
    "Reporter",
    "chain",
    "explain",
    "os_reason",
    "stalled",
]

#: The largest response body read; the API's answers are small JSON, so more means
#: trouble (a misrouted request, a hostile server), and it must not exhaust memory.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

#: How much of a redirect's ``Location`` a message quotes.
_LOCATION_CHARS = 120

#: How much of an unexpected body an error message quotes.
_SNIPPET_CHARS = 80

_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_TYPES[type(None)] = "null"


class BadAnswer(Exception):
    """An answer breaks the protocol; the message (already masked) says how."""


def sanitize(text: str, limit: int) -> str:
    """One printable line of at most ``limit`` characters."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def int_header(value: str | None) -> int | None:
    """A header's integer value, or None when it is absent or unreadable."""
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


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Read a ``Retry-After`` header as seconds from ``now`` (a POSIX timestamp).

    Accepts delta-seconds and HTTP-dates (RFC 9110); a date in the past is 0 seconds,
    and more digits than a float holds are infinity (a policy honours it only up to its
    ``max_retry_after``). Anything unreadable is None, as if the header were absent.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # float() of the text, not of int(text): that would raise past 4300 digits.
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The ``X-RateLimit-*`` headers that are present and readable, or None."""
    limit = int_header(headers.get("X-RateLimit-Limit"))
    remaining = int_header(headers.get("X-RateLimit-Remaining"))
    reset = _float_header(headers.get("X-RateLimit-Reset"))
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset=reset)


def read_body(answer: requests.Response, *, deadline: Deadline, read_timeout: float) -> bytes:
    """The whole response body, refusing one larger than :data:`MAX_RESPONSE_BYTES`.

    Raises:
        BadAnswer: The body is (or says it is) too large.
    """
    declared = int_header(answer.headers.get("Content-Length"))
    if declared is not None and declared > MAX_RESPONSE_BYTES:
        raise BadAnswer(
            f"answered {answer.status_code} with a body of {declared} bytes, over "
            f"{MAX_RESPONSE_BYTES}"
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in answer.iter_content(64 * 1024):
        deadline.cap(read_timeout)  # a session handed in has no socket cap
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise BadAnswer(
                f"answered {answer.status_code} with a body over {MAX_RESPONSE_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def redirect_envelope(
    headers: Mapping[str, str], *, secret: str | None, netloc: str
) -> tuple[str, dict[str, Any]]:
    """Where a redirect pointed (masked, one line), and its envelope, which says so.

    A redirect is never followed: the API key would go with it.
    """
    location = sanitize(redact(headers.get("Location") or "nowhere", secret), _LOCATION_CHARS)
    message = (
        f"the hub redirected to {location!r}; not followed, since the API key goes only to {netloc}"
    )
    return location, {"success": False, "message": message}


def decode(
    status: int, content_type: str | None, content: bytes, *, secret: str | None
) -> Mapping[str, Any]:
    """The JSON envelope of an answer, the key masked out; only a 2xx must have one.

    Raises:
        BadAnswer: A 2xx answer whose body is not a JSON object.
    """
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
            masked: dict[str, Any] = redact_value(value, secret)
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
    ctype = sanitize(redact(content_type or "no content-type", secret), 60)
    quote = sanitize(redact(content[:400].decode("utf-8", "replace"), secret), _SNIPPET_CHARS)
    reason = f"answered {status} with {what} ({ctype}, {len(content)} bytes), not a JSON object"
    if quote:
        reason += f": {quote!r}"
    raise BadAnswer(reason)


log = get_logger("hubfsm.http")


class Reporter:
    """Words a transport's failures and redirects for exceptions and logs.

    Args:
        root: The API root, which errors name (never a full URL).
        key: The API key to blot out of every text.
        deadline: The attempt's deadline, which decides whether a failure was a timeout.
        connect_timeout: The connect timeout a reason quotes.
        read_timeout: The read timeout a reason quotes.
    """

    def __init__(
        self,
        root: str,
        key: Secret,
        deadline: Deadline,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self._root = root
        self._netloc = urlsplit(root).netloc
        self._key = key
        self._deadline = deadline
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    def __repr__(self) -> str:
        return f"Reporter(root={self._root!r})"

    @property
    def secret(self) -> str:
        """The key, for the helpers that blot it out of what they quote."""
        return self._key.reveal()

    def redact(self, text: str) -> str:
        """``text`` without the API key or any run of 8 of its characters, wherever put."""
        return redact(text, self._key.reveal())

    def fail(self, request: Request, kind: ErrorKind, reason: str) -> TransportError:
        """Log a failed request and make its error; the message never holds the key."""
        reason = self.redact(reason)
        log.info("http.error", method=request.method, path=request.path, kind=kind, reason=reason)
        return TransportError(kind, f"{request.method} {request.path}: {reason}", url=self._root)

    def explain(self, error: BaseException, host: str | None = None) -> tuple[ErrorKind, str]:
        """The error kind of a requests failure and a short reason without the URL.

        ``host`` names the host that failed when it is not the API root's (storage's).
        """
        return explain(
            error,
            host=host or self._netloc,
            deadline=self._deadline,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
        )

    def redirected(
        self, request: Request, status: int, headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """The envelope of a redirect, which is never followed: it says where it pointed."""
        location, envelope = redirect_envelope(
            headers, secret=self._key.reveal(), netloc=self._netloc
        )
        log.warning(
            "http.redirect",
            method=request.method,
            path=request.path,
            status=status,
            location=location,
        )
        return envelope


def chain(error: BaseException) -> list[BaseException]:
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


def stalled(error: BaseException) -> bool:
    """True when a socket operation timed out after the connection was made."""
    return any(isinstance(e, (TimeoutError, ReadTimeoutError)) for e in chain(error))


def os_reason(error: BaseException) -> str:
    """The operating system's words for a network failure, or the error's class name."""
    for e in reversed(chain(error)):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return type(error).__name__


def explain(
    error: BaseException,
    *,
    host: str,
    deadline: Deadline,
    connect_timeout: float,
    read_timeout: float,
) -> tuple[ErrorKind, str]:
    """The error kind of a requests failure and a short reason without the URL.

    Args:
        error: What requests (or the socket under it) raised.
        host: The host (and port) the reason names.
        deadline: The attempt's deadline, still set: an expired one makes it a timeout.
        connect_timeout: The connect timeout, which a reason quotes.
        read_timeout: The read timeout, which a reason quotes.
    """
    if deadline.expired or (isinstance(error, TimeoutError) and "attempt's" in str(error)):
        return "timeout", f"{host} did not complete the exchange within {deadline.budget:g} s"
    if isinstance(error, requests.ConnectTimeout):
        return "connect", f"no connection to {host} within {connect_timeout:g} s"
    if isinstance(error, requests.ReadTimeout) or stalled(error):
        return "timeout", f"{host} made no progress for {read_timeout:g} s"
    if isinstance(error, (ChunkedEncodingError, ContentDecodingError)):
        return "protocol", f"{host} sent a garbled body ({os_reason(error)})"
    if isinstance(error, RequestsSSLError):
        return "tls", f"TLS with {host} failed ({os_reason(error)})"
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return "url", f"cannot request {host} ({type(error).__name__})"
    if any(isinstance(e, ConnectionRefusedError) for e in chain(error)):
        return "refused", f"{host} refused the connection (nothing listens on that port)"
    if any(isinstance(e, socket.gaierror) for e in chain(error)):
        return "dns", f"the name in {host} does not resolve ({os_reason(error)})"
    return "connect", f"cannot talk to {host} ({os_reason(error)})"
