"""The inbox between the trainer and the driver: trainer calls in, events out, in order.

The training thread puts calls in and returns at once; the driver (on the worker, or
when simulated time passes) takes them out as trainer events. With a journal open, the
calls that must outlive a ``kill -9`` (an epoch's metrics, a checkpoint offer, the
final weights) are written to it before ``put`` returns; without one, they wait in
memory. How an item is held (a values record in the journal, a dict, an event) is this
module's business alone.
"""

from __future__ import annotations

import collections
import marshal
import os
from collections.abc import Callable, Mapping
from typing import Any

from hubfsm.core.plain import carried
from hubfsm.core.values import CheckpointOffered, EpochEnded, Event, FinishRequested
from hubfsm.durable.journal import Journal, JournalOpener
from hubfsm.durable.journal_format import InboxItem

#: The events journaled when a journal is open: what a kill must not lose. The others
#: (start, barrier, interrupt, finish-pending) steer this process's session only: a
#: process that dies takes them with it, and the next one issues its own.
KEPT = (CheckpointOffered, FinishRequested, EpochEnded)


class Inbox:
    """The trainer's calls, in order, for the driver; journaled once a journal is open."""

    def __init__(self) -> None:
        self._items: collections.deque[InboxItem] = collections.deque()
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

    def take(self) -> tuple[int, Event] | None:
        """The oldest queued call as ``(seq, event)``, or None when the inbox is empty.

        ``seq`` is the call's journal sequence number, 0 for a call not journaled.
        """
        try:
            item = self._items.popleft()
        except IndexError:
            return None
        if len(item) == 2:
            return item
        if len(item) == 3:
            return 0, EpochEnded(item[1], item[2])
        # A values record's item: its values are the marshal bytes the journal wrote.
        seq, epoch, names, data = item
        return seq, EpochEnded(epoch, dict(zip(names, marshal.loads(data), strict=True)))

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
