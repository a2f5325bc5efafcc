"""The attempt deadline and the socket plumbing that enforces it.

A socket timeout bounds one operation; an attempt as a whole is bounded by a deadline,
which every send and every read of an answer is cut to. The connection pools built here
also send request bodies under the read timeout rather than the connect one.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["Deadline", "SendTimeoutAdapter"]


class Deadline:
    """When the attempt in progress must be over (monotonic seconds), or None."""

    __slots__ = ("at", "budget")

    def __init__(self) -> None:
        self.at: float | None = None
        self.budget = 0.0

    def start(self, budget: float) -> None:
        """Give the attempt that starts now ``budget`` seconds."""
        self.budget = budget
        self.at = time.monotonic() + budget

    def clear(self) -> None:
        """No attempt is in progress."""
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
        """True when an attempt is in progress and its time is up."""
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
        self, raw: Any, sock: socket.socket, deadline: Deadline, read_timeout: float
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


def _pool_classes(send_timeout: float, deadline: Deadline) -> dict[str, type[HTTPConnectionPool]]:
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


class SendTimeoutAdapter(HTTPAdapter):
    """An adapter whose sockets send under the read timeout and stop at the deadline.

    Request bodies go out under the read timeout, not the connect one. Without it, a
    server that stops reading an upload fails it after the connect timeout (10 s by
    default): too short for a slow uplink and not what the caller configured.
    """

    def __init__(self, send_timeout: float, deadline: Deadline) -> None:
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
