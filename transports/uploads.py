"""An upload: its multipart body streamed from disk, and watching it go out.

The body (:class:`MultipartBody`) is an iterable with ``__len__``: requests then sends a
``Content-Length`` header (not chunked transfer encoding, which some servers and proxies
refuse for uploads) and hands each chunk straight to the socket, so a checkpoint of any
size costs about one read buffer of memory. :class:`UploadMeter` counts what the socket
took and moves a final upload's progress bar, and :func:`log_upload` writes the
``http.upload`` line once the answer is in.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, BinaryIO, TextIO

from tqdm import tqdm

from hubfsm.logs import get_logger
from hubfsm.transport import FilePart, Request

#: Bytes read from disk at a time.
READ_SIZE = 1024 * 1024

#: Bytes handed to the socket at a time. Smaller than a read because a plain socket's
#: timeout bounds a whole ``sendall`` call: 256 KiB per read timeout still works on a
#: slow uplink, where 1 MiB per timeout might not.
SEND_SIZE = 256 * 1024

_FORBIDDEN_IN_NAMES = frozenset('"\r\n\\')


class FileChangedError(Exception):
    """The file's length on disk stopped matching the size recorded at hand-over."""


class FileReadError(Exception):
    """Reading the file failed while the body was being sent.

    It wraps the :class:`OSError` so that the HTTP stack does not mistake a disk error for
    a network error.

    Attributes:
        error: The original error.
    """

    def __init__(self, error: OSError) -> None:
        self.error = error
        super().__init__(str(error))


def _check_name(kind: str, name: str) -> None:
    # A quote or a line break would end the Content-Disposition header early.
    if not name or _FORBIDDEN_IN_NAMES & set(name):
        raise ValueError(f"multipart {kind} {name!r} is empty or holds a quote or line break")


