"""Surveying outboxes without taking them: what each holds, and which are damaged.

``hubfsm status`` and ``hubfsm sync`` read every outbox under a root read-only (safe
while a session has one open), list a damaged one instead of stopping at it, and on
request set it aside or keep a copy of a damaged journal, so nothing is lost unseen.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import attrs

from hubfsm.core.identifier import OUTBOX_ID
from hubfsm.core.values import (
    KEPT_ASIDE,
    CheckpointOffered,
    EpochEnded,
    FinishRequested,
    Rejected,
    pending_counts,
)
from hubfsm.durable.handover import still_offered
from hubfsm.durable.journal_format import event_of
from hubfsm.durable.journal_scan import JournalDamage, scan
from hubfsm.durable.layout import (
    DATABASE,
    FILE_MODE,
    JOURNAL,
    LOCK,
    HubRoots,
    OutboxDamaged,
    OutboxLockedError,
    check_database,
    damage_of,
    default_root,
    hub_of,
    log,
    machine_fault,
    salvage,
)
from hubfsm.errors import HubfsmError
from hubfsm.transport import Request

__all__ = [
    "OutboxInfo",
    "OutboxUnreadable",
    "Survey",
    "find",
    "inspect",
    "keep_damaged_journal",
    "report_damage",
    "set_aside",
    "set_aside_reporting",
    "survey",
]


class OutboxUnreadable(HubfsmError):
    """An outbox the machine cannot read now (a full disk, an I/O error, a read-only one).

    Not damage: nothing is set aside, and it is read again next time.

    Attributes:
        directory: The outbox directory.
        problem: What kept it from being read.
    """

    def __init__(self, directory: Path, problem: str) -> None:
        self.directory = directory
        self.problem = problem
        super().__init__(f"the outbox in {directory} cannot be read now: {problem}")


@attrs.frozen
class OutboxInfo:
    """What one outbox holds, read without taking it.

    Attributes:
        journal_damage: What the trainer's journal lost, if it is damaged.
        rejected: The records the hub refused, described (kept until ``hubfsm discard``).
        refusal: The refusal that stopped the last session's sending, if it is not over.
        kept_aside: The records recovery set aside unsent, described with the reason
            (kept until ``hubfsm discard``, like rejected ones).
        hub: The hub the records are for, if the outbox records it (those made by
            older versions do not, until a session opens them).
        protocol: The dialect its records are in: ``hub`` or ``platform``.
        page: A Platform run's page, if the outbox records it.
        written: When a session last wrote to the outbox or its journal (epoch seconds).
    """

    directory: Path
    model_id: str
    pending: dict[str, int]
    in_use: bool
    journal_damage: JournalDamage | None = None
    rejected: tuple[str, ...] = ()
    refusal: str | None = None
    kept_aside: tuple[str, ...] = ()
    hub: HubRoots | None = None
    protocol: str = "hub"
    page: str | None = None
    written: float | None = None


def find(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The outbox directories under ``root`` (or ``root`` itself if it is one).

    Only entries named by a model id count: one set aside as damaged is left out.
    """
    base = Path(root) if root is not None else default_root()
    if _is_outbox(base):
        return [base]
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if OUTBOX_ID.fullmatch(p.name) and _maybe_outbox(p))


def _maybe_outbox(directory: Path) -> bool:
    """An outbox, or one that cannot be looked into: reading it then says why."""
    try:
        return _is_outbox(directory)
    except OSError:
        # A model's outbox this user may not read must be reported, not stop the others.
        return True


def _is_outbox(directory: Path) -> bool:
    """An outbox's directory: its database, or without it, records to salvage.

    A directory whose database is gone (deleted by hand, say) while its journal or
    weight snapshots remain is a damaged outbox, never "no outbox": a killed trainer's
    calls may be there alone. One left with only its lock (a disk that was full as
    the outbox was first made) holds nothing.
    """
    if (directory / DATABASE).exists():
        return True
    if not OUTBOX_ID.fullmatch(directory.name) or not directory.is_dir():
        return False
    files = directory / "files"
    if files.is_dir() and any(files.glob("*.pt")):
        return True
    return (directory / JOURNAL).is_file() and bool(scan(directory / JOURNAL, after=0).records)


