"""The SQL statements a simulated session's outbox executes, per epoch and by kind.

Plays ``flaky`` seeds as ``hubfsm simulate`` does (100 epochs, a checkpoint every epoch)
with SQLite's trace callback on every outbox database, and prints how many statements
of each kind ran, per epoch of all the seeds played. A count, not a timing: the
machine's load cannot move it.

Usage::

    python bench/sim_statements.py [--seeds 5] [--epochs 100]
"""

from __future__ import annotations

import argparse
import sqlite3
from collections import Counter
from typing import Any
from unittest.mock import patch

from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.sim.play import run_seed


def _kind(statement: str) -> str:
    """A statement's kind: its first words up to the table it names."""
    words = statement.split()
    for at, word in enumerate(words):
        if word.upper() in ("INTO", "FROM", "UPDATE"):
            return " ".join(words[: at + 2]).split("(")[0]
    return " ".join(words[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    opened = OutboxDB.__init__

    def traced(self: OutboxDB, connection: sqlite3.Connection, *a: Any, **kw: Any) -> None:
        connection.set_trace_callback(lambda statement: counts.update([_kind(statement)]))
        opened(self, connection, *a, **kw)

    with patch.object(OutboxDB, "__init__", traced):
        for seed in range(args.seeds):
            result = run_seed(seed, profile="flaky", epochs=args.epochs, keep_trace=False)
            assert result.ok, result.violations
    epochs = args.seeds * args.epochs
    total = sum(counts.values())
    print(f"{total} statements over {args.seeds} seeds of {args.epochs} epochs: "
          f"{total / epochs:.2f} per epoch")
    print("| statement | count | per epoch |")
    print("|---|---:|---:|")
    for kind, count in counts.most_common():
        print(f"| `{kind}` | {count} | {count / epochs:.2f} |")


if __name__ == "__main__":
    main()
