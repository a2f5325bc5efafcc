"""Request bodies: read within their caps, as strict JSON or a multipart upload, or refused.

An API request's body is read only after its key was accepted (see :mod:`hubfsm.hub.app`),
and only up to its cap (:class:`BodyLimits`). JSON is parsed strictly; an upload is
received into the data directory's staging folder, or (with an object store) decoded as the
store reads it (:class:`StreamedUpload`), with no copy on the way. A refused request's body
is read and dropped when small, so the connection stays usable; a larger one is not read,
and the connection is closed after the answer.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, cast

import attrs
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData
from werkzeug.wrappers import Request

from hubfsm.hub import parse
from hubfsm.hub.calls import BadJson, HubCall, HubReply, fail, safe

#: Bodies of refused requests up to this size are read and dropped (so the connection stays
#: usable); larger ones are not read at all, and the connection is closed after the answer.
_DRAIN = 1 << 20
_CHUNK = 1 << 16
#: The most bytes of a multipart form's text fields held in memory.
_FIELD_MEMORY = 1 << 20


@attrs.frozen
class BodyLimits:
    """The largest request bodies the hub reads.

    Attributes:
        json: JSON bodies (metrics of a thousand epochs take about 1 MiB).
        upload: Multipart weight uploads (a large model's checkpoint with optimizer state).
    """

    json: int = 4 << 20
    upload: int = 4 << 30


class BodyError(ValueError):
    """A streamed request body that cannot be read to its end (cut short, too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StreamedUpload(io.RawIOBase):
    """A multipart upload decoded as the store reads it: no copy on disk or in memory.

    :meth:`head` reads the form's fields up to its first file part; reading the object
    then yields that part's bytes straight from the request, a chunk at a time, so an
    object store receives the file while the client is still sending it. Fields that
    follow the file part are not seen: every client sends its fields first.

    Args:
        source: The request body.
        boundary: The multipart boundary.
        cap: The most bytes of body read.
    """

    def __init__(self, source: IO[bytes], boundary: bytes, cap: int) -> None:
        super().__init__()
        self._source = source
        self._decoder = MultipartDecoder(boundary, _FIELD_MEMORY, max_parts=32)
        self._cap = cap
        self._taken = 0
        self._ended = False
        self._pending = bytearray()
        self._file_done = False
        self._epilogue = False
        self.fields: dict[str, str] = {}
        self.file_name: str | None = None

    def readable(self) -> bool:
        """True: this is a stream to read."""
        return True

    @property
    def finished(self) -> bool:
        """The whole body was read (its closing boundary included)."""
        return self._epilogue or self._ended

    def _event(self) -> object:
        while True:
            try:
                event = self._decoder.next_event()
            except (ValueError, RequestEntityTooLarge) as error:
                raise BodyError(400, f"malformed multipart body: {error}") from None
            if not isinstance(event, NeedData):
                return event
            if self._ended:
                raise BodyError(400, "malformed request body: it ended before its last part")
            try:
                chunk = self._source.read(_CHUNK)
            except (HTTPException, OSError) as error:  # the client went away mid-body
                raise BodyError(400, f"malformed request body: {error}") from None
            self._taken += len(chunk)
            if self._taken > self._cap:
                raise BodyError(413, f"upload larger than {self._cap} bytes")
            self._ended = not chunk
            self._decoder.receive_data(chunk or None)

    def head(self) -> None:
        """Read the fields up to the first file part (or the end of the form)."""
        name: str | None = None
        value = bytearray()
        while True:
            event = self._event()
            if isinstance(event, Field):
                name, value = event.name, bytearray()
            elif isinstance(event, Data) and name is not None:
                value += event.data
                if not event.more_data:
                    self.fields[name] = value.decode("utf-8", "replace")
                    name = None
            elif isinstance(event, File):
                self.file_name = event.name
                return
            elif isinstance(event, Epilogue):
                self._file_done = self._epilogue = True
                return

    def _rest(self) -> None:
        # Read past the parts after the file (none, from every known client) to the end,
        # so the connection can serve the next request.
        while not isinstance(self._event(), Epilogue):
            pass
        self._epilogue = True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next bytes of the file part; 0 at its end."""
        while not self._pending and not self._file_done:
            event = self._event()
            if not isinstance(event, Data):
                raise BodyError(400, "malformed multipart body: the file part broke off")
            self._pending += event.data
            self._file_done = not event.more_data
            if self._file_done:
                self._rest()
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        del self._pending[:count]
        return count


def read_call(
    request: Request,
    environ: dict[str, Any],
    spooled: list[IO[bytes]],
    limits: BodyLimits,
    spool_dir: Path | None,
    stream: bool,
) -> HubCall | HubReply:
    """The request as a hub call, or the reply when its body cannot be one.

    Args:
        request: The request, its key already accepted.
        environ: Its WSGI environ.
        spooled: Gets every file the body is received into (see :func:`release`).
        limits: The largest bodies read.
        spool_dir: Where uploads are received; the system's temporary directory when None.
        stream: Hand an upload's file part on as it arrives (:class:`StreamedUpload`).
    """
    bad = bad_length(request, environ)
    if bad is not None:
        return bad
    multipart = request.mimetype == "multipart/form-data"
    cap = limits.upload if multipart else limits.json
    length = request.content_length
    if length is not None and length > cap:
        close_after(environ)
        return fail(413, f"body larger than {cap} bytes")
    if not multipart:
        raw = request.stream.read(cap + 1)
        if len(raw) > cap:
            close_after(environ)
            return fail(413, f"JSON body larger than {cap} bytes")
        body: object = None
        if raw:
            try:
                body = parse.loads(raw)
            except ValueError as error:
                body = BadJson(safe(str(error)))
        return attrs.evolve(bare_call(request), json=body)

    if stream:
        boundary = request.mimetype_params.get("boundary", "")
        if not boundary:
            return fail(400, "malformed multipart body: no boundary")
        streamed = StreamedUpload(request.stream, boundary.encode("latin-1"), cap)
        # A binary stream as the store reads one (io's classes are not typing.IO).
        as_file = cast("IO[bytes]", streamed)
        spooled.append(as_file)
        streamed.head()
        named = streamed.file_name
        return attrs.evolve(
            bare_call(request),
            fields={safe(k): safe(v) for k, v in streamed.fields.items()},
            file_name=None if named is None else safe(named),
            file=None if named is None else as_file,
        )

    def factory(
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        # Received straight into the store's staging folder: a store that finds it there
        # hashes it in place and renames it into place, with no second copy.
        spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by the caller
            dir=spool_dir, suffix=".part", delete=False
        )
        spooled.append(spool)
        return spool

    parser = FormDataParser(
        factory,
        max_form_memory_size=_FIELD_MEMORY,  # text fields; above the parser's read size
        max_content_length=cap,
        silent=False,
        max_form_parts=32,
    )
    try:
        _, form, files = parser.parse_from_environ(environ)
    except RequestEntityTooLarge:
        close_after(environ)
        return fail(413, f"upload larger than {cap} bytes, or too many form parts")
    except ValueError as error:
        return fail(400, f"malformed multipart body: {safe(str(error))}")
    fields = {safe(k): safe(v) for k, v in form.items()}
    file_name: str | None = None
    file: IO[bytes] | None = None
    for name, storage in files.items(multi=True):
        file_name, file = safe(name), storage.stream  # one file part; further ones ignored
        break
    if file is not None:
        file.seek(0)
    return attrs.evolve(bare_call(request), fields=fields, file_name=file_name, file=file)


def api_key_of(request: Request) -> str | None:
    """The key a request bears: ``x-api-key`` on HUB v1, ``Authorization: Bearer`` on Platform."""
    if request.path.startswith("/api/"):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


class Received:
    """The body a request declared (its ``Content-Length``), counted as the app reads it.

    A body that ends before its length is cut, not malformed: the client went away, or
    the server stopped while reading it (cheroot cuts a request still running a second
    into a stop). Its answer must not be a 400 a client takes for the hub's word on the
    request; see :meth:`answer`.
    """

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self._length = length
        self.taken = 0
        self.cut = False

    @classmethod
    def watch(cls, environ: dict[str, Any]) -> Received | None:
        """Count the body of the request in ``environ`` from now on, if it declared one."""
        declared = str(environ.get("CONTENT_LENGTH") or "")
        if not (declared.isascii() and declared.isdigit()) or "wsgi.input" not in environ:
            return None
        watched = environ["wsgi.input"] = cls(environ["wsgi.input"], int(declared))
        return watched

    def read(self, size: int | None = None) -> bytes:
        """Read as the stream does, noting an end before the declared length.

        The server's stream blocks until it has the bytes asked for or the connection
        ended, so fewer bytes than asked (of those still due) is the end.
        """
        due = self._length - self.taken
        want = due if size is None or size < 0 else min(size, due)
        try:
            data: bytes = self._stream.read() if size is None else self._stream.read(size)
        except OSError:
            self.cut = True
            raise
        self.taken += len(data)
        self.cut = self.cut or len(data) < want
        return data

    def readline(self, size: int | None = None) -> bytes:
        """Read a line as the stream does, noting an end before the declared length."""
        try:
            data: bytes = self._stream.readline() if size is None else self._stream.readline(size)
        except OSError:
            self.cut = True
            raise
        self.taken += len(data)
        self.cut = self.cut or (not data and size != 0 and self.taken < self._length)
        return data

    def reply(self) -> HubReply:
        """The 503 a request whose body was cut gets instead of a 400.

        Clients retry a 503 under the same key: the hub never read the request.
        """
        return fail(
            503,
            f"the request's body broke off after {self.taken} of {self._length} bytes "
            "(the connection was cut); nothing of it was kept",
        )


def bare_call(request: Request) -> HubCall:
    """The request as a hub call without its body."""
    headers = request.headers
    return HubCall(
        request.method,
        request.path,
        api_key_of(request),
        idempotency_key=headers.get("Idempotency-Key"),
    )


def close_after(environ: dict[str, Any]) -> None:
    """Close the connection once the answer is sent (its unread body is not read)."""
    close = environ.get("hubfsm.close_connection")
    if callable(close):
        close()


def unchecked_read(environ: dict[str, Any]) -> AbstractContextManager[Callable[[], bool]]:
    """A deadline in all (the request head's) for reading a body no key vouches for.

    Yields a callable that says whether the deadline passed (then the connection's reading
    was cut, and the body is short). Without the server's hook, no deadline.
    """
    make = environ.get("hubfsm.read_deadline")
    if callable(make):
        return cast("AbstractContextManager[Callable[[], bool]]", make())
    return contextlib.nullcontext(lambda: False)


def refuse_body(request: Request, environ: dict[str, Any]) -> None:
    """Drop a refused request's body: read (not kept) when small, else close the connection."""
    length = request.content_length
    if length is None and request.headers.get("Transfer-Encoding") is None:
        return
    if length is None or length > _DRAIN:
        close_after(environ)
        return
    try:
        with unchecked_read(environ) as cut:
            stream = request.stream
            while stream.read(_CHUNK):
                pass
        if cut():
            close_after(environ)
    except (ValueError, OSError, HTTPException):  # HTTPException: the client went away
        close_after(environ)


def bad_length(request: Request, environ: dict[str, Any]) -> HubReply | None:
    """The 400 for a ``Content-Length`` that is no non-negative integer, else None."""
    declared = request.headers.get("Content-Length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        close_after(environ)
        return fail(400, "Content-Length must be a non-negative integer")
    return None


def release(spooled: list[IO[bytes]], environ: dict[str, Any]) -> None:
    """Drop what a request's body was received into, once it was answered."""
    for each in spooled:
        if isinstance(each, StreamedUpload):
            if not each.finished:
                # Answered before the file was read (a refused upload): the rest of the
                # body is not read, and the connection not reused.
                close_after(environ)
            continue
        each.close()
        # Gone already when the upload was committed (renamed into place).
        Path(each.name).unlink(missing_ok=True)
