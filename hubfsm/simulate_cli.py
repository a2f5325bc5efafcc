"""``hubfsm simulate``: run seeds, summarise per profile, show the first failure."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from hubfsm.simulation import PROFILES, SimResult, run_seed


def _one(task: tuple[int, str, int]) -> SimResult:
    seed, profile, epochs = task
    return run_seed(seed, profile=profile, epochs=epochs)


def _results(seeds: Iterable[int], profile: str, epochs: int, jobs: int) -> list[SimResult]:
    tasks = [(seed, profile, epochs) for seed in seeds]
    if jobs <= 1:
        return [_one(task) for task in tasks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        # Results come back in seed order whatever the number of processes.
        return list(pool.map(_one, tasks, chunksize=max(1, len(tasks) // (jobs * 8))))


def _trace_json(result: SimResult) -> str:
    lines = []
    for line in result.trace:
        t, _, rest = line.strip().partition(" ")
        state, _, text = rest.strip().partition(" ")
        row: dict[str, Any] = {
            "seed": result.seed,
            "t": float(t),
            "state": state,
            "text": text.strip(),
        }
        lines.append(json.dumps(row, sort_keys=True))
    return "\n".join(lines)


def summary(results: list[SimResult], profile: str, wall: float) -> str:
    """The Markdown table row of one profile's run."""
    violations = sum(len(r.violations) for r in results)
    failed = sum(1 for r in results if not r.ok)
    states: dict[str, int] = {}
    for r in results:
        states[r.state] = states.get(r.state, 0) + 1
    virtual = sum(r.virtual_seconds for r in results) / max(len(results), 1)
    return (
        "| profile | seeds | failing seeds | violations | requests | retries | end states | "
        "mean virtual time | wall time |\n"
        "|---|---:|---:|---:|---:|---:|---|---:|---:|\n"
        f"| {profile} | {len(results)} | {failed} | {violations} | "
        f"{sum(r.requests for r in results)} | {sum(r.retries for r in results)} | "
        f"{', '.join(f'{k} {v}' for k, v in sorted(states.items()))} | "
        f"{virtual / 3600:.2f} h | {wall:.2f} s |"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``hubfsm simulate`` with parsed arguments."""
    if args.profile not in PROFILES:
        print(
            f"error: unknown profile {args.profile!r}; choose from {', '.join(PROFILES)}",
            file=sys.stderr,
        )
        return 2
    if args.epochs < 1 or args.jobs < 1:
        print("error: --epochs and --jobs must be at least 1", file=sys.stderr)
        return 2
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else args.seeds
    started = time.perf_counter()
    results = _results(seeds, args.profile, args.epochs, args.jobs)
    wall = time.perf_counter() - started
    if args.trace or args.json:
        for result in results:
            print(_trace_json(result) if args.json else "\n".join(result.trace))
        if args.json:
            return 0 if all(r.ok for r in results) else 1
    print(summary(results, args.profile, wall))
    failing = [r for r in results if not r.ok]
    if failing:
        first = failing[0]
        print(f"\nfirst failing seed: {first.seed}")
        for violation in first.violations[:5]:
            print(f"  {violation}")
        print(f"replay: {first.replay_command()}")
        where = next(
            (i for i, line in enumerate(first.trace) if "VIOLATION" in line), len(first.trace)
        )
        print("trace around the failure:")
        for line in first.trace[max(0, where - 15) : where + 3]:
            print(f"  {line}")
        return 1
    return 0