class MultipartBody:
    """The ``multipart/form-data`` body of fields plus at most one file part.

    The file is opened (and its size checked) when the body is made, so a missing or
    changed file fails before any connection is opened. Use the body as a context manager
    so the file is closed whatever happens to the request.

    Iterating yields the preamble, the file in :data:`READ_SIZE` reads cut into
    :data:`SEND_SIZE` pieces, and the epilogue. ``on_sent`` is called with each piece's
    length once the consumer asks for the next piece, that is, once the previous piece
    was handed to the socket; so it counts bytes sent, not bytes read.

    Attributes:
        boundary: The multipart boundary.
        content_type: The request's ``Content-Type`` header value.
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        file: FilePart | None,
        *,
        boundary: str | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        """Lay out the body and open the file.

        Args:
            fields: Form fields, sent before the file in this order.
            file: The file part; its name is both the field name and the file name.
            boundary: The boundary; random by default (tests pin it).
            on_sent: Called with the length of every piece handed on.

        Raises:
            FileNotFoundError: The file is gone (and other :class:`OSError`).
            FileChangedError: The file's size is not ``file.size`` anymore.
            ValueError: A field or file name would break the multipart headers.
        """
        self.boundary = boundary or secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._on_sent = on_sent
        self._file = file
        dash = f"--{self.boundary}\r\n".encode("ascii")
        head = bytearray()
        for name, value in fields.items():
            _check_name("field", name)
            head += dash
            head += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            head += str(value).encode() + b"\r\n"
        if file is not None:
            _check_name("file name", file.name)
            head += dash
            head += (
                f'Content-Disposition: form-data; name="{file.name}"; filename="{file.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        self._preamble = bytes(head)
        self._epilogue = (b"\r\n" if file is not None else b"") + (
            f"--{self.boundary}--\r\n".encode("ascii")
        )
        self._handle: BinaryIO | None = None
        if file is not None:
            handle = open(file.path, "rb")  # noqa: SIM115 - closed by close()
            try:
                size = os.fstat(handle.fileno()).st_size
                if size != file.size:
                    raise FileChangedError(
                        f"file {file.name} changed since it was handed over: "
                        f"{file.size} bytes then, {size} now"
                    )
            except BaseException:
                handle.close()
                raise
            self._handle = handle

    def __len__(self) -> int:
        size = self._file.size if self._file is not None else 0
        return len(self._preamble) + size + len(self._epilogue)

    def __iter__(self) -> Iterator[bytes | memoryview]:
        # A fresh generator every time, starting from the file's beginning, so a body may
        # be sent again (a redirect or a retry by the HTTP stack) and still be whole.
        if self._file is not None and self._handle is None:
            raise ValueError("the body was closed; make a new one to send the file again")
        yield self._preamble
        self._count(len(self._preamble))
        if self._file is not None and self._handle is not None:
            yield from self._file_pieces(self._handle, self._file)
        yield self._epilogue
        self._count(len(self._epilogue))

    def _file_pieces(self, handle: BinaryIO, file: FilePart) -> Iterator[bytes | memoryview]:
        remaining = file.size
        try:
            handle.seek(0)
        except OSError as error:
            raise FileReadError(error) from error
        while remaining > 0:
            try:
                block = handle.read(min(READ_SIZE, remaining))
                # A file that grew would upload other bytes than the ones handed over.
                grew = len(block) == remaining and bool(handle.read(1))
            except OSError as error:
                raise FileReadError(error) from error
            if not block or grew:
                raise FileChangedError(
                    f"file {file.name} changed while it was being sent "
                    f"({'grew' if grew else 'shrank'} from {file.size} bytes)"
                )
            remaining -= len(block)
            view = memoryview(block)
            for start in range(0, len(view), SEND_SIZE):
                piece = view[start : start + SEND_SIZE]
                yield piece
                self._count(len(piece))

    def _count(self, sent: int) -> None:
        if self._on_sent is not None:
            self._on_sent(sent)

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> MultipartBody:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- watching an upload go out ---------------------------------------------------------

#: The smallest upload whose speed is logged.
SPEED_BYTES = 1_000_000

log = get_logger("hubfsm.http")


class UploadMeter:
    """Counts body bytes handed to the socket, and moves the progress bar along."""

    def __init__(self) -> None:
        self.bytes = 0
        self.bar: tqdm[Any] | None = None

    def __call__(self, count: int) -> None:
        """Note ``count`` more bytes sent."""
        self.bytes += count
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        """Close the progress bar, if there is one."""
        if self.bar is not None:
            self.bar.close()


def progress_bar(
    request: Request,
    total: int,
    *,
    enabled: bool | None,
    file: TextIO | None,
    make: Callable[..., tqdm[Any]] = tqdm,
) -> tqdm[Any] | None:
    """A bar for the ``total`` bytes of a final upload, or None (no bar for checkpoints).

    Args:
        request: The upload.
        total: The body's size.
        enabled: True on, False off, None on when standard error is a terminal.
        file: Where the bar goes; default standard error.
        make: Makes the bar (``tqdm`` itself, unless a caller swaps it).
    """
    if request.fields is None or request.fields.get("type") != "final":
        return None
    if enabled is None:
        enabled = sys.stderr is not None and sys.stderr.isatty()
    if not enabled:
        return None
    part = request.file
    name = (part.source or part.name) if part is not None else "final"
    return make(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"Uploading {name}",
        file=file if file is not None else sys.stderr,
    )


def log_upload(request: Request, sent: int, seconds: float, status: int) -> None:
    """Log how an upload went: its size, its time, and its speed when that is telling."""
    log.info(
        "http.upload",
        path=request.path,
        file=request.file.name if request.file is not None else None,
        bytes=sent,
        seconds=round(seconds, 3),
        # A speed is only telling for a body big enough to outlast the round trip.
        mb_per_s=(round(sent / 1e6 / seconds, 1) if seconds > 0 and sent >= SPEED_BYTES else None),
        status=status,
    )
