"""The commands that work on outboxes: ``hubfsm sync``, ``status`` and ``discard``.

An outbox holds what a hub has not acknowledged. ``sync`` sends it, each dialect's with
its own key (:mod:`hubfsm.runtime.sync` does the sending); ``status`` lists what each
holds (:func:`status`: what a person or a script reads of a survey). ``discard`` deletes
one (or its rejected records) for good, so it shows what the outbox holds and asks,
refuses an outbox a running session holds (it takes the outbox's lock for the whole
time), and deletes only the files an outbox makes, inside its root, after symbolic links
are resolved.

The durable layer is imported when a command runs, not when the command line is read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import attrs

from hubfsm import env
from hubfsm.cli.args import KEY_ENV, key_from
from hubfsm.masking import show_url

if TYPE_CHECKING:
    from hubfsm.durable.layout import OutboxDamaged
    from hubfsm.durable.survey import OutboxInfo


def _missing(directory: str | None) -> bool:
    """True (having said so) when the root cannot be read: given but absent, or a file.

    The default root (``HUBFSM_OUTBOX``, else the user data directory) may be absent
    (nothing was ever kept); it is checked too, so that a variable naming a file, or a
    directory this user may not read, is an error rather than "no outboxes".
    """
    from hubfsm.durable.layout import default_root

    if directory and not Path(directory).exists():
        print(f"error: {directory} does not exist", file=sys.stderr)
        return True
    root = Path(directory) if directory else default_root()
    named = directory or f"the outbox root {root}" + (
        f" ({env.OUTBOX})" if env.outbox_root() else ""
    )
    if root.exists() and not root.is_dir():
        print(f"error: {named} is not a directory", file=sys.stderr)
        return True
    try:
        if root.is_dir():
            with os.scandir(root):
                pass
    except OSError as exc:
        print(f"error: cannot read the outbox root {root}: {exc.strerror}", file=sys.stderr)
        return True
    return False


def cmd_sync(args: argparse.Namespace) -> int:
    """Send what the outboxes hold, each dialect's with its own key."""
    from hubfsm.durable.survey import survey
    from hubfsm.runtime.sync import root_of, sync

    if _missing(args.dir):
        return 2
    # A damaged outbox is for sync to report and set aside: it must not stop the others.
    waiting = [i for i in survey(root_of(args.dir)).infos if any(i.pending.values())]
    chosen = getattr(args, "protocol", None)
    spoken = sorted({i.protocol for i in waiting}) or ["hub"]
    names = [chosen] if chosen else spoken
    given = key_from(args) if (args.key or args.key_file) else None
    code = 0
    for name in names:
        key, root, key_env = _endpoint(name, given, only=chosen is not None)
        mine = [i for i in waiting if i.protocol == name]
        if mine and not key:
            print(
                f"error: sync needs the {name} API key: {key_env}, `yolo login KEY` (the "
                "key ultralytics saves), --key-file FILE or --key",
                file=sys.stderr,
            )
            return 2
        code = max(
            code,
            sync(
                root_of(args.dir),
                api_key=key,
                api_root=root,
                hub=args.hub,
                timeout=args.timeout,
                out=sys.stdout,
                # One dialect in play: every outbox, as before dialects (rejected ones too).
                protocol=name if chosen or len(spoken) > 1 else None,
            ),
        )
    return code


def _endpoint(name: str, given: str | None, *, only: bool) -> tuple[str | None, str | None, str]:
    """The key, the API root the environment names, and the key's variable, for a dialect.

    The key is the one given, else the dialect's variable, else the one ``yolo login``
    saved in ultralytics' settings. A key given on the command line goes to the dialect it
    is for (a ``ul_`` key to Platform): never a HUB key to Platform's root, or the other
    way round. Each outbox
    then goes to the hub it records (see :func:`hubfsm.runtime.sync.target`).
    """
    from hubfsm.core.platform import PLATFORM_KEY
    from hubfsm.integrations.ultralytics_objects import saved_key

    platform_key = given is not None and PLATFORM_KEY.fullmatch(given) is not None
    if name == "platform":
        key = given if given is not None and (only or platform_key) else env.platform_api_key()
        return key or saved_key(platform=True), env.platform_url(), env.PLATFORM_API_KEY
    key = given if given is not None and (only or not platform_key) else env.api_key()
    return key or saved_key(platform=False), env.api_root(), KEY_ENV


def cmd_status(args: argparse.Namespace) -> int:
    """List the outboxes and what each holds."""
    from hubfsm.runtime.sync import root_of

    if _missing(args.dir):
        return 2
    return status(
        root_of(args.dir),
        out=sys.stdout,
        as_json=args.json,
        protocol=getattr(args, "protocol", None),
    )


