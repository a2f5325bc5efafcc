"""Watching an upload go out: the bytes sent, a final upload's progress bar, its speed.

The HTTP transport streams a multipart body from disk (see :mod:`transports.multipart`);
:class:`UploadMeter` counts what the socket took and moves the bar, and
:func:`log_upload` writes the ``http.upload`` line once the answer is in.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

from hubfsm.logs import get_logger
from hubfsm.transport import Request

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
