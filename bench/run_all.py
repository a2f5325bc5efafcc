"""Run every hubfsm benchmark and report the results as Markdown tables and JSON.

    python bench/run_all.py [--quick] [--json PATH] [--markdown PATH] [--only NAME ...]

Benchmarks (each is also a script of its own in this directory):

1. ``log_call``: the training thread's time in one metrics log call, against ultralytics
   8.2.0's upload path and Weights & Biases offline.
2. ``drain``: from ``finish`` to done with 300 epochs pending, against the official client.
3. ``upload``: final weights of 256 MiB: time, throughput and peak memory, against
   hub-sdk's upload and a plain streaming ``requests`` post.
4. ``requests``: requests sent over a simulated 300-epoch session, against the official
   client's rate-limit logic.
5. ``sim_speed``: simulated sessions per second, one process and a pool of two.
6. ``hub_load``: the local hub under concurrent sessions, with silent sockets held open,
   and its answers to oversized keyless requests.

Every benchmark talks to 127.0.0.1 only, logs at WARNING, and keeps its state (hubfsm's
outbox included) in a private temporary directory. A full run takes about 5 minutes on 2
cores; ``--quick`` (fewer calls, runs and seeds, a 64 MiB upload) about 1.5 minutes.
Peers that are not installed (``pip install -e '.[bench]'``) are skipped, with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
import drain  # noqa: E402
import hub_load  # noqa: E402
import log_call  # noqa: E402
import requests_spent  # noqa: E402
import sim_speed  # noqa: E402
import upload  # noqa: E402

Runner = Callable[[bool], dict[str, Any]]

BENCHMARKS: dict[str, tuple[str, Runner, Callable[[dict[str, Any]], list[str]]]] = {
    "log_call": (
        "Log-call overhead on the training thread",
        lambda quick: log_call.run(quick=quick),
        log_call.render,
    ),
    "drain": (
        "Time to drain at the end of training",
        lambda quick: drain.run(quick=quick),
        drain.render,
    ),
    "upload": (
        "Weight upload",
        lambda quick: (
            upload.run(size_mib=64, runs=1, warmup=0)
            if quick
            else upload.run(size_mib=256, runs=5, warmup=1)
        ),
        upload.render,
    ),
    "requests": (
        "Requests spent over a 300-epoch session",
        lambda quick: requests_spent.run(quick=quick),
        requests_spent.render,
    ),
    "sim_speed": (
        "Simulation speed",
        lambda quick: sim_speed.run(quick=quick),
        sim_speed.render,
    ),
    "hub_load": (
        "The local hub under load",
        lambda quick: hub_load.run(quick=quick),
        hub_load.render,
    ),
}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def revision() -> str | None:
    """The source revision measured: the commit, plus ``+changes`` for a dirty tree."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (commit + ("+changes" if dirty else "")) or None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target the benchmarks check, met or not."""
    checks: list[dict[str, Any]] = []
    if "log_call" in results:
        checks += results["log_call"]["targets"]
    if "upload" in results:
        checks += results["upload"]["targets"]
    if "drain" in results:
        for row in results["drain"]["rows"]:
            if row["variant"].startswith("hubfsm"):
                lost = row["logged"] - row["on_hub_at_end"]
                checks.append(
                    {
                        "target": f"drain ({row['variant']}): every epoch on the hub at done",
                        "value": f"{row['on_hub_at_end']:g} / {row['logged']:g}",
                        "met": lost == 0,
                    }
                )
        rows = {row["variant"]: row for row in results["drain"]["rows"]}
        if "hubfsm" in rows and "official" in rows:
            ours, theirs = rows["hubfsm"]["drain_s"], rows["official"]["drain_s"]
            checks.append(
                {
                    "target": "drain: hubfsm at least as fast as the official client",
                    "value": f"{ours:.2f} s against {theirs:.2f} s",
                    "met": ours <= theirs,
                }
            )
    if "requests" in results:
        total = next(r for r in results["requests"]["rows"] if r["channel"] == "total")
        checks.append(
            {
                "target": "requests: hubfsm no more than the official client (median)",
                "value": f"{total['hubfsm']:g} against {total['official']:g}",
                "met": total["hubfsm"] <= total["official"],
            }
        )
        worst = max(
            sum(s["hubfsm"][c] for c in requests_spent.COUNTED)
            - sum(s["official"][c] for c in requests_spent.COUNTED)
            for s in results["requests"]["per_seed"]
        )
        checks.append(
            {
                "target": "requests: hubfsm no more than the official client (every seed)",
                "value": f"at most {worst:+d} against it",
                "met": worst <= 0,
            }
        )
    return checks


def render(report: dict[str, Any]) -> list[str]:
    """The whole report as Markdown."""
    m = report["machine"]
    lines = [
        f"Command: `{report['command']}` ({'quick' if report['quick'] else 'full'} run, "
        f"{report['seconds']:.0f} s)",
        "",
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB memory, "
        f"{m['os']}, {m['implementation']} {m['python']}",
        f"- Log level: {m['log_level']} (structlog and the logging root; hubfsm logs "
        "transitions at INFO)",
        f"- Load average (1, 5, 15 min) at start {report['load_start']}, at end "
        f"{report['load_end']}",
        f"- Source: {report['revision']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + "; not installed: "
        + (", ".join(k for k, v in m["versions"].items() if not v) or "none"),
    ]
    for name, result in report["results"].items():
        title = BENCHMARKS[name][0]
        lines += ["", f"### {title}", ""]
        lines += BENCHMARKS[name][2](result)
    for name, error in report["errors"].items():
        lines += ["", f"### {BENCHMARKS[name][0]}", "", f"Failed: {error}"]
    lines += ["", "### Targets", ""]
    if report["quick"]:
        lines += [
            "A quick run has fewer calls and runs and a smaller file: its figures are",
            "indicative only; judge the targets on a full run.",
            "",
        ]
    lines += benchkit.table(
        ["target", "measured", "status"],
        [[t["target"], t["value"], "met" if t["met"] else "**missed**"] for t in report["targets"]],
        "lrl",
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls, runs and seeds")
    parser.add_argument("--json", metavar="PATH", help="write every result here as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the report here")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    args = parser.parse_args(argv)
    benchkit.setup()
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": "python bench/run_all.py"
        + (" --quick" if args.quick else "")
        + (f" --only {' '.join(args.only)}" if args.only else ""),
        "quick": args.quick,
        "machine": benchkit.machine(),
        "revision": revision(),
        "load_start": load_average(),
        "results": {},
        "errors": {},
    }
    for name in args.only or list(BENCHMARKS):
        title, runner, _ = BENCHMARKS[name]
        print(f"{title}...", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            report["results"][name] = runner(args.quick)
        except Exception as error:  # one broken benchmark must not hide the others
            report["errors"][name] = f"{type(error).__name__}: {error}".splitlines()[0]
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    report["seconds"] = time.perf_counter() - started
    report["load_end"] = load_average()
    report["targets"] = targets(report["results"])
    text = "\n".join(render(report)) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
