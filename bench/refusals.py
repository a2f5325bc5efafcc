"""How many accepted epochs a refusal costs, per kind of refusal: now, and the old way.

Runs the ``refusing`` simulation profile (real sessions on a virtual clock, seconds) and counts,
per stopping answer, the epochs logged, those on the hub, those held in the outbox and
those neither (lost). ``--old`` plants the behaviour before the refused state existed:
after a stopping answer, every later trainer event is discarded.

Usage: python bench/refusals.py [--seeds N] [--epochs N]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import structlog

from hubfsm.core.engine import Core
from hubfsm.sim.bugs import Bugs
from hubfsm.sim.ends import on_hub
from hubfsm.sim.play import play, scratch_root
from hubfsm.sim.profiles import PROFILES
from hubfsm.sim.refusing import RefusingWorld


class DiscardsAfterARefusal(Core):
    """The old behaviour: after a fatal answer, trainer events are logged and dropped."""

    def epoch_end(self, epoch, metrics, *, now):
        if self.state != "refused":
            super().epoch_end(epoch, metrics, now=now)


def measure(seeds: int, epochs: int, factory: type[Core]) -> dict[int, list[int]]:
    """Per stopping answer: [runs, logged, on hub, held, lost]."""
    profile = PROFILES["refusing"]
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for seed in range(seeds):
        with tempfile.TemporaryDirectory(prefix="hubfsm-bench-", dir=scratch_root()) as root:
            world = RefusingWorld(
                seed, profile, root=Path(root), epochs=epochs, bugs=Bugs(core_factory=factory)
            )
            play(
                world,
                epochs=epochs,
                checkpoint_every=1,
                expect=None,
            )
            logged, hub, held = set(world.logged), on_hub(world), world.held()
        row = totals[world.draw.stop]
        row[0] += 1
        row[1] += len(logged)
        row[2] += len(logged & hub)
        row[3] += len((logged - hub) & held)
        row[4] += len(logged - hub - held)
    return totals


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    print(f"refusing profile, {args.seeds} seeds x {args.epochs} epochs, virtual clock\n")
    print("| client | stopping answer | runs | epochs logged | on the hub | held | lost |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, factory in (
        ("hubfsm", Core),
        ("old: discard after a refusal", DiscardsAfterARefusal),
    ):
        for stop, (runs, logged, hub, held, lost) in sorted(
            measure(args.seeds, args.epochs, factory).items()
        ):
            print(f"| {name} | {stop or 'none'} | {runs} | {logged} | {hub} | {held} | {lost} |")


if __name__ == "__main__":
    main()
