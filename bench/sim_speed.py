"""Simulation speed for the suite: seeds per second, ``flaky``, 100 epochs, 1 and 2 processes.

A thin adapter over ``bench/simulate.py``, which runs the seeds the way ``hubfsm
simulate`` does (``run_seed`` on a virtual clock, invariants checked as it goes; with
``--jobs 2``, a ``ProcessPoolExecutor`` of two workers, pool start-up included). This
module repeats a shorter sweep with one and with two processes and reports medians; the
CPU time per seed does not depend on other work on the machine, the wall time does.

Usage::

    python bench/sim_speed.py [--seeds 500] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402

PROFILE = "flaky"
EPOCHS = 100


def run(*, seeds: int = 500, repeats: int = 3, quick: bool = False) -> dict[str, Any]:
    """Seeds per second with 1 and 2 processes; medians over ``repeats`` sweeps."""
    benchkit.setup()
    import simulate  # bench/simulate.py

    if quick:
        seeds, repeats = 100, 1
    simulate.bench(10, EPOCHS, 1, PROFILE)  # imports and first-call costs, untimed
    rows: list[dict[str, Any]] = []
    for jobs in (1, 2):
        sweeps: list[dict[str, Any]] = [
            simulate.bench(seeds, EPOCHS, jobs, PROFILE) for _ in range(repeats)
        ]
        wall = benchkit.median([float(s["wall_s"]) for s in sweeps])
        rows.append(
            {
                "jobs": jobs,
                "seeds": seeds,
                "repeats": repeats,
                "median_wall_s": wall,
                "seeds_per_s": seeds / wall,
                "cpu_ms_per_seed": benchkit.median([float(s["cpu_ms_per_seed"]) for s in sweeps]),
                "failing_seeds": max(int(s["failing_seeds"]) for s in sweeps),
                "requests_per_seed": int(sweeps[0]["requests"]) / seeds,
                "load_before": [s["load_before"] for s in sweeps],
            }
        )
    for row in rows:
        row["speedup"] = row["seeds_per_s"] / rows[0]["seeds_per_s"]
    return {"profile": PROFILE, "epochs": EPOCHS, "rows": rows}


def render(result: dict[str, Any]) -> list[str]:
    """The result as Markdown."""
    rows = [
        [
            "1 process" if r["jobs"] == 1 else f"{r['jobs']} processes (pool)",
            r["seeds"],
            benchkit.fmt(r["median_wall_s"]),
            benchkit.fmt(r["seeds_per_s"], 0),
            benchkit.fmt(r["cpu_ms_per_seed"]),
            f"{r['requests_per_seed']:.0f}",
            r["failing_seeds"],
            benchkit.fmt(r["speedup"], 2) + "x",
        ]
        for r in result["rows"]
    ]
    lines = benchkit.table(
        [
            "run",
            "seeds",
            "median wall (s)",
            "seeds / s",
            "CPU ms / seed",
            "requests / seed",
            "failing seeds",
            "speed-up",
        ],
        rows,
    )
    lines.append("")
    lines.append(
        f"Profile `{result['profile']}`, {result['epochs']} epochs per seed; medians of "
        f"{result['rows'][0]['repeats']} sweeps. For the 10,000-seed target run "
        "`python bench/simulate.py`."
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__)
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    return benchkit.script_main(
        parser,
        argv,
        run=lambda a: run(seeds=a.seeds, repeats=a.repeats, quick=a.quick),
        render=render,
    )


if __name__ == "__main__":
    sys.exit(main())
