"""``hubfsm simulate``: run seeds per profile, summarise, show the first failure, or trace.

The summary depends only on the seeds, the profiles and the epochs, never on ``--jobs``
(results come back in seed order), except for the wall-time column.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TextIO

from hubfsm.core.protocol import ProtocolName
from hubfsm.sim.invariants import TITLES, render_json, render_text
from hubfsm.sim.play import SimResult, run_seed
from hubfsm.sim.profiles import describe, select
from hubfsm.sim.scenario import Profile

#: Seeds and epochs when none are given; over HTTP each seed costs real seconds.
DEFAULT_SEEDS = range(100)
DEFAULT_EPOCHS = 50
HTTP_SEEDS = range(5)
HTTP_EPOCHS = 8
#: Sessions from which ``--jobs`` defaults to a pool (see :func:`default_jobs`).
POOL_FROM = 200

#: Trace entries shown before and after the first violation of a failing seed.
_BEFORE, _AFTER = 25, 5
#: The violations a failing seed lists; the rest are counted (the trace has them all).
SHOWN = 5

Task = tuple[int, str, int, bool, bool, ProtocolName]


@contextlib.contextmanager
def _sessions_unheard(verbosity: int) -> Iterator[None]:
    """Keep the simulated sessions' log lines off the screen, unless ``-vv``.

    They speak of a world that exists only in the simulation (a session "contacting"
    the public API, a record kept aside in a simulated outbox): the person reads the
    summary, and with ``-vv`` what the sessions said, to debug the simulator.
    """
    logger = logging.getLogger("hubfsm")
    if verbosity >= 2 or logger.disabled:
        yield
        return
    # Set before the process pool forks, so its workers inherit it.
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


def _one(task: Task) -> SimResult:
    seed, profile, epochs, http, keep_trace, protocol = task
    if http:
        from hubfsm.sim.http_world import run_http_seed

        return run_http_seed(
            seed, profile=profile, epochs=epochs, keep_trace=keep_trace, protocol=protocol
        )
    return run_seed(seed, profile=profile, epochs=epochs, keep_trace=keep_trace, protocol=protocol)


def run_seeds(
    seeds: Iterable[int],
    profile: Profile,
    epochs: int,
    *,
    http: bool = False,
    keep_trace: bool = False,
    pool: Executor | None = None,
    jobs: int = 1,
    protocol: ProtocolName = "hub",
) -> list[SimResult]:
    """Run one profile over ``seeds``, in ``pool`` if given; results in seed order."""
    tasks = [(seed, profile.name, epochs, http, keep_trace, protocol) for seed in seeds]
    if pool is None:
        return [_one(task) for task in tasks]
    # Chunks big enough to keep the inter-process traffic low, small enough that no
    # worker is left with a long last chunk while the others idle.
    chunk = max(1, min(64, len(tasks) // (jobs * 16)))
    return list(pool.map(_one, tasks, chunksize=chunk))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _end_states(results: Sequence[SimResult]) -> str:
    states = Counter(r.state if r.error is None else f"{r.state} ({r.error})" for r in results)
    return ", ".join(f"{state} {n}" for state, n in sorted(states.items()))


def _violations(results: Sequence[SimResult]) -> str:
    numbers = Counter(v.number for r in results for v in r.violations)
    total = sum(numbers.values())
    if not total:
        return "0"
    parts = ", ".join(f"#{n}: {k}" for n, k in sorted(numbers.items()))
    return f"{total} ({parts})"


HEADER = (
    "| profile | seeds | failing seeds | violations | requests | retries | end states "
    "| mean session time | wall time |\n"
    "|---|---:|---:|---|---:|---:|---|---:|---:|"
)


def row(profile: str, results: Sequence[SimResult], wall: float) -> str:
    """One profile's row of the summary table."""
    failing = sum(1 for r in results if not r.ok)
    mean = sum(r.virtual_seconds for r in results) / max(len(results), 1)
    return (
        f"| {profile} | {len(results)} | {failing} | {_violations(results)} "
        f"| {sum(r.requests for r in results)} | {sum(r.retries for r in results)} "
        f"| {_end_states(results)} | {_duration(mean)} | {wall:.2f} s |"
    )


def first_failure(result: SimResult) -> str:
    """How to replay a failing seed, and its trace around the first violation."""
    lines = [f"first failing seed of {result.profile}: {result.seed} (ended {result.state})"]
    lines += _violations_of(result)
    lines.append(f"replay: {result.replay_command()}")
    trace = result.trace
    where = next((i for i, e in enumerate(trace) if e.event == "violation"), len(trace))
    start, end = max(0, where - _BEFORE), min(len(trace), where + _AFTER + 1)
    lines.append(f"trace around the failure (entries {start + 1} to {end} of {len(trace)}):")
    lines += [f"  {entry.text()}" for entry in trace[start:end]]
    return "\n".join(lines)


