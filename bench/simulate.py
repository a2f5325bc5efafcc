"""How fast ``hubfsm simulate`` checks seeds: 10,000 seeds of ``flaky``, 100 epochs each.

Runs the seeds the way the command does (``--jobs`` processes, results in seed order) and
reports the wall time and seeds per second against the target (60 s with 2 processes).
With ``--cprofile N`` it also profiles N seeds in this process and shows where the time
goes, per module and per function.

Usage::

    python bench/simulate.py [--seeds 10000] [--epochs 100] [--jobs 2] [--cprofile 200]
        [--protocol hub|platform|both]

``--protocol both`` runs the same seeds in the HUB v1 and the Platform dialect, one row
each, in the same run (so on the same machine load).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

from hubfsm.cli.simulate import run_seeds
from hubfsm.core.protocol import ProtocolName
from hubfsm.sim.play import run_seed
from hubfsm.sim.profiles import named

TARGET_S = 60.0


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench(
    seeds: int, epochs: int, jobs: int, profile: str, protocol: ProtocolName = "hub"
) -> dict[str, object]:
    load = os.getloadavg()[0]
    cpu = _cpu_seconds()
    started = time.perf_counter()
    prof = named(profile)
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = run_seeds(range(seeds), prof, epochs, pool=pool, jobs=jobs, protocol=protocol)
    else:
        results = run_seeds(range(seeds), prof, epochs, protocol=protocol)
    wall = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    return {
        "protocol": protocol,
        "profile": profile,
        "seeds": seeds,
        "epochs": epochs,
        "jobs": jobs,
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 2),
        "seeds_per_s": round(seeds / wall, 1),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_seed": round(cpu / seeds * 1000, 2),
        # Other work on the machine slows the wall time; the CPU time does not depend on it.
        "load_before": round(load, 2),
        "failing_seeds": sum(1 for r in results if not r.ok),
        "requests": sum(r.requests for r in results),
        # Machine faults injected (failed writes and snapshots, kills in finish, poison).
        "faults": sum(r.faults for r in results),
        "violations": sorted({v.number for r in results for v in r.violations}),
        "target_s": TARGET_S,
    }


def _module(path: str) -> str:
    """``hubfsm/core.py``, ``transitions/core.py``, ``json/decoder.py``; builtins as ``~``."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def where_time_goes(seeds: int, epochs: int, profile: str, top: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for seed in range(seeds):
        run_seed(seed, profile=profile, epochs=epochs, keep_trace=False)
    profiler.disable()
    by_module: dict[str, float] = defaultdict(float)
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (path, _, _), (_, _, own, _, _) in raw.items():
        by_module[_module(path)] += own
    total = sum(by_module.values())
    lines = [f"own time by module ({seeds} seeds under cProfile, {total:.2f} s in all):"]
    for module, seconds in sorted(by_module.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"  {seconds / total:6.1%}  {seconds:6.2f} s  {module}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    lines.append(out.getvalue())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--profile", default="flaky")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="profile N seeds")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    parser.add_argument(
        "--protocol", choices=("hub", "platform", "both"), default="hub", help="the dialect(s)"
    )
    args = parser.parse_args(argv)
    protocols: list[ProtocolName] = (
        ["hub", "platform"] if args.protocol == "both" else [args.protocol]
    )
    print(
        "| protocol | profile | seeds | epochs | jobs | wall time | seeds/s | CPU time "
        "| CPU per seed | load before | failing seeds | machine faults | target |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for protocol in protocols:
        f = bench(args.seeds, args.epochs, args.jobs, args.profile, protocol)
        rows.append(f)
        verdict = "met" if float(f["wall_s"]) <= TARGET_S else "MISSED"  # type: ignore[arg-type]
        print(
            f"| {protocol} | {args.profile} | {args.seeds} | {args.epochs} | {args.jobs} "
            f"| {f['wall_s']} s | {f['seeds_per_s']} | {f['cpu_s']} s | {f['cpu_ms_per_seed']} ms "
            f"| {f['load_before']} | {f['failing_seeds']} | {f['faults']} "
            f"| <= {TARGET_S:g} s ({verdict}) |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows if len(rows) > 1 else rows[0], out, indent=2)
    if args.cprofile:
        print()
        print(where_time_goes(args.cprofile, args.epochs, args.profile))
    return 0 if all(f["failing_seeds"] == 0 for f in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
