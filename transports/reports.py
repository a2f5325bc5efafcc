"""What the HTTP transport says when a request goes wrong, always without the API key.

A failed request becomes a :class:`~hubfsm.transport.TransportError` and an ``http.error``
log line; a redirect, which is never followed, becomes a refusal naming where it pointed
and an ``http.redirect`` warning. Every text taken from the network passes
:func:`hubfsm.masking.redact` on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from hubfsm.logs import get_logger
from hubfsm.masking import redact
from hubfsm.transport import ErrorKind, Request, TransportError
from transports.answers import redirect_envelope
from transports.deadline import Deadline
from transports.failures import explain
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
