"""The floor under a simulated seed's CPU: what its storage costs with no Python around it.

The simulator's target (at most 12 ms of CPU per 100-epoch ``flaky`` seed, every durable
layer running) is a budget for everything a seed does. Part of it is spent below
Python, in calls no rewrite of hubfsm's own code removes while the layers run: the
outbox's SQL statements and the file calls of the trainer, the journal and the
outbox's snapshots. This measures that part, seed by seed:

- **seed**: the seed's CPU time (``time.process_time``), as ``hubfsm simulate`` runs it;
- **SQL, replayed**: every statement the seed's outboxes executed (recorded through a
  proxy of their connections, with their parameters), executed again in order on a
  fresh in-memory database with the outbox's schema, alone: SQLite's own cost;
- **file calls**: the time inside ``os.open``, ``read``, ``write``, ``close``,
  ``unlink``, ``stat``, ``fstat`` and the other ``os`` calls the seed made (timed
  around each real call in a second run of the same seed), the client's apart from the
  world's (the simulated trainer writing its weights files, the seed's temporary
  directory removed; the simulator's disk stands in for the outbox's files, so its
  calls are the client's);
- **Python calls**: the Python function calls the seed made (counted with
  ``sys.setprofile`` in a third run), and what the budget left after the floor allows
  each.

Usage::

    python bench/sim_floor.py [--seeds 10] [--epochs 100] [--target-ms 12]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.durable.rows import SCHEMA
from hubfsm.sim.play import run_seed

#: The ``os`` functions timed as file calls.
FILE_CALLS = (
    "open", "read", "write", "close", "unlink", "stat", "fstat", "lstat", "replace",
    "rename", "fsync", "mkdir", "rmdir", "scandir", "listdir", "posix_fallocate",
    "ftruncate", "pread", "pwrite",
)  # fmt: skip

Statement = tuple[str, str, Any]


class _Recording:
    """A connection that records what is executed on it, then executes it."""

    def __init__(self, connection: sqlite3.Connection, into: list[Statement]) -> None:
        self._connection = connection
        self._into = into

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        self._into.append(("one", sql, parameters))
        return self._connection.execute(sql, parameters)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        rows = list(rows)
        self._into.append(("many", sql, rows))
        return self._connection.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


@contextmanager
def _recorded(into: list[Statement]) -> Iterator[None]:
    init = OutboxDB.__init__

    def recording(self: OutboxDB, connection: sqlite3.Connection, *a: Any, **kw: Any) -> None:
        init(self, _Recording(connection, into), *a, **kw)  # type: ignore[arg-type]

    OutboxDB.__init__ = recording  # type: ignore[method-assign]
    try:
        yield
    finally:
        OutboxDB.__init__ = init  # type: ignore[method-assign]


def _replay(statements: list[Statement]) -> float:
    """CPU seconds to execute ``statements`` on a fresh database with the schema."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(SCHEMA)
    execute, executemany = db.execute, db.executemany
    started = time.process_time()
    for kind, sql, parameters in statements:
        if kind == "one":
            execute(sql, parameters)
        else:
            executemany(sql, parameters)
    spent = time.process_time() - started
    db.close()
    return spent


@contextmanager
def _timed_file_calls(spent: dict[str, list[int]]) -> Iterator[None]:
    """Time the file calls, by who made them: the simulated world or the client's stack."""
    clock = time.perf_counter_ns
    caller = sys._getframe
    originals = {name: getattr(os, name) for name in FILE_CALLS if hasattr(os, name)}

    def timed(call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Who asked: the nearest frame of hubfsm's own (a call from the standard
            # library, such as a temporary directory's removal, is its caller's). The
            # simulator's modules are the world (its trainer writing weights, its
            # temporary directories), except its disk, which stands in for the outbox's
            # files: a snapshot reading the trainer's file is the client's.
            frame = caller(1)
            module = ""
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if module.startswith(("hubfsm.", "transports.")):
                    break
                frame = frame.f_back
            world = module.startswith("hubfsm.sim.") and module != "hubfsm.sim.memdisk"
            side = spent["world" if world else "client"]
            started = clock()
            try:
                return call(*args, **kwargs)
            finally:
                side[0] += clock() - started
                side[1] += 1

        return wrapper

    for name, call in originals.items():
        setattr(os, name, timed(call))
    try:
        yield
    finally:
        for name, call in originals.items():
            setattr(os, name, call)


def _python_calls(seed: int, epochs: int) -> int:
    count = [0]

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            count[0] += 1

    sys.setprofile(profiler)
    try:
        run_seed(seed, profile="flaky", epochs=epochs, keep_trace=False)
    finally:
        sys.setprofile(None)
    return count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--target-ms", type=float, default=12.0)
    args = parser.parse_args()
    run_seed(99, profile="flaky", epochs=20, keep_trace=False)  # imports, first calls
    seed_ms, sql_ms, statements, py_calls = [], [], [], []
    file_ms: dict[str, list[float]] = {"world": [], "client": []}
    file_calls: dict[str, list[int]] = {"world": [], "client": []}
    for seed in range(args.seeds):
        started = time.process_time()
        run_seed(seed, profile="flaky", epochs=args.epochs, keep_trace=False)
        seed_ms.append((time.process_time() - started) * 1000)
        recorded: list[Statement] = []
        with _recorded(recorded):
            run_seed(seed, profile="flaky", epochs=args.epochs, keep_trace=False)
        statements.append(len(recorded))
        sql_ms.append(min(_replay(recorded) for _ in range(3)) * 1000)
        spent = {"world": [0, 0], "client": [0, 0]}
        with _timed_file_calls(spent):
            run_seed(seed, profile="flaky", epochs=args.epochs, keep_trace=False)
        for side, (ns, calls) in spent.items():
            file_ms[side].append(ns / 1e6)
            file_calls[side].append(calls)
        py_calls.append(_python_calls(seed, args.epochs))
    med = statistics.median
    world, client = med(file_ms["world"]), med(file_ms["client"])
    floor = med(sql_ms) + world + client
    left = args.target_ms - floor
    python = med(seed_ms) - floor
    print(f"{args.epochs}-epoch flaky seed, HUB dialect, medians over {args.seeds} seeds")
    print()
    print("| part | per seed |")
    print("|---|---:|")
    print(f"| the seed, CPU | {med(seed_ms):.1f} ms |")
    print(f"| SQL, replayed alone ({med(statements):.0f} statements) | {med(sql_ms):.2f} ms |")
    print(f"| the client's file calls ({med(file_calls['client']):.0f} calls) | {client:.2f} ms |")
    print(
        f"| the world's file calls: the trainer's weights and its directory "
        f"({med(file_calls['world']):.0f} calls) | {world:.2f} ms |"
    )
    print(f"| the floor: SQL and file calls | {floor:.2f} ms |")
    print(f"| everything else (Python) | {python:.1f} ms |")
    print(f"| Python function calls | {med(py_calls):,.0f} |")
    print()
    share = floor / args.target_ms
    print(f"target {args.target_ms:g} ms: the floor takes {share:.0%} of it", end="")
    if left > 0:
        per_call = left * 1000 / med(py_calls)
        now = python * 1000 / med(py_calls)
        print(
            f"; the {left:.1f} ms left allow {per_call:.2f} us per Python call as made today "
            f"(now {now:.2f} us)"
        )
    else:
        print("; nothing is left for Python")


if __name__ == "__main__":
    main()
