"""The simulator's CPU per session for two checkouts of hubfsm, side by side in one run.

Timings on a shared machine move with its load; comparing two versions of the code in
two separate runs compares two loads as much as two versions. This plays the same
sessions for each checkout in turn, in fresh interpreters (``PYTHONPATH`` at each
checkout), round after round, so that the load of the moment weighs on both alike:

- a 300-epoch ``flaky`` session with a checkpoint every epoch (``bench/session300.py``);
- a 100-epoch ``flaky`` seed as ``hubfsm simulate`` runs it (``bench/simulate.py``).

Both in the HUB dialect, or with ``--protocol platform`` in the Platform one.

Each figure is the median CPU time (``time.process_time``) of one session over every
round; the 10,000-seed column is that seed's CPU time times 10,000 over 2 processes, the
wall time ``bench/simulate.py --jobs 2`` would take on two idle cores.

Usage::

    python bench/sim_side_by_side.py --before PATH [--after PATH] [--rounds 5] [--sessions 4]
        [--protocol hub|platform]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

#: The child: warm up, then print the CPU time of each session as JSON.
CHILD = """
import json, sys, time
try:
    from hubfsm.sim.play import run_seed
except ImportError:  # a checkout from before the simulator's split
    from hubfsm.sim.world import run_seed

sessions, first, protocol = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
# A checkout from before the Platform dialect takes no protocol: the HUB one is its only.
dialect = {} if protocol == "hub" else {"protocol": protocol}
run_seed(99, profile="flaky", epochs=20, checkpoint_every=1, keep_trace=False, **dialect)
long, seeds = [], []
for seed in range(first, first + sessions):
    started = time.process_time()
    result = run_seed(
        seed, profile="flaky", epochs=300, checkpoint_every=1, keep_trace=False, **dialect
    )
    long.append(time.process_time() - started)
    assert result.ok, result.violations
    started = time.process_time()
    result = run_seed(seed, profile="flaky", epochs=100, keep_trace=False, **dialect)
    seeds.append(time.process_time() - started)
print(json.dumps({"session300": long, "seed100": seeds}))
"""


def _play(checkout: Path, sessions: int, first: int, protocol: str) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(sessions), str(first), protocol],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=checkout,
    )
    played: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return played


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument(
        "--after", type=Path, default=Path(__file__).resolve().parent.parent, help="this one"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=4, help="sessions per round and checkout")
    parser.add_argument("--protocol", choices=("hub", "platform"), default="hub")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    cpu: dict[str, dict[str, list[float]]] = {
        name: {"session300": [], "seed100": []} for name in checkouts
    }
    load = os.getloadavg()
    for round_ in range(args.rounds):
        # The seeds change from round to round; both checkouts play the same ones.
        for name, checkout in checkouts.items():
            played = _play(checkout, args.sessions, round_ * args.sessions, args.protocol)
            for kind, times in played.items():
                cpu[name][kind].extend(times)
    print(
        "| code | 300-epoch session, CPU ms | 100-epoch seed, CPU ms | 10,000 seeds / 2 cores, s |"
    )
    print("|---|---:|---:|---:|")
    for name, checkout in checkouts.items():
        long = statistics.median(cpu[name]["session300"]) * 1000
        seed = statistics.median(cpu[name]["seed100"]) * 1000
        print(f"| {name} ({checkout.name}) | {long:.1f} | {seed:.1f} | {seed * 5:.0f} |")
    after = os.getloadavg()
    print(
        f"\nmedians of {args.rounds * args.sessions} sessions each, {args.rounds} interleaved "
        f"rounds, {args.protocol} dialect; load average {load[0]:.1f} before, {after[0]:.1f} after"
    )


if __name__ == "__main__":
    main()
