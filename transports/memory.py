"""A transport that hands requests straight to an in-process hub: no sockets, no copies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from hubfsm.hub.domain import Hub, HubCall
from hubfsm.transport import Handler, Request, Response, Transport


def _read_from_disk(path: str) -> bytes:
    return Path(path).read_bytes()


class InMemoryTransport(Transport):
    """Sends each request to a :class:`~hubfsm.hub.domain.Hub` in the same process.

    Args:
        hub: The hub that answers.
        api_key: Sent as the ``x-api-key`` of every request.
        read_file: Reads a file part's bytes by path; by default from disk (a simulation
            passes a dict lookup). Its errors propagate: a missing local file is no
            transport failure.
    """

    def __init__(
        self,
        hub: Hub,
        api_key: str,
        *,
        read_file: Callable[[str], bytes] | None = None,
    ) -> None:
        self.hub = hub
        self._api_key = api_key
        self._read_file = read_file if read_file is not None else _read_from_disk

    def __repr__(self) -> str:
        return f"InMemoryTransport(hub={self.hub!r}, api_key='***')"

    def send(self, request: Request) -> Response:
        """Answer ``request`` from the hub.

        A Platform ``PUT`` to a signed URL goes to the hub by the URL's path and query,
        without the key; a Platform event's file rides along for later steps, unsent.
        """
        part = request.file
        path = request.path
        key: str | None = self._api_key
        if request.method == "PUT":
            split = urlsplit(path)
            path = split.path + (f"?{split.query}" if split.query else "")
            key = None
        elif request.json is not None:
            part = None
        reply = self.hub.handle(
            HubCall(
                request.method,
                path,
                key,
                request.json,
                request.fields,
                None if part is None else part.name,
                None if part is None else self._read_file(part.path),
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
