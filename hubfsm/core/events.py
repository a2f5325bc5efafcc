"""What the trainer tells a session, as values: the closed set of trainer events.

A session turns each trainer call into one of these values and hands it to the driver
(through the journal when the session keeps one); the driver applies it to the core.
Nothing recognises an event by anything but its type, and the journal encodes and
decodes these values and nothing else (see :mod:`hubfsm.durable.journal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class FileStamp:
    """What a file looked like when the trainer handed it over (from ``os.stat``)."""

    size: int
    mtime_ns: int
    inode: int


@attrs.frozen
class Start:
    """Training begins: heartbeats start."""


@attrs.frozen
class EpochEnded:
    """An epoch ended with these metrics (names to numbers)."""

    epoch: int
    metrics: Mapping[str, Any]


@attrs.frozen
class CheckpointOffered:
    """The trainer offers epoch weights: the file at ``path`` as ``stamp`` describes it.

    Attributes:
        held: A hard link that keeps the offered content reachable until the driver
            takes its snapshot, if the session could make one.
    """

    path: str
    epoch: int
    is_best: bool
    stamp: FileStamp
    held: str | None = None


@attrs.frozen
class FinishRequested:
    """Training ended: flush the metrics, then upload these final weights.

    Attributes:
        timeout: Seconds after which an unfinished upload leaves the session ``resumable``.
        held: A hard link that keeps the handed-over content reachable until the outbox
            has its snapshot, if the session could make one; it outlives a killed
            process, so recovery can still take the snapshot.
    """

    path: str
    epoch: int
    map50_95: float
    stamp: FileStamp
    timeout: float
    held: str | None = None


@attrs.frozen
class FinishPending:
    """Finish with the final weights an outbox kept from an earlier run."""

    timeout: float


@attrs.frozen
class Interrupted:
    """Training stopped early (the session is closing before ``finish``)."""


@attrs.frozen
class Resumed:
    """Training goes on after an interruption."""


@attrs.frozen
class Barrier:
    """No effect: a caller that waits for it knows every earlier event was taken in."""


#: Every trainer event; the journal and the driver know exactly these.
Event = (
    Start
    | EpochEnded
    | CheckpointOffered
    | FinishRequested
    | FinishPending
    | Interrupted
    | Resumed
    | Barrier
)
