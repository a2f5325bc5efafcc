"""Looking after a hub from outside its requests: its keys, a run's cancellation, its schema.

``hubfsm hub keys`` adds, lists and revokes the hub's API keys and hands models on;
``hubfsm hub cancel`` cancels a Platform run; :func:`migrate` brings a team hub's
PostgreSQL database to the schema of :data:`MIGRATIONS`.

The keys live in the hub's data directory (digests only, in ``hub.sqlite3``), so these
commands work whether or not ``hubfsm hub serve`` is running, and a running hub sees the
change at its next request: revoking a key is how to rehearse a revoked key against a
trainer. A full key is printed once, by ``add``; ``list`` shows masked keys.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from hubfsm.errors import HubfsmError
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import KeyRecord, load_or_create_key, new_key, new_platform_key
from hubfsm.hub.store_sqlite import SqliteStore

Command = Callable[..., argparse.ArgumentParser]


#: The schema, one step per version; a step never changes once released.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE models (
        id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, record TEXT NOT NULL);
    CREATE INDEX models_created ON models (created_at, id);
    CREATE TABLE metrics (
        model_id TEXT NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
        PRIMARY KEY (model_id, epoch));
    CREATE TABLE weights (
        model_id TEXT NOT NULL, kind TEXT NOT NULL, sha256 TEXT NOT NULL, size BIGINT NOT NULL,
        object TEXT NOT NULL, PRIMARY KEY (model_id, kind));
    CREATE INDEX weights_object ON weights (object);
    CREATE TABLE replies (
        scope TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL,
        request TEXT NOT NULL DEFAULT '', stored_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX replies_stored ON replies (stored_at);
    CREATE TABLE keys (
        digest TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, record TEXT NOT NULL);
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # The console output of Platform runs (chunks kept once by their id).
    """
    CREATE TABLE console (
        model_id TEXT NOT NULL, chunk_id INTEGER NOT NULL, lines INTEGER NOT NULL,
        content TEXT NOT NULL, PRIMARY KEY (model_id, chunk_id));
    """,
    # The rate limit's token buckets, one per key digest, shared by every process
    # (unlogged: a crash may forget them, which only refills every bucket).
    """
    CREATE UNLOGGED TABLE rate_buckets (
        who TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL,
        at DOUBLE PRECISION NOT NULL, spent BOOLEAN NOT NULL);
    """,
    # When each epoch's metrics first came (the pages' time axis); NULL before this step.
    """
    ALTER TABLE metrics ADD COLUMN arrived_at DOUBLE PRECISION;
    """,
    # Files PUT to Platform upload URLs, waiting for the event that promotes them: the PUT
    # and the event may reach different processes, so no process may keep them to itself.
    """
    CREATE TABLE uploads (
        path TEXT PRIMARY KEY, seq BIGINT GENERATED ALWAYS AS IDENTITY,
        model_id TEXT NOT NULL, run_id BIGINT NOT NULL, sha256 TEXT NOT NULL,
        size BIGINT NOT NULL, object TEXT NOT NULL);
    CREATE INDEX uploads_model ON uploads (model_id, seq);
    """,
)

# Any constant: the lock that serialises migrations of one database.
_MIGRATION_LOCK = 0x6875_6266_736D


def migrate(url: str) -> int:
    """Bring the database at ``url`` to the current schema; the schema version it has now.

    Safe to run from several processes at once (they take turns) and again later (steps
    already applied are skipped).
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = int(row[0]) if row is not None and row[0] is not None else 0
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(step)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
        return len(MIGRATIONS)


def _open(
    data_dir: str | os.PathLike[str] | None,
    database: str | None = None,
    *,
    create: bool = False,
) -> Hub:
    """The hub in ``data_dir`` (its records in ``database`` if given).

    Only ``create`` makes a hub where there is none; a team's hub lives in its database.

    Raises:
        HubfsmError: There is no hub there and ``create`` is False.
    """
    from hubfsm.hub.server import default_data_dir

    if database is not None:
        from hubfsm.hub.store_postgres import PostgresStore

        # Keys may be made before the team's hub first served: the schema comes first.
        migrate(database)
        # Only the database: a teammate's machine has no say in the team's keys, and its
        # own hub's key file must not become an admin key of the team's hub.
        return Hub(PostgresStore(database, None, pool_size=1), clock=time.time)
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    if not create and not (folder / "api_key").is_file():
        # A misspelled --data must not quietly become a new hub with a new key.
        raise HubfsmError(
            f"{folder} holds no local hub (no api_key file): check --data, or create one "
            f"with `hubfsm hub serve --data {folder}`"
        )
    folder.mkdir(parents=True, exist_ok=True)
    hub = Hub(SqliteStore(folder), clock=time.time)
    hub.ensure_key(load_or_create_key(folder / "api_key"), label="api_key file", admin=True)
    return hub


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def add(
    data_dir: str | os.PathLike[str] | None,
    label: str = "",
    out: TextIO | None = None,
    database: str | None = None,
    *,
    platform: bool = False,
    admin: bool = False,
) -> str:
    """Create a key (a ``ul_`` Platform key if ``platform``), print it once, and return it.

    An ``admin`` key, signed in to the pages, sees every model.
    """
    out = out if out is not None else sys.stdout
    hub = _open(data_dir, database, create=True)
    try:
        key = new_platform_key() if platform else new_key()
        record = hub.add_key(key, label, admin=admin)
    finally:
        hub.store.close()
    role = " (admin)" if record.admin else ""
    print(f"Added key {record.id}{f' ({label})' if label else ''}{role}.", file=out)
    print("The key is shown only now; keep it somewhere safe:", file=out)
    print(f"  {key}", file=out)
    return key