def status(
    root: str | os.PathLike[str] | None,
    *,
    out: TextIO,
    as_json: bool = False,
    protocol: str | None = None,
) -> int:
    """Print the outboxes and what each holds; 1 when any of them is damaged.

    Aligned columns, one outbox a line; under them each rejected record (the hub refused
    its payload), each record kept aside unsent, and each refusal that holds records
    (sending stopped; ``hubfsm sync`` delivers them once the cause is fixed). With
    ``as_json``, one JSON object with the same facts, for scripts. ``protocol`` (``hub``
    or ``platform``) lists only that dialect's outboxes; a Platform outbox is marked
    ``(platform)`` beside its model id, and its run's page is named under the table.
    """
    from hubfsm.core.values import describe_pending
    from hubfsm.durable.layout import default_root
    from hubfsm.durable.survey import report_damage, survey
    from hubfsm.runtime.sync import fold_journals

    found = survey(root)
    if as_json:
        fold_journals(found.infos, damaged=False)
        listed = [i for i in survey(root).infos if protocol is None or i.protocol == protocol]
        shown = _status_json(listed, found.damaged, found.infos)
        shown["unreadable"] = [
            {"directory": str(u.directory), "problem": u.problem} for u in found.unreadable
        ]
        print(json.dumps(shown, indent=2), file=out)
        troubled = found.damaged or found.unreadable
        return 1 if troubled or any(i.journal_damage for i in found.infos) else 0
    damaged = report_damage(found, out=out, repair=False)
    fold_journals(found.infos, damaged=False)
    infos = [i for i in survey(root).infos if protocol is None or i.protocol == protocol]
    if not infos:
        looked = Path(root) if root is not None else default_root()
        print(f"no outboxes in {looked}" if not damaged else "no readable outboxes", file=out)
        return 1 if damaged else 0
    print(f"outboxes in {infos[0].directory.parent}:", file=out)
    now = time.time()
    for line in _columns(
        [("model", "metrics", "ckpt", "final", "rejected", "refusal", "written", "hub")]
        + [_row(info, now) for info in infos],
        right={1, 2, 3, 4},
    ):
        print(line, file=out)
    for info in infos:
        if info.page:
            # A model id tells a person nothing of which training it was: the run's page
            # names it (owner, project, run).
            print(f"model {info.model_id}: the run's page is {show_url(info.page)}", file=out)
        if info.refusal:
            print(
                f"model {info.model_id}: sending stopped: {info.refusal}; "
                f"{describe_pending(info.pending)} held for `hubfsm sync`",
                file=out,
            )
        for record in info.rejected:
            print(f"model {info.model_id}: rejected by the hub: {record}", file=out)
        for record in info.kept_aside:
            print(f"model {info.model_id}: kept aside: {record}", file=out)
        if not (info.in_use or info.refusal or info.rejected or info.kept_aside) and not any(
            info.pending.values()
        ):
            # A run stopped before anything of it was left unsent (a kill before its first
            # epoch): a row of zeros alone does not say why it stays, or how it goes.
            why = (
                "kept so that resuming this training (resume=True) goes on with the same run; "
                if info.protocol == "platform"
                else ""
            )
            print(
                f"model {info.model_id}: nothing to send; {why}`hubfsm discard "
                f"{info.model_id}` deletes it if you no longer want it",
                file=out,
            )
    if any(any(info.pending.values()) for info in infos):
        print(
            "`hubfsm sync` sends what they hold; `hubfsm discard MODEL_ID` deletes one you "
            "no longer want",
            file=out,
        )
    return 1 if damaged else 0


def _row(info: OutboxInfo, now: float) -> tuple[str, ...]:
    p = info.pending
    written = "-" if info.written is None else _ago(now - info.written)
    return (
        info.model_id if info.protocol == "hub" else f"{info.model_id} ({info.protocol})",
        str(p["metrics"]),
        str(p["checkpoint"]),
        str(p["final"]),
        str(len(info.rejected) + len(info.kept_aside)),
        "held" if info.refusal else "-",
        "in use" if info.in_use else written,  # a running session writes it now
        info.hub.api_root if info.hub is not None else "not recorded",
    )


