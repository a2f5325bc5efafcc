"""The one owner of the trainer's weight files: offered on one thread, taken on the other.

The training thread offers a file (:meth:`WeightFiles.offer_checkpoint`,
:meth:`WeightFiles.offer_final`): in one call it is stamped (size, mtime, inode) and,
once an outbox is open, held by a hard link so a trainer that renames a newer file
over it cannot take the offered content away; a checkpoint offer also goes into the
inbox (journaled), so that thread enters this layer once. The driver takes the offer as an upload
part (:meth:`WeightFiles.take`): a snapshot in the outbox, or with no outbox the file
itself, if it still is what the stamp says. Either way the runtime sees one object.

Whether a file still is what was handed over is told here too: a journaled offer's file
(:func:`still_offered`, for recovery and the survey) and a snapshot the outbox recorded
(:func:`as_handed_over`, for :meth:`~hubfsm.durable.outbox.Outbox.check_weights`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hubfsm.core.values import CheckpointOffered, FileStamp, FinishRequested
from hubfsm.digest import sha256_of
from hubfsm.durable.inbox import Inbox
from hubfsm.transport import FilePart

if TYPE_CHECKING:
    # The outbox stamps files with stamp_of from here: at run time this module needs
    # only the object it is given.
    from hubfsm.durable.outbox import Outbox

__all__ = ["WeightFiles", "as_handed_over", "stamp_of", "still_offered"]

#: Told why the final weights could not be kept in the outbox (they still go up).
Unkept = Callable[[OSError], None]


def stamp_of(path: str | os.PathLike[str]) -> FileStamp:
    """What ``path`` looks like now (``os.stat``)."""
    st = os.stat(path)
    return FileStamp(st.st_size, st.st_mtime_ns, st.st_ino)


def still_offered(event: CheckpointOffered | FinishRequested, files: Path) -> bool:
    """True when a journaled offer's file still is what it stamped: recovery can keep it.

    Its held link (found in ``files``, where its outbox lies now) or the file itself: a
    trainer that rewrote the file in place (``torch.save`` does) changed the link's
    content too, and a killed process may have left it cut short.
    """
    held = None if event.held is None else files / os.path.basename(event.held)
    for path in (held, event.path):
        with contextlib.suppress(OSError):
            if path is not None and stamp_of(path) == event.stamp:
                return True
    return False


def as_handed_over(file: FilePart, pending: bool) -> FilePart | str:
    """``file``, or why its bytes are not the ones recorded when it was handed over."""
    if not pending:
        return file
    try:
        sha, size = sha256_of(file.path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return f"its weights file {file.path} is missing"
    except OSError:  # unreadable now, not known to be damaged: the upload says more
        return file
    if (sha, size) != (file.sha256, file.size):
        return (
            f"its weights file {file.path} is not the one handed over (sha256 {sha[:12]}, "
            f"{size} bytes; recorded {file.sha256[:12]}, {file.size} bytes)"
        )
    return file


def _as_is(path: str, name: str, stamp: FileStamp) -> FilePart | None:
    """A weight file as it is, if it still is what ``stamp`` says."""
    if stamp_of(path) != stamp:
        return None
    digest, size = sha256_of(path)
    return FilePart(name=name, path=path, size=size, sha256=digest)


def _unlink(link: str | None) -> None:
    if link is not None:
        with contextlib.suppress(OSError):
            os.unlink(link)


class WeightFiles:
    """The weight files a session was offered, and the upload parts taken from them.

    The outbox is attached once it opens (:attr:`outbox`); until then, and for a session
    that keeps nothing on disk, offers are the trainer's files themselves.

    Args:
        inbox: The driver's inbox, which checkpoint offers go into.
    """

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        #: The model's outbox, once open: snapshots and held links live in it.
        self.outbox: Outbox | None = None
        # The held link of the newest checkpoint offer, released by a newer one.
        self._held: str | None = None
        # Held links whose snapshots are taken but not yet in the outbox.
        self._released: list[str] = []

    # -- the training thread --------------------------------------------------------

    def offer_checkpoint(
        self, path: str | os.PathLike[str], *, epoch: int, is_best: bool
    ) -> CheckpointOffered:
        """Stamp and hold a checkpoint, and put the offer in the inbox; the offer.

        The newest offer wins, so the link of the checkpoint offer before it is released
        at once, taken in or not: a busy driver never pins more than one older copy.

        Raises:
            OSError: The file is missing (the caller's error, raised on its thread).
        """
        file = os.fspath(path)
        stamp = stamp_of(file)
        outbox = self.outbox
        held = None
        if outbox is not None:
            if self._held is not None:
                outbox.release(self._held)
            held = self._held = outbox.hold(file)
        offer = CheckpointOffered(held or file, epoch, is_best, stamp, held)
        self.inbox.put(offer)
        return offer

    def offer_final(
        self, path: str | os.PathLike[str], *, epoch: int, map50_95: float, timeout: float
    ) -> FinishRequested:
        """Stamp and hold the final weights; the event to hand the driver.

        Not put in the inbox here: the caller waits for the driver to take it in.

        Raises:
            OSError: The file is missing (the caller's error, raised on its thread).
        """
        file = os.fspath(path)
        stamp = stamp_of(file)
        held = None if self.outbox is None else self.outbox.hold(file)
        return FinishRequested(file, epoch, map50_95, stamp, timeout, held)

    # -- the driver's thread --------------------------------------------------------

    def take(
        self, offer: CheckpointOffered | FinishRequested, *, unkept: Unkept | None = None
    ) -> FilePart | None:
        """The upload part for ``offer``, or None when a newer file replaced it.

        A held link goes only once the outbox has the snapshot's record (the next
        :meth:`kept`): until then the journal's record of the offer is all a killed
        process leaves, and recovery takes the snapshot from that link.

        Args:
            offer: What the trainer offered.
            unkept: Told when the final weights cannot be copied into the outbox; they
                are then uploaded from the trainer's file, but a later ``hubfsm sync``
                would not have them. None: the error is raised.

        Raises:
            OSError: A checkpoint could not be kept (no room for a copy and no held
                link to keep instead).
        """
        final = isinstance(offer, FinishRequested)
        name = "best.pt" if final else "last.pt"
        try:
            part = self._part(offer.held or offer.path, name, offer.stamp)
        except OSError as exc:
            if not final or unkept is None:
                if not final:
                    _unlink(offer.held)
                raise
            unkept(exc)
            # The trainer's own file, not the held link: that link goes once the final
            # slot is written, long before the upload may end.
            part = _as_is(offer.path, name, offer.stamp)
        if part is None:
            _unlink(offer.held)  # a newer file replaced it: nothing to keep
        elif offer.held is not None:
            # Until the outbox has the snapshot's record, the journal's offer (and the link
            # it names) is all a killed process leaves: recovery snapshots from the link.
            self._released.append(offer.held)
        # A snapshot lies in the outbox under a name of its own; people know the file
        # by the name they gave.
        if part is None:
            return None
        # Made directly rather than with attrs.evolve, which looks up each field by name:
        # this runs for every checkpoint.
        source = os.path.basename(offer.path)
        return FilePart(part.name, part.path, part.size, part.sha256, source=source)

    def _part(self, path: str, name: str, stamp: FileStamp) -> FilePart | None:
        if self.outbox is not None:
            return self.outbox.snapshot(path, name=name, stamp=stamp)
        return _as_is(path, name, stamp)

    def kept(self) -> None:
        """The outbox has what was taken: delete the held links it no longer needs.

        A link left over when a process dies goes at the next recovery.
        """
        if self._released:
            released, self._released = self._released, []
            for link in released:
                _unlink(link)