def _violations_of(result: SimResult) -> list[str]:
    """A failing seed's first violations, one a line, and how many more there are."""
    lines = [f"  {violation}" for violation in result.violations[:SHOWN]]
    if len(result.violations) > SHOWN:
        lines.append(f"  ... and {len(result.violations) - SHOWN} more")
    broken = sorted({v.number for v in result.violations})
    named = "; ".join(f"{n}: {TITLES.get(n, '?')}" for n in broken)
    lines.append(f"  (invariants broken: {named})")
    return lines


def _print_traces(results: Sequence[SimResult], as_json: bool, out: TextIO) -> None:
    for result in results:
        if as_json:
            text = render_json(result.trace, seed=result.seed, profile=result.profile)
        else:
            head = (
                f"# seed {result.seed}, profile {result.profile}, {result.epochs} epochs: "
                f"ended {result.state}, {len(result.violations)} violations"
            )
            text = head + "\n" + render_text(result.trace)
        print(text, file=out)


def default_jobs(sessions: int, *, http: bool, cpus: int | None = None) -> int:
    """The processes ``--jobs`` defaults to: one per usable CPU once a pool pays.

    A pool costs a process start per CPU, more than a short run takes in one process,
    so runs of fewer than :data:`POOL_FROM` sessions stay in one. HTTP worlds stay in
    one too: each session serves a hub of its own, and their sockets and threads, not
    the CPU, set their pace.
    """
    if http or sessions < POOL_FROM:
        return 1
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, sessions // POOL_FROM))


def _run_profiles(
    profiles: Sequence[Profile],
    seeds: range,
    epochs: int,
    *,
    http: bool,
    tracing: bool,
    jobs: int,
    protocol: ProtocolName,
    verbosity: int,
) -> list[tuple[Profile, list[SimResult], float]]:
    """Each profile's results and wall time; with ``-v`` a line on stderr per profile."""
    pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else None
    batches: list[tuple[Profile, list[SimResult], float]] = []
    try:
        for profile in profiles:
            started = time.perf_counter()
            results = run_seeds(
                seeds,
                profile,
                epochs,
                http=http,
                keep_trace=tracing,
                pool=pool,
                jobs=jobs,
                protocol=protocol,
            )
            wall = time.perf_counter() - started
            batches.append((profile, results, wall))
            if verbosity >= 1:
                failing = sum(1 for r in results if not r.ok)
                print(
                    f"simulate: {profile.name}: {len(results)} seeds, {failing} failing, "
                    f"{_duration(wall)}",
                    file=sys.stderr,
                )
    finally:
        if pool is not None:
            pool.shutdown()
    return batches


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``hubfsm simulate`` with parsed arguments; the exit status."""
    out = out if out is not None else sys.stdout
    if args.describe:
        print(describe(), file=out)
        return 0
    try:
        profiles = select(args.profile)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    http = bool(args.http)
    epochs = args.epochs if args.epochs is not None else (HTTP_EPOCHS if http else DEFAULT_EPOCHS)
    if args.seed is not None:
        seeds: range = range(args.seed, args.seed + 1)
    else:
        seeds = args.seeds if args.seeds is not None else (HTTP_SEEDS if http else DEFAULT_SEEDS)
    jobs = args.jobs
    if jobs is None:
        jobs = default_jobs(len(seeds) * len(profiles), http=http)
    if epochs < 1 or jobs < 1:
        print("error: --epochs and --jobs must be at least 1", file=sys.stderr)
        return 2
    tracing = bool(args.trace or args.json)
    protocol: ProtocolName = "platform" if getattr(args, "protocol", "hub") == "platform" else "hub"
    verbosity = getattr(args, "verbose", 0)
    with _sessions_unheard(verbosity):
        batches = _run_profiles(
            profiles,
            seeds,
            epochs,
            http=http,
            tracing=tracing,
            jobs=jobs,
            protocol=protocol,
            verbosity=verbosity,
        )
    ok = all(r.ok for _, results, _ in batches for r in results)
    if tracing:
        _print_traces([r for _, results, _ in batches for r in results], bool(args.json), out)
        for _, results, _ in batches:
            for result in results:
                if not result.ok:
                    # A few lines a seed: the trace on stdout has every violation.
                    print(f"seed {result.seed} ({result.profile}) failed:", file=sys.stderr)
                    print("\n".join(_violations_of(result)), file=sys.stderr)
        return 0 if ok else 1
    where = "over HTTP against a local hub" if http else "on a virtual clock"
    if protocol == "platform":
        where += ", speaking the Platform dialect"
    print(f"{len(seeds)} seeds x {epochs} epochs per profile, {where}\n", file=out)
    print(HEADER, file=out)
    for profile, results, wall in batches:
        print(row(profile.name, results, wall), file=out)
    faults = {p.name: sum(r.faults for r in results) for p, results, _ in batches}
    if any(faults.values()):
        injected = ", ".join(f"{name} {n}" for name, n in faults.items() if n)
        print(f"\nmachine faults injected: {injected}", file=out)
    for _, results, _ in batches:
        failing = next((r for r in results if not r.ok), None)
        if failing is not None:
            print("\n" + first_failure(failing), file=out)
    return 0 if ok else 1