def _ago(seconds: float) -> str:
    """``seconds`` as a person reads an age: ``40 s ago``, ``5 min ago``, ``2 d ago``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{max(0, int(seconds))} s ago"


def _columns(rows: list[tuple[str, ...]], *, right: set[int]) -> list[str]:
    """Rows as lines of columns two spaces apart; the columns in ``right`` right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _page(info: OutboxInfo) -> str | None:
    """The run's page: the one a Platform outbox records, else the HUB model's page."""
    if info.page:
        return info.page
    return None if info.hub is None else f"{info.hub.web_root}/models/{info.model_id}"


def _status_json(
    infos: list[OutboxInfo], damaged: list[OutboxDamaged], before: list[OutboxInfo]
) -> dict[str, object]:
    """What ``hubfsm status --json`` prints: every outbox, and every damaged one."""
    journal_damage = {
        i.directory: i.journal_damage.describe() for i in before if i.journal_damage is not None
    }
    return {
        "outboxes": [
            {
                "model_id": info.model_id,
                "directory": str(info.directory),
                "pending": dict(info.pending),
                "rejected": list(info.rejected),
                "kept_aside": list(info.kept_aside),
                "refusal": info.refusal,
                "in_use": info.in_use,
                "hub": None if info.hub is None else attrs.asdict(info.hub),
                "protocol": info.protocol,
                "page": _page(info),
                "written_at": info.written,
                "journal_damage": journal_damage.get(info.directory),
            }
            for info in infos
        ],
        "damaged": [
            {"directory": str(d.directory), "problem": d.problem, "salvage": d.salvage}
            for d in damaged
        ],
    }


def cmd_discard(args: argparse.Namespace) -> int:
    """Delete an outbox and what it holds, after asking."""
    return discard(args.target, root=args.root, yes=args.yes, rejected_only=args.rejected)


def _target(text: str, root: str | None) -> tuple[Path, Path] | str:
    """(outbox directory, its root), both resolved; or why there is none."""
    from hubfsm.core.identifier import OUTBOX_ID
    from hubfsm.durable.layout import DATABASE, default_root

    given = Path(text)
    if given.is_dir() and (given / DATABASE).exists():
        directory = given.resolve()
        if not OUTBOX_ID.fullmatch(directory.name):
            return f"{text} is not an outbox directory (its name is not a model id)"
        return directory, directory.parent
    if not OUTBOX_ID.fullmatch(text):
        return f"{text} is neither a model id nor an outbox directory (with an {DATABASE})"
    base = (Path(root) if root else default_root()).resolve()
    directory = (base / text).resolve()
    if directory.parent != base or not (directory / DATABASE).exists():
        return f"no outbox for model {text} in {base}"
    return directory, base


def _confirmed(question: str, yes: bool) -> bool | None:
    """True to go on; False when the user said no; None when nobody can answer."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def discard(text: str, *, root: str | None, yes: bool, rejected_only: bool = False) -> int:
    """Delete the outbox named by ``text`` (or only its rejected records); the exit status."""
    from hubfsm.core.values import describe_pending
    from hubfsm.durable.layout import OutboxDamaged, OutboxLockedError
    from hubfsm.durable.outbox import Outbox
    from hubfsm.durable.survey import inspect

    found = _target(text, root)
    if isinstance(found, str):
        print(f"error: {found}", file=sys.stderr)
        return 1
    directory, base = found
    (info,) = inspect([directory])
    try:
        outbox = Outbox(directory, info.model_id, root=base)
    except OutboxLockedError:
        print(
            f"error: a running session holds the outbox of model {info.model_id}; stop it first",
            file=sys.stderr,
        )
        return 1
    except OutboxDamaged as exc:
        print(f"error: {exc}; delete {directory} by hand if you no longer want it", file=sys.stderr)
        return 1
    done = False
    try:
        pending = describe_pending(info.pending)
        # Records kept aside unsent are set aside like rejected ones, and go with them.
        held = len(info.rejected) + len(info.kept_aside)
        if rejected_only:
            what = f"{held} rejected record(s)"
        else:
            what = f"{pending} not on the hub" + (
                f", and {held} rejected record(s)" if held else ""
            )
        answer = _confirmed(
            f"model {info.model_id}: {what}, in {directory}.\nDelete for good?", yes
        )
        if answer is None:
            print(
                f"error: the outbox of model {info.model_id} holds {what}; pass --yes to "
                "delete without a question",
                file=sys.stderr,
            )
            return 1
        if not answer:
            print("kept", file=sys.stderr)
            return 1
        if rejected_only:
            count = outbox.drop_rejected()
            print(f"discarded {count} rejected record(s) of model {info.model_id}")
        else:
            outbox.discard()
            done = True
            print(f"discarded the outbox of model {info.model_id} ({what})")
        return 0
    finally:
        if not done:
            outbox.close()
