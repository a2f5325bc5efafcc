"""Naming what went wrong on the network: an error kind and a short reason.

requests and urllib3 wrap the socket's own error several layers deep; the reason given
is the operating system's words for it, never the URL (which a message must not quote).
"""

from __future__ import annotations

import socket

import requests
from requests.exceptions import ChunkedEncodingError, ContentDecodingError
from requests.exceptions import SSLError as RequestsSSLError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from hubfsm.transport import ErrorKind
from transports.deadline import Deadline

__all__ = ["explain"]


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
