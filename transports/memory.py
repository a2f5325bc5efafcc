"""Transports without sockets: a handler function answers each request in the process.

:class:`HandlerTransport` hands each request to a function (request in, response out), as
httpx's ``MockTransport`` does; :class:`InMemoryTransport` is the same for a hub that
provides such a function (the local hub's :meth:`~hubfsm.hub.domain.Hub.handler`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hubfsm.transport import Handler, Request, Response, Transport


class HandlerTransport(Transport):
    """Hands each request to a function and returns its answer: a service in a few lines.

    Like httpx's ``MockTransport``: a test writes ``handler(request) -> Response`` (a
    fake Platform, say) and a session talks to it with no sockets. What the handler
    raises goes to the caller, as a transport's own errors do (a
    :class:`~hubfsm.transport.TransportError` for a simulated network failure).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __repr__(self) -> str:
        return f"HandlerTransport({self.handler!r})"

    def send(self, request: Request) -> Response:
        """Answer ``request`` with the handler."""
        return self.handler(request)


class Serving(Protocol):
    """A hub in the same process that answers requests sent with an API key."""

    def handler(self, api_key: str, *, read_file: Callable[[str], bytes]) -> Handler:
        """The function that answers requests sent with ``api_key``."""
        ...  # pragma: no cover - a protocol


def _read_from_disk(path: str) -> bytes:
    return Path(path).read_bytes()


class InMemoryTransport(HandlerTransport):
    """Sends each request to a hub in the same process: no sockets, no copies.

    Args:
        hub: The hub that answers, such as a :class:`~hubfsm.hub.domain.Hub`.
        api_key: Sent as the ``x-api-key`` of every request.
        read_file: Reads a file part's bytes by path; by default from disk (a simulation
            passes a dict lookup). Its errors propagate: a missing local file is no
            transport failure.
    """

    def __init__(
        self,
        hub: Serving,
        api_key: str,
        *,
        read_file: Callable[[str], bytes] | None = None,
    ) -> None:
        reader = read_file if read_file is not None else _read_from_disk
        super().__init__(hub.handler(api_key, read_file=reader))
        self.hub = hub

    def __repr__(self) -> str:
        return f"InMemoryTransport(hub={self.hub!r}, api_key='***')"