def listing(
    data_dir: str | os.PathLike[str] | None,
    out: TextIO | None = None,
    database: str | None = None,
) -> list[KeyRecord]:
    """Print every key, masked, with its state and its number of models."""
    out = out if out is not None else sys.stdout
    hub = _open(data_dir, database)
    try:
        records = hub.list_keys()
        owners = Counter(record.owner for record in hub.store.list_models())
    finally:
        hub.store.close()
    rows = [("id", "key", "label", "models", "created", "state")]
    for record in records:
        state = "valid" if record.revoked_at is None else f"revoked {_when(record.revoked_at)}"
        if record.admin:
            state += ", admin"
        rows.append(
            (
                record.id,
                record.hint,
                record.label or "-",
                str(owners.get(record.id, 0)),
                _when(record.created_at),
                state,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    return records


def revoke(
    data_dir: str | os.PathLike[str] | None,
    key_id: str,
    out: TextIO | None = None,
    database: str | None = None,
) -> int:
    """Revoke the key whose id starts with ``key_id``; the exit status (1 if none or several)."""
    out = out if out is not None else sys.stdout
    hub = _open(data_dir, database)
    try:
        matches = [record for record in hub.list_keys() if record.id.startswith(key_id)]
        if len(key_id) < 4 or len(matches) != 1:
            found = "no key" if not matches else f"{len(matches)} keys"
            print(
                f"error: {found} with an id starting with {key_id!r} (give 4+ characters)",
                file=sys.stderr,
            )
            return 1
        record = hub.revoke(matches[0].id)
    finally:
        hub.store.close()
    assert record is not None
    print(f"Revoked key {record.id} ({record.hint}); requests with it now get 401.", file=out)
    return 0


def _one(records: list[KeyRecord], given: str) -> KeyRecord | str:
    """The key whose id starts with ``given`` or whose label is ``given``; else why not."""
    matches = [r for r in records if r.label == given] if given else []
    if not matches and len(given) >= 4:
        matches = [r for r in records if r.id.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    found = "no key" if not matches else f"{len(matches)} keys"
    return f"{found} with the label {given!r} or an id starting with it (give 4+ characters)"


def transfer(
    data_dir: str | os.PathLike[str] | None,
    old: str,
    new: str,
    out: TextIO | None = None,
    database: str | None = None,
) -> int:
    """Hand the models of the key ``old`` to the key ``new`` (ids, their starts, or labels).

    Returns:
        The exit status: 1 when either key is not found once, or ``new`` is revoked.
    """
    out = out if out is not None else sys.stdout
    hub = _open(data_dir, database)
    try:
        records = hub.list_keys()
        source, target = _one(records, old), _one(records, new)
        for found in (source, target):
            if isinstance(found, str):
                print(f"error: {found}", file=sys.stderr)
                return 1
        assert isinstance(source, KeyRecord) and isinstance(target, KeyRecord)
        if target.revoked_at is not None:
            print(f"error: key {target.id} is revoked; hand the models to a valid key",
                  file=sys.stderr)  # fmt: skip
            return 1
        if source.id == target.id:
            print(f"error: {old!r} and {new!r} are the same key", file=sys.stderr)
            return 1
        moved = hub.transfer(source.id, target.id)
    finally:
        hub.store.close()
    print(
        f"Handed {moved} model(s) of key {source.id} ({source.hint}) to key {target.id} "
        f"({target.hint}); `hubfsm sync` with that key delivers what their outboxes keep.",
        file=out,
    )
    return 0


def cancel(
    data_dir: str | os.PathLike[str] | None,
    model_id: str,
    out: TextIO | None = None,
    database: str | None = None,
) -> int:
    """Mark a Platform run cancelled: the trainer stops at its next answer from the hub."""
    out = out if out is not None else sys.stdout
    hub = _open(data_dir, database)
    try:
        record = hub.record(model_id)
        # HUB v1's answers carry no cancellation: its trainer would never hear of one.
        hub_run = record is not None and record.get("protocol") != "platform"
        trained = record is not None and record.get("status") == "trained"
        found = record is not None and not hub_run and not trained and hub.cancel(model_id)
    finally:
        hub.store.close()
    if trained and not hub_run:
        print(f"error: model {model_id} has finished training: no trainer is left to stop",
              file=sys.stderr)  # fmt: skip
        return 1
    if hub_run:
        print(
            f"error: model {model_id} is a HUB run: HUB's API cannot tell its trainer to "
            "stop; stop its trainer where it runs",
            file=sys.stderr,
        )
        return 1
    if not found:
        print(f"error: no model {model_id!r} on this hub", file=sys.stderr)
        return 1
    print(f"Cancelled model {model_id}: its trainer stops at its next event.", file=out)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Run ``hubfsm hub cancel MODEL``."""
    return cancel(args.data, args.model_id, database=args.database)


def cmd_keys(args: argparse.Namespace) -> int:
    """Run ``hubfsm hub keys ...``."""
    if args.keys_command == "add":
        add(
            args.data,
            args.label or "",
            database=args.database,
            platform=args.platform,
            admin=args.admin,
        )
        return 0
    if args.keys_command == "list":
        listing(args.data, database=args.database)
        return 0
    if args.keys_command == "transfer":
        return transfer(args.data, args.old, args.new, database=args.database)
    return revoke(args.data, args.key_id, database=args.database)


def register(
    hub_sub: argparse._SubParsersAction[argparse.ArgumentParser], command: Command
) -> None:
    """Add ``keys add|list|revoke|transfer`` and ``cancel`` under ``hubfsm hub``."""
    keys = command(
        hub_sub,
        "keys",
        "Add, list, revoke the local hub's API keys and hand models between them; each key "
        "sees only its own models.",
        "hubfsm hub keys add --label laptop\nhubfsm hub keys list\nhubfsm hub keys revoke 3fa9c2\n"
        "hubfsm hub keys transfer 3fa9c2 laptop",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    data_help = "data directory (default: the user data directory)"
    database_help = "a team hub's PostgreSQL database (postgresql:// URL) instead"
    p = command(
        keys_sub, "add", "Create a key and print it (only this once).", "hubfsm hub keys add"
    )
    p.add_argument("--data", help=data_help)
    p.add_argument("--database", metavar="URL", help=database_help)
    p.add_argument("--label", help="a name to recognise the key by")
    p.add_argument(
        "--platform",
        action="store_true",
        help="make an Ultralytics Platform key (ul_ and 40 hex digits) for ultralytics 8.4",
    )
    p.add_argument(
        "--admin",
        action="store_true",
        help="signed in to the hub's pages, the key sees every model, not only its own",
    )
    p.set_defaults(func=cmd_keys)
    p = command(keys_sub, "list", "List the keys, masked.", "hubfsm hub keys list --data ./hub")
    p.add_argument("--data", help=data_help)
    p.add_argument("--database", metavar="URL", help=database_help)
    p.set_defaults(func=cmd_keys)
    p = command(
        keys_sub, "revoke", "Revoke a key: it gets 401 from now on.", "hubfsm hub keys revoke 3fa9"
    )
    p.add_argument("key_id", help="the key's id from `hubfsm hub keys list` (or its start)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--database", metavar="URL", help=database_help)
    p.set_defaults(func=cmd_keys)
    p = command(
        keys_sub,
        "transfer",
        "Hand every model of one key (a revoked one, say) to another, so that `hubfsm sync` "
        "with the new key delivers what the old key's trainers kept.",
        "hubfsm hub keys transfer 3fa9 laptop",
    )
    p.add_argument("old", help="the key whose models move: its id (or start) or label")
    p.add_argument("new", help="the key they move to: its id (or start) or label")
    p.add_argument("--data", help=data_help)
    p.add_argument("--database", metavar="URL", help=database_help)
    p.set_defaults(func=cmd_keys)
    p = command(
        hub_sub,
        "cancel",
        "Cancel a Platform run: every later answer to its trainer says cancelled, and it stops.",
        "hubfsm hub cancel AbCdEfGhIjKlMnOpQrSt --data ./hub",
    )
    p.add_argument("model_id", help="the model's id (on its page and in runs.json)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--database", metavar="URL", help=database_help)
    p.set_defaults(func=cmd_cancel)
