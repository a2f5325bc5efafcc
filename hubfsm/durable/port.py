"""The driver's durability port: one model's outbox, and the trainer's journal beside it.

The port opens once the model is known (at once for a model id, after the hub created
the model otherwise): it takes back what an earlier run left (see
:mod:`hubfsm.durable.recovery`), then keeps the core's changes and the journal's
progress as the driver hands them over. The weight files offered to the session live
in the inbox's :class:`~hubfsm.durable.handover.WeightFiles`, which snapshots into this
outbox.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hubfsm.core.engine import Core
from hubfsm.core.values import Change, Rejected, Saved, pending_counts
from hubfsm.durable.handover import Inbox
from hubfsm.durable.journal import Journal, JournalOpener, journal_unavailable
from hubfsm.durable.layout import default_root, private_dir
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.recovery import journal_path, kept_counts, recover
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger

#: Opens a model's outbox under a root (the files backend: :meth:`Outbox.open`).
OutboxOpener = Callable[[str, "str | os.PathLike[str] | None"], Outbox]

log = get_logger("hubfsm")

#: Bytes written to try an outbox root before the hub makes a model (a new outbox's size).
PROBE = 64 * 1024

#: Takes back what an outbox and its journal kept (:func:`~hubfsm.durable.recovery.recover`).
Recovery = Callable[..., Saved]


class Durability:
    """Where the driver keeps what the hub has not acknowledged.

    Args:
        root: The outbox root (None: the default root).
        journal: Also keep the trainer's journal, so a ``kill -9`` loses no call.
        inbox: The driver's inbox, which the journal is opened behind.
        open_outbox: Opens one model's outbox.
        recover: Takes back what an earlier run left, into the outbox and the core.
        open_journal: Opens the journal (a simulated disk passes one whose space fails).
        quiet: Log nothing.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        *,
        journal: bool,
        inbox: Inbox,
        open_outbox: OutboxOpener = Outbox.open,
        recover: Recovery = recover,
        open_journal: JournalOpener = Journal,
        quiet: bool = False,
    ) -> None:
        self.root = root
        self.use_journal = journal
        self.inbox = inbox
        self._open = open_outbox
        self._recover = recover
        self._open_journal = open_journal
        self.quiet = quiet
        self.outbox: Outbox | None = None
        self.journal: Journal | None = None
        #: Why the outbox could not be opened, if it could not.
        self.error: Exception | None = None
        self._core: Core | None = None
        # The dialect, run and run page last recorded in the outbox.
        self._run: tuple[str, int | None, str | None] | None = None
        #: What the outbox held on disk when it closed, per channel (see ``Saved.counts``).
        self.kept: dict[str, int] | None = None
        #: The core's changes an outbox write failed to keep, written before any later.
        self.unwritten: list[Change] = []
        #: Why the last outbox write failed, while writes fail.
        self.write_error: Exception | None = None

    @property
    def directory(self) -> Path | None:
        """The outbox directory, once open."""
        return None if self.outbox is None else self.outbox.directory

    def check_room(self) -> None:
        """Raise OSError, naming the root, if it takes no write now (full, read-only).

        Called before the hub makes a model: a disk found full only after that would
        leave the model on the hub, empty, and one more at each retry.
        """
        root = Path(self.root) if self.root is not None else default_root()
        try:
            private_dir(root)
            with tempfile.TemporaryFile(dir=root) as probe:  # unnamed: a kill leaves none
                probe.write(bytes(PROBE))
                probe.flush()
        except OSError as exc:
            # The advice fits the cause: space for a full disk, the path for anything else.
            if exc.errno == errno.ENOTDIR:
                what = "is not a directory (a file is in its place or on its path)"
                fix = "Make it a directory"
            else:
                what = f"takes no write ({exc.strerror})"
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                fix = "Free space there" if full else "Make it a directory you can write to"
            raise OSError(
                exc.errno,
                f"the outbox root {root} {what}; nothing was created on the hub. {fix}, "
                "or keep outboxes elsewhere (HUBFSM_OUTBOX or outbox_dir=)",
            ) from None

    def attach(self, model_id: str, core: Core, *, now: float) -> None:
        """Open the model's outbox and hand the core what an earlier run left.

        Raises:
            OutboxLockedError: Another session holds this model's outbox.
        """
        outbox = self._open(model_id, self.root)
        try:
            self._adopt_run(outbox, core)
            self._recover(outbox, core, now=now, quiet=self.quiet)
        except BaseException:
            outbox.close()
            raise
        self.outbox = outbox
        self.inbox.weights.outbox = outbox  # snapshots of the offered files go here
        self._core = core
        if self.use_journal:
            path = journal_path(outbox)
            try:
                self.journal = self.inbox.open_journal(
                    self._open_journal, path, seq=outbox.journal_seq
                )
            except OSError as exc:
                # A full disk costs the kill -9 guarantee, never the session.
                if not self.quiet:
                    journal_unavailable(path, exc)

    def keep(self, core: Core, journal_seq: int | None, clock: Callable[[], float]) -> bool:
        """Write the core's changes, and how far the journal is taken in, to the outbox.

        A created model's outbox opens here, once the hub has given it an id. What the
        disk refuses is kept, first in order, for the next call; sending goes on from
        memory meanwhile.

        Returns:
            True once ``journal_seq`` is written (the journal may start over).
        """
        if self.outbox is None:
            if core.model_id is None or self.error is not None:
                return False
            try:
                self.attach(core.model_id, core, now=clock())
            except Exception as exc:
                self.error = exc
                return False
        # Most calls have nothing to write (a step that only waits, an answer that changed
        # nothing kept): they return before taking an empty list from the core.
        if journal_seq is None and not self.unwritten and not core.schedule.changes:
            return False
        changes = core.take_changes()
        if self.unwritten:
            # What an earlier write failed to keep goes first, in its order.
            changes = self.unwritten + changes
        try:
            self.apply(changes, journal_seq=journal_seq)
        except OSError as exc:  # a full disk must not stop delivery of what is in memory
            self._refused(changes, exc)
            return False
        except Exception:  # not the disk: one change that can never be written
            if not self._write_apart(changes, journal_seq):
                return False
        self.unwritten = []
        if self.write_error is not None:
            self.write_error = None
            if not self.quiet:  # shown as the failure was (warnings reach stderr)
                log.safely("warning", "outbox.write_recovered", model_id=core.model_id)
        return True

    @property
    def disk_lags(self) -> bool:
        """The disk refused the last writes, and none of them was a rejection.

        What the outbox then holds pending, the hub acknowledged: it lags memory.
        """
        return self.write_error is not None and not any(
            isinstance(change, Rejected) for change in self.unwritten
        )

    def _refused(self, changes: list[Change], error: OSError) -> None:
        """Keep what the disk refused for the next write; the journal is not consumed."""
        self.unwritten = changes
        if self.write_error is None and not self.quiet:
            model_id = self._core.model_id if self._core is not None else None
            log.safely("error", "outbox.write_failed", error=str(error), model_id=model_id,
                       unwritten=len(changes))  # fmt: skip
        self.write_error = error

    def _write_apart(self, changes: list[Change], journal_seq: int | None) -> bool:
        """Write the changes one at a time, setting aside any that can never be written.

        Retrying such a change would hold back every later one for good, so it is
        dropped with a log line naming it. False when the disk refused a write meanwhile
        (the rest is kept for the next write).
        """
        model_id = self._core.model_id if self._core is not None else None
        for at, change in enumerate(changes):
            try:
                self.apply([change], journal_seq=None)
            except OSError as exc:
                self._refused(changes[at:], exc)
                return False
            except Exception as exc:
                log.safely("error", "outbox.change_dropped", change=type(change).__name__,
                           error=f"{type(exc).__name__}: {exc}", model_id=model_id)  # fmt: skip
        try:
            self.apply([], journal_seq=journal_seq)
        except OSError as exc:
            self._refused([], exc)
            return False
        except Exception as exc:  # the outbox itself is unusable: nothing more to do here
            log.safely("error", "outbox.write_failed", error=str(exc), model_id=model_id)
            return False
        return True

    def apply(self, changes: Sequence[Change], *, journal_seq: int | None) -> None:
        """Keep ``changes``, and how far the journal is in the outbox, in one transaction.

        The journal starts over only once the outbox has its events.

        Raises:
            OSError: The outbox could not be written (a full disk, an I/O error).
        """
        outbox = self.outbox
        if outbox is None:
            return
        core = self._core
        run = (core.dialect.name, core.run_id, core.model_url) if core is not None else None
        if core is not None and run != self._run:
            # A resumed Platform model got a new run: later records belong to it. A disk
            # that refuses this write refuses the records too; it is tried again with them.
            with contextlib.suppress(OSError, sqlite3.Error):
                outbox.db.set_run(core.dialect.name, core.run_id, core.model_url)
                self._run = run
        outbox.apply(changes, journal_seq=journal_seq)
        if journal_seq is not None and self.journal is not None:
            self.journal.consumed(journal_seq)
        self.inbox.weights.kept()

    def _adopt_run(self, outbox: Outbox, core: Core) -> None:
        """Check the outbox speaks the core's dialect; a Platform core takes its run.

        Raises:
            HubfsmError: The outbox holds records of the other dialect.
        """
        spoken, run_id, url = outbox.db.run()
        if spoken is None and not outbox.load().empty:
            spoken = "hub"  # kept before outboxes recorded their dialect
        name = core.dialect.name
        if spoken is not None and spoken != name:
            raise HubfsmError(
                f"the outbox of model {outbox.model_id} holds records of the {spoken} "
                f"protocol; open it with protocol={spoken!r}"
            )
        if core.run_id is None:
            # The run goes on unannounced: no answer will name its page again.
            core.run_id, core.model_url = run_id, core.model_url or url
        outbox.db.set_run(name, core.run_id, core.model_url)
        self._run = (name, core.run_id, core.model_url)

    def close(self, *, remove: bool, stale: bool = False) -> None:
        """Close the journal and the outbox (``remove``: delete an outbox left empty).

        What the outbox holds is read first, into :attr:`kept`: what a closing session
        tells the user is kept is what is on disk.

        Args:
            remove: Nothing is pending: delete the outbox if it holds nothing either.
            stale: What the outbox and its journal hold pending was acknowledged, but
                the disk refused to record so (it is full): with ``remove``, the outbox
                goes unless it holds records the hub rejected, and nothing is counted
                as kept. Kept, such rows would be named "not on the hub yet", and sent
                again by ``hubfsm sync`` (to a model trained by then, for ever).
        """
        if self.journal is not None:
            self.journal.close()
        outbox = self.outbox
        if outbox is None:
            return
        if stale:
            self.kept = None  # what the disk counts is not what the hub lacks
            try:
                rejected = bool(outbox.load().rejected)
            except Exception:  # unreadable now: kept, as any damage is
                rejected = True
            if rejected:
                outbox.close()
            else:
                # Deleting needs no room on the disk; writing that it is empty would.
                outbox.discard()
                self.kept = pending_counts(0, False, False)
            return
        try:
            self.kept = kept_counts(outbox)
        except Exception:  # unreadable now: say nothing rather than a wrong count
            self.kept = None
        outbox.close(remove=remove)
