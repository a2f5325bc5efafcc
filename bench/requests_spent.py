"""Requests spent over a whole simulated training session: hubfsm against the official client.

For each seed, ``run_seed(seed, profile="calm", epochs=300)`` runs hubfsm's real core on a
virtual clock against the in-memory hub (latency 10-200 ms, no faults), and its trace
gives every request hubfsm sent, per channel. The official client's requests for the
same run are computed from the same trace's times (when the session opened, training
started, each epoch ended, each checkpoint was saved, and training ended), following
ultralytics 8.2.0 (``ultralytics/hub/session.py``, ``ultralytics/utils/callbacks/hub.py``)
and hub-sdk 0.0.25:

- opening: ``POST /v1/auth``, then ``GET`` the model (a model id), or ``POST`` to create
  it and ``GET`` it again (a local file);
- heartbeats: one at opening, then every 300 s (the thread sleeps 300 s after each
  answer) until the process exits after the final upload; nothing stops it earlier;
- metrics: at each epoch end, one upload when more than 3 s passed since the last one
  (the timer starts when training starts); epochs in between wait in the queue, and
  those still queued at the end are never sent;
- checkpoints: at each save, one upload when more than 900 s passed since the last one
  (the timer starts when training starts, so the first waits 900 s);
- final: one upload.

Without faults neither client retries, so the counts compare the rate-limit logic alone.

Usage::

    python bench/requests_spent.py [--seeds 10] [--json PATH]
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402

EPOCHS = 300
PROFILE = "calm"
CHANNELS = ("control", "heartbeat", "metrics", "checkpoint", "final")
#: What counts as a request (epochs never sent are not requests).
COUNTED = ("auth", *CHANNELS)
# The official client's client-side limits (seconds), as in PROTOCOL.md.
METRICS_EVERY, CHECKPOINT_EVERY, HEARTBEAT_EVERY = 3.0, 900.0, 300.0


def official_requests(trace: Any) -> dict[str, int]:
    """What ultralytics 8.2.0 with hub-sdk 0.0.25 sends for the run a trace describes."""
    opened = trace[0].t
    started = next(e.t for e in trace if e.event == "start")
    ended = next(e.t for e in reversed(trace) if e.event in ("acknowledged", "finish"))
    created = any(e.event == "create" for e in trace)
    counts = dict.fromkeys((*CHANNELS, "auth"), 0)
    counts["auth"] = 1
    counts["control"] = 2 if created else 1  # create + read back, or read
    counts["heartbeat"] = int((ended - opened) // HEARTBEAT_EVERY) + 1
    last_metrics = last_checkpoint = started
    queued = 0
    for entry in trace:
        if entry.event == "epoch_end":
            queued += 1
            if entry.t - last_metrics > METRICS_EVERY:
                counts["metrics"] += 1
                last_metrics, queued = entry.t, 0
        elif entry.event == "checkpoint" and entry.t - last_checkpoint > CHECKPOINT_EVERY:
            counts["checkpoint"] += 1
            last_checkpoint = entry.t
    counts["final"] = 1
    counts["never_sent_epochs"] = queued
    return counts


def hubfsm_requests(trace: Any) -> dict[str, int]:
    """The requests hubfsm sent, per channel, retries included."""
    counts = dict.fromkeys((*CHANNELS, "auth"), 0)
    for entry in trace:
        if entry.event == "send" and entry.channel in counts:
            counts[entry.channel] += 1
    counts["never_sent_epochs"] = 0
    return counts


def run(*, seeds: int = 10, quick: bool = False) -> dict[str, Any]:
    """Simulate ``seeds`` sessions; per-channel medians of both clients' requests."""
    from hubfsm.sim.play import run_seed

    benchkit.setup()
    seeds = 2 if quick else seeds
    options: dict[str, Any] = {"profile": PROFILE, "epochs": EPOCHS}
    if "keep_trace" in inspect.signature(run_seed).parameters:
        options["keep_trace"] = True
    per_seed: list[dict[str, Any]] = []
    for seed in range(seeds):
        result = run_seed(seed, **options)
        if result.state != "done" or not result.ok:
            raise RuntimeError(f"seed {seed} did not end cleanly: {result.state}")
        trace = result.trace
        epochs = sum(1 for e in trace if e.event == "epoch_end")
        per_seed.append(
            {
                "seed": seed,
                "epochs": epochs,
                "hours": (trace[-1].t - trace[0].t) / 3600,
                "hubfsm": hubfsm_requests(trace),
                "hubfsm_total_reported": result.requests,
                "official": official_requests(trace),
            }
        )
    rows = []
    for channel in ("auth", *CHANNELS, "never_sent_epochs"):
        h = benchkit.median([s["hubfsm"][channel] for s in per_seed])
        o = benchkit.median([s["official"][channel] for s in per_seed])
        rows.append({"channel": channel, "hubfsm": h, "official": o})
    total_h = benchkit.median([sum(s["hubfsm"][c] for c in COUNTED) for s in per_seed])
    total_o = benchkit.median([sum(s["official"][c] for c in COUNTED) for s in per_seed])
    rows.append({"channel": "total", "hubfsm": total_h, "official": total_o})
    return {
        "profile": PROFILE,
        "epochs": EPOCHS,
        "seeds": seeds,
        "hours": benchkit.median([s["hours"] for s in per_seed]),
        "rows": rows,
        "per_seed": per_seed,
        "ratio_total": total_o / total_h if total_h else None,
    }


NAMES = {
    "auth": "key check (`POST /v1/auth`)",
    "control": "open (read or create the model)",
    "heartbeat": "heartbeats",
    "metrics": "metrics uploads",
    "checkpoint": "checkpoint uploads",
    "final": "final upload",
    "never_sent_epochs": "epochs never sent (not requests)",
    "total": "**total requests**",
}


def render(result: dict[str, Any]) -> list[str]:
    """The result as Markdown."""
    rows = []
    for r in result["rows"]:
        ratio = r["official"] / r["hubfsm"] if r["hubfsm"] else None
        rows.append(
            [
                NAMES[r["channel"]],
                f"{r['hubfsm']:g}",
                f"{r['official']:g}",
                benchkit.fmt(ratio, 2) + "x" if ratio else "-",
            ]
        )
    lines = benchkit.table(
        ["requests", "hubfsm (simulated)", "official client (modelled)", "official / hubfsm"],
        rows,
        "lrrr",
    )
    lines.append("")
    lines.append(
        f"Profile `{result['profile']}`, {result['epochs']} epochs of 20-60 s (median session "
        f"{result['hours']:.1f} h of virtual time), a checkpoint saved every epoch; medians "
        f"over seeds 0-{result['seeds'] - 1}."
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    return benchkit.script_main(
        parser, argv, run=lambda a: run(seeds=a.seeds, quick=a.quick), render=render
    )


if __name__ == "__main__":
    sys.exit(main())
