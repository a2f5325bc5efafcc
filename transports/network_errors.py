"""Network errors: naming what went wrong, and saying so without the API key.

requests and urllib3 wrap the socket's own error several layers deep; :func:`explain`
gives its error kind and the operating system's words for it, never the URL (which a
message must not quote). :class:`Reporter` turns a failed request into a
:class:`~hubfsm.transport.TransportError` and an ``http.error`` log line, and a redirect
(never followed) into a refusal naming where it pointed and an ``http.redirect`` warning.
Every text taken from the network passes :func:`hubfsm.masking.redact` on the way.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.exceptions import ChunkedEncodingError, ContentDecodingError
from requests.exceptions import SSLError as RequestsSSLError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from hubfsm.logs import get_logger
from hubfsm.masking import redact
from hubfsm.transport import ErrorKind, Request, TransportError
from transports.answers import redirect_envelope
from transports.deadline import Deadline
from transports.settings import Secret

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

    def explain(self, error: BaseException) -> tuple[ErrorKind, str]:
        """The error kind of a requests failure and a short reason without the URL."""
        return explain(
            error,
            host=self._netloc,
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
