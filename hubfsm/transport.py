"""The transport interface: request and response values, and one method to send.

A transport knows HTTP (or fakes it); it knows nothing of retries or states. The core
builds :class:`Request` values, a runner hands them to :meth:`Transport.send`, and the
:class:`Response` or :class:`TransportError` goes back to the core.

Fetching a file the hub handed out (weights to resume from) is a separate capability,
:class:`Downloader`, which a transport that knows the API key may also offer: the key
goes only where :func:`same_origin` with the API root says.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import attrs

from hubfsm.masking import one_line

#: How a request failed to get an answer. ``connect``: no connection (a route problem, a
#: dropped connection); ``refused``: the host said nothing listens on the port; ``dns``:
#: the host name does not resolve;
#: ``tls``: the TLS handshake failed (https to a plain http server, a bad certificate);
#: ``url``: the URL cannot be requested at all; ``timeout``: the hub stopped making
#: progress; ``protocol``: the answer is not the expected JSON.
ErrorKind = Literal["connect", "refused", "dns", "tls", "url", "timeout", "protocol"]


@attrs.frozen
class FilePart:
    """A file to send as one multipart part, read from disk by the transport.

    Attributes:
        name: The part's field name and file name (``last.pt`` or ``best.pt``).
        path: Where the file lies.
        size: Its size in bytes, as recorded when it was handed over.
        sha256: Its hex digest, as recorded when it was handed over.
        source: The name of the file the trainer handed over, for what people read (an
            upload's progress bar); empty when unknown. Not part of the value.
    """

    name: str
    path: str
    size: int
    sha256: str
    source: str = attrs.field(default="", eq=False, kw_only=True)


@attrs.frozen
class Request:
    """One HTTP request to the hub API, relative to the API root.

    Attributes:
        method: ``GET`` or ``POST``.
        path: The path, such as ``/v1/models/abc``.
        json: A JSON body, or None.
        fields: Multipart form fields (sent with ``file``), or None.
        file: The file part of a multipart upload, or None.
        idempotency_key: Sent as ``Idempotency-Key``; the same for every retry of one operation.
    """

    method: str
    path: str
    json: Mapping[str, Any] | None = None
    fields: Mapping[str, str] | None = None
    file: FilePart | None = None
    idempotency_key: str | None = None


@attrs.frozen
class RateLimit:
    """The ``X-RateLimit-*`` headers of a response, when the hub sent them."""

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None


@attrs.frozen
class Response:
    """What the hub answered.

    Attributes:
        status: The HTTP status code.
        body: The decoded JSON envelope (``success``, ``message``, ``data``); empty when
            the status is an error and the body was not JSON.
        retry_after: Seconds the hub asked us to wait (from ``Retry-After``), or None.
        rate_limit: The rate-limit headers, when present.
        origin: The API root that answered, to name it in messages; empty when unknown.
    """

    status: int
    body: Mapping[str, Any] = attrs.field(factory=dict)
    retry_after: float | None = None
    rate_limit: RateLimit | None = None
    origin: str = attrs.field(default="", eq=False)

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300

    @property
    def data(self) -> Mapping[str, Any]:
        """The envelope's ``data`` payload, or an empty mapping."""
        data = self.body.get("data")
        return data if isinstance(data, Mapping) else {}

    @property
    def message(self) -> str:
        """The envelope's ``message`` (Platform's error body: ``error``), or ``""``.

        As one printable line of at most 300 characters: it reaches terminals.
        """
        for field in ("message", "error"):
            message = self.body.get(field)
            if isinstance(message, str) and message:
                return one_line(message)
        return ""


class TransportError(Exception):
    """The request got no usable answer: no connection, a timeout, or a garbled body.

    Attributes:
        kind: What went wrong (see :data:`ErrorKind`).
        url: The API root the request went to, when the transport knows it.
    """

    def __init__(self, kind: ErrorKind, message: str, *, url: str | None = None) -> None:
        self.kind = kind
        self.url = url
        super().__init__(message)


Outcome = Response | TransportError


#: Answers one request: a fake service in a test, a fault wrapper, a transport's ``send``.
Handler = Callable[[Request], Response]


class Transport(abc.ABC):
    """Sends one request and returns the hub's answer."""

    @abc.abstractmethod
    def send(self, request: Request) -> Response:
        """Send ``request`` and return the response.

        Raises:
            TransportError: When no usable response arrived.
        """

    def close(self) -> None:  # noqa: B027 - most transports hold nothing
        """Release what the transport holds (connections, files)."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # an unreadable port: no origin to match
        return None
    host = (parts.hostname or "").lower()
    return (scheme, host, port) if host else None


def same_origin(url: str, root: str) -> bool:
    """True when ``url`` has the scheme, host and port of ``root`` (default ports filled in)."""
    origin = _origin(url)
    return origin is not None and origin == _origin(root)


@attrs.frozen
class Announced:
    """What the answer to a download says of its body before the body arrives.

    Attributes:
        length: Its ``Content-Length``, when given and readable.
        sha256: Its ``X-Checksum-Sha256`` in lower case, when given as 64 hex digits.
    """

    length: int | None = None
    sha256: str | None = None


class Sink(Protocol):
    """Where a download's bytes go when not to a path: a binary file, or anything that writes."""

    def write(self, data: bytes, /) -> object:
        """Take the next piece of the body."""
        ...  # pragma: no cover - a protocol


@runtime_checkable
class Downloader(Protocol):
    """Fetches a URL the hub handed out (weights, resume), the API key only where it belongs.

    The key goes only to the API root's origin (see :func:`same_origin`) and only on the
    first request: a redirect is followed by hand and never with the key. The body is
    bounded by ``max_bytes`` and the whole download, redirects included, by a deadline.
    """

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
        """Fetch ``url`` into ``dest`` and return the number of bytes written.

        Args:
            url: An ``http(s)`` URL.
            dest: A path (written owner-only to a temporary name, then renamed into
                place), or a :class:`Sink` to write into (the caller cleans up on failure).
            max_bytes: The most bytes accepted.
            hops: The most redirects followed.
            deadline: Seconds the whole download may take; None for the downloader's own.
            on_answer: Called with what the answer announces, before the body is read;
                whatever it raises ends the download and goes to the caller.

        Raises:
            TransportError: The URL is not http(s), the answer was not a 200, the body
                was too large or cut short, the deadline passed or the network failed.
                The message names the URL without its query and never holds the key.
        """
        ...  # pragma: no cover - a protocol