def _in_use(directory: Path) -> bool:
    try:
        fd = os.open(directory / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read(directory: Path) -> OutboxInfo:
    if not (directory / DATABASE).exists():
        raise OutboxDamaged(directory, "its database is missing", salvage(directory))
    uri = f"file:{directory / DATABASE}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
        try:
            check_database(db)
            row = db.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
            seq = db.execute("SELECT value FROM meta WHERE key = 'journal_seq'").fetchone()
            spoken = db.execute("SELECT value FROM meta WHERE key = 'protocol'").fetchone()
            url = db.execute("SELECT value FROM meta WHERE key = 'model_url'").fetchone()
            queued = {epoch for (epoch,) in db.execute("SELECT epoch FROM metrics")}
            in_ops = 0
            checkpoint = False
            # A record that does not read back is kept aside when the outbox is next
            # opened (see OutboxDB.set_aside_unreadable); until then it is listed so.
            unreadable: list[str] = []
            for channel, request, payload in db.execute(
                "SELECT channel, request, payload FROM ops"
            ):
                try:
                    json.loads(request)
                    epochs = len(json.loads(payload)) if channel == "metrics" else 0
                except (ValueError, TypeError):
                    unreadable.append(f"a {channel} record: it cannot be read")
                    continue
                in_ops += epochs
                if channel == "checkpoint":
                    checkpoint = True
            slots = dict(db.execute("SELECT kind, value FROM slots"))
            for kind, value in list(slots.items()):
                try:
                    json.loads(value)
                except ValueError:
                    unreadable.append(f"a {kind} record: it cannot be read")
                    del slots[kind]
            kinds = set(slots)
            rejected, refusal, aside = _refusals(db)
            aside += tuple(unreadable)
            hub = hub_of(db)
        finally:
            db.close()
    except sqlite3.Error as error:
        fault = machine_fault(directory, error)
        if fault is not None:
            raise OutboxUnreadable(directory, fault) from None
        raise OutboxDamaged(directory, damage_of(error), salvage(directory)) from None
    except (ValueError, TypeError) as error:  # JSON that is not what was written
        raise OutboxDamaged(
            directory, f"its records cannot be read ({type(error).__name__})", salvage(directory)
        ) from None
    model_id = row[0] if row is not None else None
    if not isinstance(model_id, str) or not OUTBOX_ID.fullmatch(model_id):
        raise OutboxDamaged(directory, "it names no valid model id", salvage(directory))
    if directory.name != model_id:
        raise OutboxDamaged(
            directory, f"it holds the records of model {model_id}", salvage(directory)
        )
    try:
        after = int(seq[0]) if seq is not None else 0
    except ValueError:
        problem = "its journal position is unreadable"
        raise OutboxDamaged(directory, problem, salvage(directory)) from None
    in_use = _in_use(directory)
    damage, journaled, final, files = None, set(), "final" in kinds, directory / "files"
    epoch_weights = checkpoint or "checkpoint" in kinds
    if not in_use:  # a running session's journal may be read mid-write
        replay = scan(directory / JOURNAL, after=after)
        damage = replay.damage
        # The journal's records past the outbox count, as for a closing session: a fold
        # the disk refused (no room for a copy) must not hide the final weights.
        for _, entry in replay.records:
            event = event_of(entry)
            if isinstance(event, EpochEnded) and event.epoch not in queued:
                journaled.add(event.epoch)
            elif not isinstance(event, (CheckpointOffered, FinishRequested)):
                continue
            elif not still_offered(event, files):
                continue  # rewritten or cut short since: fold keeps nothing of it
            elif isinstance(event, CheckpointOffered):
                epoch_weights = True
            else:  # the final weights supersede waiting epoch weights
                final, epoch_weights = True, checkpoint
    pending = pending_counts(len(queued) + in_ops + len(journaled), epoch_weights, final)
    protocol = "platform" if spoken is not None and spoken[0] == "platform" else "hub"
    page = url[0] if url is not None and isinstance(url[0], str) else None
    times = [_mtime(directory / name) for name in (DATABASE, f"{DATABASE}-wal", JOURNAL)]
    return OutboxInfo(
        directory,
        model_id,
        pending,
        in_use,
        damage,
        rejected,
        refusal,
        kept_aside=aside,
        hub=hub,
        protocol=protocol,
        page=page,
        written=max((t for t in times if t is not None), default=None),
    )


def _mtime(path: Path) -> float | None:
    # An empty write-ahead log is a reader's (this survey's own, say), not a write.
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime if st.st_size else None


def _refusals(
    db: sqlite3.Connection,
) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """The rejected records, the kept refusal and the records kept aside, read-only."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    records: list[Rejected] = []
    if "rejected" in tables:
        rows = db.execute(
            "SELECT channel, payload, status, reason FROM rejected ORDER BY seq"
        ).fetchall()
        records = [
            Rejected(channel, Request("POST", ""), json.loads(payload), status, reason)
            for channel, payload, status, reason in rows
        ]
    rejected = tuple(r.describe() for r in records if r.status != KEPT_ASIDE)
    aside = tuple(r.describe() for r in records if r.status == KEPT_ASIDE)
    row = db.execute("SELECT value FROM meta WHERE key = 'refusal'").fetchone()
    return rejected, None if row is None else str(row[0]), aside


def inspect(directories: Iterable[Path]) -> list[OutboxInfo]:
    """Read what each outbox holds (read-only; safe while a session has it open).

    Raises:
        OutboxDamaged: One of them cannot be read; see :func:`survey` to go on past it.
    """
    return [_read(directory) for directory in directories]


@attrs.frozen
class Survey:
    """Every outbox under a root: those that could be read, and those that are damaged."""

    infos: list[OutboxInfo]
    damaged: list[OutboxDamaged]
    #: Those the machine could not read now: reported, never set aside.
    unreadable: list[OutboxUnreadable] = attrs.field(factory=list)


def survey(root: str | os.PathLike[str] | None = None) -> Survey:
    """Read every outbox under ``root``; a damaged one is listed, not raised."""
    infos: list[OutboxInfo] = []
    damaged: list[OutboxDamaged] = []
    unreadable: list[OutboxUnreadable] = []
    for directory in find(root):
        try:
            infos.append(_read(directory))
        except OutboxDamaged as error:
            damaged.append(error)
        except OutboxUnreadable as error:
            unreadable.append(error)
        except OSError as error:
            # A piece of the wrong kind (a directory where its lock or journal belongs),
            # or one that cannot be opened: this outbox only, never the others.
            unreadable.append(OutboxUnreadable(directory, f"{error.strerror}: {error.filename}"))
    return Survey(infos, damaged, unreadable)


def set_aside(directory: str | os.PathLike[str]) -> Path:
    """Move a damaged outbox out of the way: ``<name>.damaged-<timestamp>`` beside it.

    Nothing is deleted: its weight snapshots and journal stay there to be salvaged.
    A new session of the model starts a fresh outbox.

    Returns:
        Where it is now.

    Raises:
        OutboxLockedError: A running session holds it.
        ValueError: It is not a real directory (a symbolic link, say).
    """
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        raise ValueError(f"{directory} is not an outbox directory")
    if _in_use(directory):
        raise OutboxLockedError(f"the outbox in {directory} is in use by a running session")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for n in range(1000):
        target = directory.with_name(f"{directory.name}.damaged-{stamp}" + (f"-{n}" if n else ""))
        if not target.exists():
            os.rename(directory, target)
            log.warning("outbox.set_aside", directory=str(directory), now=str(target))
            return target
    raise FileExistsError(f"no free name to set {directory} aside")


def keep_damaged_journal(info: OutboxInfo) -> Path | None:
    """Copy a damaged journal beside itself before a session replays it and starts over.

    Returns:
        The copy (owner-only), or None when the journal is not damaged.
    """
    if info.journal_damage is None:
        return None
    source = info.directory / JOURNAL
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = info.directory / f"{JOURNAL}.damaged-{stamp}"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with open(fd, "wb") as copy:
        copy.write(source.read_bytes())
    return target


def set_aside_reporting(error: OutboxDamaged, *, out: TextIO) -> None:
    """Set a damaged outbox aside and say where it went (or why it could not go)."""
    try:
        print(f"  set aside as {set_aside(error.directory)}", file=out)
    except (HubfsmError, OSError, ValueError) as exc:
        print(f"  could not set it aside: {exc}", file=out)


def report_damage(found: Survey, *, out: TextIO, repair: bool) -> int:
    """Print what is damaged or unreadable in ``found``; return how many outboxes and journals.

    Args:
        found: What :func:`survey` found.
        out: Where the report goes.
        repair: Also set damaged outboxes aside and keep copies of damaged journals
            (for ``hubfsm sync``, which then sends the rest); without it, only report
            (for ``hubfsm status``).
    """
    for error in found.damaged:
        print(f"damaged: {error}", file=out)
        if repair:
            set_aside_reporting(error, out=out)
    for unread in found.unreadable:
        print(f"not read: {unread}", file=out)
    for info in found.infos:
        if info.journal_damage is None:
            continue
        print(f"damaged: model {info.model_id}: {info.journal_damage.describe()}", file=out)
        if repair:
            try:
                print(f"  a copy is kept as {keep_damaged_journal(info)}", file=out)
            except OSError as exc:
                print(f"  no copy could be kept: {exc}", file=out)
    return (
        len(found.damaged)
        + len(found.unreadable)
        + sum(i.journal_damage is not None for i in found.infos)
    )
