"""The HTTP transport for the Platform dialect: Bearer auth, JSON events, signed-URL PUTs.

The same transport as HUB's (:class:`~transports.http.RequestsTransport`: one pooled
session, its timeouts and deadlines, no redirects followed, the key blotted out of every
answer), with the Platform's ways:

- the key goes as ``Authorization: Bearer ul_...`` and only to the API root;
- requests carry no ``Idempotency-Key``: the official client sends none, and a retried
  event names its epoch or step, so the service can tell a repeat;
- a ``PUT`` to an absolute URL is the checkpoint bytes going to the signed URL the API
  handed out: raw (``application/octet-stream``, not multipart), streamed from disk with
  a ``Content-Length``, its size and SHA-256 checked against the hand-over before the
  last byte leaves, and never with the key nor a redirect followed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import attrs

from hubfsm.transport import FilePart, Request, Response
from transports.http import RequestsTransport
from transports.settings import _is_loopback
from transports.uploads import FileChangedError, MultipartBody

__all__ = ["PlatformTransport", "RawBody"]


class RawBody(MultipartBody):
    """A file's bytes as a request body, streamed from disk, its length known in advance.

    The bytes are hashed as they go, and the last piece is held back until the whole
    file's size and SHA-256 match what was recorded at hand-over: a file that changed
    raises :class:`~transports.uploads.FileChangedError` before the receiver has a
    complete body to keep.
    """

    def __init__(self, file: FilePart) -> None:
        super().__init__({}, file)
        self._preamble = b""
        self._epilogue = b""
        self.content_type = "application/octet-stream"

    def __iter__(self) -> Iterator[bytes | memoryview]:
        file = self._file
        handle = self._handle
        if file is None or handle is None:
            raise ValueError("the body was closed; make a new one to send the file again")
        digest = hashlib.sha256()
        held: bytes | memoryview | None = None
        for piece in self._file_pieces(handle, file):
            digest.update(piece)
            if held is not None:
                yield held
            held = piece
        if digest.hexdigest() != file.sha256:
            raise FileChangedError(
                f"file {file.name} changed since it was handed over: its SHA-256 differs"
            )
        if held is not None:
            yield held


class PlatformTransport(RequestsTransport):
    """Sends Platform requests over HTTP(S); see the module's description.

    Takes the arguments of :class:`~transports.http.RequestsTransport`; ``api_root`` is
    the Platform root (such as ``https://platform.ultralytics.com``), paths start
    with ``/api/``.
    """

    def __repr__(self) -> str:
        return f"PlatformTransport(api_root={self.api_root!r})"

    def _headers(self, request: Request, body: MultipartBody | None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key.reveal()}",
            "User-Agent": self._user_agent,
            "Accept": "application/json",
        }

    def send(self, request: Request) -> Response:
        """Send an API request (its file, if any, stays home), or PUT bytes to a signed URL.

        Raises:
            TransportError: As :meth:`RequestsTransport.send`; ``url`` for a signed URL
                that is not http(s), or plain http from an https root to another host.
        """
        if request.method == "PUT":
            return self._put(request)
        if not request.path.startswith("/"):
            raise ValueError(f"request path {request.path!r} must start with '/'")
        # The file of an upload's first step rides along for the later steps only.
        return self._exchange(attrs.evolve(request, file=None, fields=None), None)

    def _put(self, request: Request) -> Response:
        url = request.path
        try:
            parts = urlsplit(url)
        except ValueError:  # an unclosed IPv6 bracket, say
            shown = attrs.evolve(request, path="(an upload URL that does not parse)")
            raise self._report.fail(shown, "url", "the signed upload URL does not parse") from None
        # Messages and logs name the URL without its query: the query is the signature.
        shown = attrs.evolve(request, path=f"{parts.scheme}://{parts.netloc}{parts.path}")
        if parts.scheme not in ("http", "https") or not parts.hostname or request.file is None:
            raise self._report.fail(shown, "url", "the signed upload URL is not an http(s) URL")
        root_https = self.api_root.startswith("https://")
        if parts.scheme == "http" and root_https and not _is_loopback(parts.hostname):
            raise self._report.fail(
                shown, "url", "refusing to send the weights over plain http from an https API"
            )
        headers = {"User-Agent": self._user_agent, "Content-Type": "application/octet-stream"}
        try:
            body = RawBody(request.file)
        except FileChangedError as error:
            raise self._report.fail(shown, "protocol", str(error)) from None
        with body:
            try:
                return self._exchange(shown, body, url=url, headers=headers)
            except ValueError:  # requests cannot make a request of it (InvalidURL): not sent
                raise self._report.fail(
                    shown, "url", "the signed upload URL cannot be requested"
                ) from None
