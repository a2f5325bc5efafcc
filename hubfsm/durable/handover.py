"""What the training thread hands the driver: its calls, in order, and the weight files.

The inbox (:class:`Inbox`) takes the trainer's calls and gives the driver trainer events,
in order. The training thread puts calls in and returns at once; the driver (on the
worker, or when simulated time passes) takes them all out in one call
(:meth:`Inbox.take_all`). With a journal open, the calls that must outlive a ``kill -9``
(an epoch's metrics, a checkpoint offer, the final weights) are written to it before
``put`` returns; without one, they wait in memory. How an item is held (a values record
in the journal, a dict, an event) is this module's business alone.

The weight files the calls name have one owner (:class:`WeightFiles`, the inbox's
``weights``), offered on one thread and taken on the other. The training thread offers a
file (:meth:`WeightFiles.offer_checkpoint`, :meth:`WeightFiles.offer_final`): in one call
it is stamped (size, mtime, inode) and, once an outbox is open, held by a hard link so a
trainer that renames a newer file over it cannot take the offered content away; a
checkpoint offer also goes into the inbox (journaled), so that thread enters this layer
once. The driver's take turns each offer into an upload part (:class:`Taken`): a
snapshot in the outbox, or with no outbox the file itself, if it still is what the stamp
says. So each thread enters this layer once per call, and the runtime sees one object
per call.

Whether a file still is what was handed over is told here too: a journaled offer's file
(:func:`still_offered`, for recovery and the survey) and a snapshot the outbox recorded
(:func:`as_handed_over`, for :meth:`~hubfsm.durable.outbox.Outbox.check_weights`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import marshal
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from hubfsm.core.plain import carried
from hubfsm.core.values import CheckpointOffered, EpochEnded, Event, FileStamp, FinishRequested
from hubfsm.digest import sha256_of
from hubfsm.durable.journal import Journal, JournalOpener
from hubfsm.durable.journal_format import InboxItem
from hubfsm.transport import FilePart

if TYPE_CHECKING:
    # The outbox stamps files with stamp_of from here: at run time this module needs
    # only the object it is given.
    from hubfsm.durable.outbox import Outbox

__all__ = ["Inbox", "Taken", "WeightFiles", "as_handed_over", "stamp_of", "still_offered"]


# -- the inbox: the trainer's calls, in order ---------------------------------------

#: The events journaled when a journal is open: what a kill must not lose. The others
#: (start, barrier, interrupt, finish-pending) steer this process's session only: a
#: process that dies takes them with it, and the next one issues its own.
KEPT = (CheckpointOffered, FinishRequested, EpochEnded)


class Taken(NamedTuple):
    """One trainer call as the driver takes it in (a tuple: one is made per call).

    For an offer (:class:`CheckpointOffered`, :class:`FinishRequested`):

    - ``part`` set, ``error`` None: the snapshot (or with no outbox the file) to upload;
    - neither: a newer file replaced the offered one (a checkpoint is superseded; final
      weights changed while being read);
    - ``error`` alone: the file could not be kept (no room for a copy and no held link);
    - both: final weights the outbox could not copy, uploaded from the trainer's file
      (a later ``hubfsm sync`` would not have them).
    """

    #: The call's journal sequence number, 0 for a call not journaled.
    seq: int
    event: Event
    part: FilePart | None = None
    error: OSError | None = None


class Inbox:
    """The trainer's calls, in order, for the driver; journaled once a journal is open."""

    def __init__(self) -> None:
        self._items: collections.deque[InboxItem] = collections.deque()
        #: The weight files the calls offer: taken as upload parts with their calls.
        self.weights = WeightFiles(self)
        #: The journal behind the inbox, once open (see :meth:`open_journal`).
        self.journal: Journal | None = None
        #: Queue one epoch's metrics (on the training thread); raises TypeError, keeping
        #: nothing, for a name that is not a string or a value that cannot be sent. The
        #: journal's own writer once it is open: the trainer's call goes one level down.
        self.put_metrics: Callable[[int, Mapping[str, Any]], None] = self._keep_metrics

    def open_journal(
        self, opener: JournalOpener, path: str | os.PathLike[str], *, seq: int
    ) -> Journal:
        """Open the journal (``opener`` takes :class:`Journal`'s arguments) behind the inbox.

        Raises:
            OSError: The file cannot be made or its space allocated.
        """
        self.journal = journal = opener(path, seq=seq, inbox=self._items)
        self.put_metrics = journal.append_metrics
        return journal

    def put(self, event: Event) -> None:
        """Queue a trainer event; journaled first when it is one a kill must not lose."""
        journal = self.journal
        if journal is not None and isinstance(event, KEPT):
            journal.append(event)
        else:
            self._items.append((0, event))

    def _keep_metrics(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Queue one epoch's metrics in memory (no journal open)."""
        self._items.append((0, epoch, carried(metrics)))

    def take_all(self) -> list[Taken]:
        """Every queued call, oldest first; each offer's upload part is taken with it.

        The driver's one call into the inbox per turn: what the trainer queues meanwhile
        waits for the next.
        """
        items = self._items
        taken: list[Taken] = []
        add = taken.append
        while items:  # the only taker: what is seen here is there to pop
            item = items.popleft()
            if len(item) == 2:
                seq, event = item
                if isinstance(event, CheckpointOffered | FinishRequested):
                    add(self.weights.take(seq, event))
                else:
                    add(Taken(seq, event))
            elif len(item) == 3:
                add(Taken(0, EpochEnded(item[1], item[2])))
            else:
                # A values record's item: its values are the marshal bytes the journal wrote.
                seq, epoch, names, data = item
                values = dict(zip(names, marshal.loads(data), strict=True))
                add(Taken(seq, EpochEnded(epoch, values)))
        return taken

    def clear(self) -> None:
        """Forget every queued call (a simulated death: the journal holds what is kept)."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def queued_epochs(self) -> list[int]:
        """The epochs whose metrics are queued, in the order they were put."""
        return [e for e in map(_epoch_of, list(self._items)) if e is not None]

    def finish_queued(self) -> bool:
        """Whether a call to finish with final weights is queued."""
        return any(
            len(item) == 2 and isinstance(item[1], FinishRequested) for item in list(self._items)
        )


def _epoch_of(item: InboxItem) -> int | None:
    """The epoch of an item that ends an epoch, else None."""
    if len(item) != 2:  # metrics: (seq, epoch, names, values) or (0, epoch, metrics)
        return item[1]
    event = item[1]
    return event.epoch if isinstance(event, EpochEnded) else None


# -- the weight files: offered on one thread, taken on the other ------------------


def stamp_of(path: str | os.PathLike[str]) -> FileStamp:
    """What ``path`` looks like now (``os.stat``).

    Raises:
        OSError: It is missing, or a directory (which the worker could only fail to read).
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "weights must be a file, not a directory", path)
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

    Each inbox has one (:attr:`Inbox.weights`). The outbox is attached once it opens
    (:attr:`outbox`); until then, and for a session that keeps nothing on disk, offers are
    the trainer's files themselves.

    Args:
        inbox: The inbox that owns these files, which checkpoint offers go into.
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

    # -- the driver's thread (through Inbox.take_all) --------------------------------

    def take(self, seq: int, offer: CheckpointOffered | FinishRequested) -> Taken:
        """The call ``offer`` with its upload part (see :class:`Taken`).

        A held link goes only once the outbox has the snapshot's record (the next
        :meth:`kept`): until then the journal's record of the offer is all a killed
        process leaves, and recovery takes the snapshot from that link.
        """
        final = isinstance(offer, FinishRequested)
        name = "best.pt" if final else "last.pt"
        unkept: OSError | None = None
        try:
            part = self._part(offer.held or offer.path, name, offer.stamp)
        except OSError as exc:
            if not final:
                _unlink(offer.held)
                return Taken(seq, offer, None, exc)
            if self.outbox is None:  # the trainer's own file is what failed
                return Taken(seq, offer, None, exc)
            unkept = exc
            # The trainer's own file, not the held link: that link goes once the final
            # slot is written, long before the upload may end.
            try:
                part = _as_is(offer.path, name, offer.stamp)
            except OSError as again:
                return Taken(seq, offer, None, again)
        if part is None:
            _unlink(offer.held)  # a newer file replaced it: nothing to keep
            return Taken(seq, offer)
        if offer.held is not None:
            # Until the outbox has the snapshot's record, the journal's offer (and the link
            # it names) is all a killed process leaves: recovery snapshots from the link.
            self._released.append(offer.held)
        # A snapshot lies in the outbox under a name of its own; people know the file
        # by the name they gave. Made directly rather than with attrs.evolve, which looks
        # up each field by name: this runs for every checkpoint.
        source = os.path.basename(offer.path)
        part = FilePart(part.name, part.path, part.size, part.sha256, source=source)
        return Taken(seq, offer, part, unkept)

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
