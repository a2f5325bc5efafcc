"""Benchmark: what checking a pooled connection as it leaves the pool costs the team hub.

The team hub's pool runs ``ConnectionPool.check_connection`` (an empty query) on every
connection it hands out, so that a restart of PostgreSQL costs no request an error. This
times a checkout plus one statement of the kind a hub request runs, with and without the
check, side by side in one run (rounds alternate), against a real PostgreSQL started on
127.0.0.1 as the tests start one (or the one ``--database`` names).

Usage::

    python bench/pool_check.py [--calls 2000] [--rounds 5] [--database URL]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import services  # noqa: E402


def _round(url: str, *, check: bool, calls: int) -> float:
    """Microseconds per checkout plus one statement, on a pool of four connections."""
    from psycopg_pool import ConnectionPool

    checker: Any = ConnectionPool.check_connection if check else None
    with ConnectionPool(
        url, min_size=1, max_size=4, kwargs={"autocommit": True}, check=checker, open=True
    ) as pool:
        with pool.connection() as conn:  # warm: the connection is made outside the timing
            conn.execute("SELECT record FROM bench WHERE id = 1").fetchall()
        start = time.perf_counter()
        for _ in range(calls):
            with pool.connection() as conn:
                conn.execute("SELECT record FROM bench WHERE id = 1").fetchall()
        return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", help="an empty PostgreSQL database (else one is started)")
    args = parser.parse_args()
    import psycopg

    with contextlib.ExitStack() as stack:
        url = args.database or services.new_database(stack.enter_context(services.postgres()))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, record TEXT)")
            conn.execute("INSERT INTO bench VALUES (1, '{}') ON CONFLICT DO NOTHING")
        plain: list[float] = []
        checked: list[float] = []
        for _ in range(args.rounds):
            plain.append(_round(url, check=False, calls=args.calls))
            checked.append(_round(url, check=True, calls=args.calls))
        a, b = statistics.median(plain), statistics.median(checked)
        print(f"checkout + one statement, median of {args.rounds} rounds x {args.calls} calls")
        print(f"  without the check: {a:8.1f} us   (rounds {min(plain):.1f}-{max(plain):.1f})")
        print(f"  with the check:    {b:8.1f} us   (rounds {min(checked):.1f}-{max(checked):.1f})")
        print(f"  the check costs {b - a:.1f} us a checkout ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
