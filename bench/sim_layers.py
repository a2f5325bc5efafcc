"""Where a simulated session's CPU goes: the 300-epoch session with one layer made free.

Runs ``bench/session300.py``'s session (profile ``flaky``, a checkpoint every epoch)
as users' code runs it, and again with one part replaced by a no-op: the outbox's
writes, the journal (``journal=False``), the invariant checker's per-request hooks.
Rounds interleave the variants, so a busy machine slows them alike; each figure is the
median CPU time (``time.process_time``) of one session. A variant that breaks an
invariant is still timed: only the cost is asked here, not the verdict.

Usage::

    python bench/sim_layers.py [--rounds 8] [--epochs 300]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import patch

import attrs

from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.runtime import factory
from hubfsm.sim import world
from hubfsm.sim.invariants import Checker
from hubfsm.sim.play import run_seed


def _no_outbox_writes() -> contextlib.AbstractContextManager[Any]:
    return patch.object(OutboxDB, "apply", lambda self, changes, journal_seq=None: False)


@contextlib.contextmanager
def _no_journal() -> Iterator[None]:
    build = factory.build

    def without_journal(settings: Any, **kwargs: Any) -> Any:
        return build(attrs.evolve(settings, journal=False), **kwargs)

    with patch.object(world, "build", without_journal):
        yield


@contextlib.contextmanager
def _no_checker_hooks() -> Iterator[None]:
    def nothing(self: Checker, *args: Any, **kwargs: Any) -> None:
        return None

    with (
        patch.object(Checker, "sent", nothing),
        patch.object(Checker, "answered", nothing),
        patch.object(Checker, "changed", nothing),
    ):
        yield


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "as users run it": contextlib.nullcontext,
    "outbox writes free": _no_outbox_writes,
    "journal off": _no_journal,
    "checker hooks free": _no_checker_hooks,
}


def _session_cpu(seed: int, epochs: int) -> float:
    started = time.process_time()
    run_seed(seed, profile="flaky", epochs=epochs, checkpoint_every=1, keep_trace=False)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    _session_cpu(99, 20)  # imports and first-call costs, untimed
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for seed in range(args.rounds):
        for name, variant in VARIANTS.items():
            with variant():
                cpu[name].append(_session_cpu(seed, args.epochs))
    full = statistics.median(cpu["as users run it"])
    print(f"| variant | CPU ms per {args.epochs}-epoch session | share of the whole |")
    print("|---|---:|---:|")
    for name, times in cpu.items():
        median = statistics.median(times)
        share = "-" if name == "as users run it" else f"{(full - median) / full:.0%}"
        print(f"| {name} | {median * 1000:.1f} | {share} |")
    print(f"\nmedians over {args.rounds} interleaved rounds (seeds 0-{args.rounds - 1})")


if __name__ == "__main__":
    main()
