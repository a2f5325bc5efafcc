"""Time to drain at the end of training: from ``finish`` to done, with 300 epochs pending.

The local hub answers every API request after a random delay of 50 to 150 ms
(``FaultMix(latency=(0.05, 0.15))``), no faults. Each variant runs in a fresh interpreter
against its own new model on that hub:

- ``hubfsm``: a ``Session`` logs 300 epochs (10 metrics each) as fast as it can, once
  its opening heartbeat is back, then ``finish(best.pt)`` is timed until it returns (the
  session is ``done``: every epoch and the final weights acknowledged). The worker is
  idle when the epochs arrive, so they usually leave in one request.
- ``hubfsm-limited``: the same, but one earlier epoch was sent just before (and
  acknowledged), so the 300 epochs sit behind the 3 s metrics limit when ``finish`` is
  called; the final flush is exempt from that limit, so it must not wait.
- ``official``: ultralytics 8.2.0's real ``HUBTrainingSession`` and callbacks: 300
  epoch callbacks with an upload due (so 300 ``upload_metrics`` calls, each on its own
  thread), then ``on_train_end`` (the final ``upload_model``, blocking). It is timed from
  ``on_train_end`` until every thread it started has finished. What it would lose is
  counted when ``on_train_end`` returns, where a training script ends and the process
  exits, taking its daemon threads with it: epochs whose upload had not been
  acknowledged yet, threads still running, and uploads that failed.

Usage::

    python bench/drain.py [--runs 5] [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402

EPOCHS = 300
KEYS = 10
LATENCY = (0.05, 0.15)
FINAL_MIB = 6  # about a YOLOv8n best.pt
VARIANTS = ("hubfsm", "hubfsm-limited", "official")
LABELS = {
    "hubfsm": "hubfsm `Session.finish`, metrics limit clear",
    "hubfsm-limited": "hubfsm `Session.finish`, a metrics request just went out",
    "official": "ultralytics 8.2.0 `on_train_end` + its upload threads",
}


# --- the children ---------------------------------------------------------------------------


def child_hubfsm(spec: dict[str, Any], *, just_sent: bool) -> dict[str, Any]:
    import hubfsm

    session = hubfsm.Session(spec["model"], api_key=benchkit.child_key(), api_root=spec["url"])
    session.start()
    first = 1 if just_sent else 0
    epochs = [benchkit.epoch_metrics(KEYS, e) for e in range(EPOCHS + first)]
    # Let the opening heartbeat come back, so the worker is idle.
    time.sleep(LATENCY[1] + 0.2)
    if just_sent:
        # One epoch goes out and is acknowledged; the next 300 then wait behind the
        # 3 s metrics limit, and the final flush must wait it out.
        session.log_metrics(epochs[0], epoch=0)
        time.sleep(LATENCY[1] + 0.2)
    sent_before = sum(session.stats()["sent"].values())
    t_first = time.perf_counter()
    for epoch in range(first, EPOCHS + first):
        session.log_metrics(epochs[epoch], epoch=epoch)
    t_logged = time.perf_counter()
    acked = session.stats()["epochs_acknowledged"]
    session.finish(spec["final"], map50_95=0.5, timeout=120.0)
    t_done = time.perf_counter()
    stats = session.stats()
    state = session.state
    session.close(timeout=5.0)
    limit_wait = max(0.0, t_first - (LATENCY[1] + 0.2) + 3.0 - t_logged) if just_sent else 0.0
    return {
        "logged": EPOCHS + first,
        "log_s": t_logged - t_first,
        "pending_at_finish": EPOCHS + first - acked,
        "drain_s": t_done - t_logged,
        "return_s": t_done - t_logged,
        "limit_wait_s": limit_wait,
        "requests": sum(stats["sent"].values()) - sent_before,
        "state": state,
        "unacked_at_exit": EPOCHS + first - stats["epochs_acknowledged"],
        "threads_at_exit": 0,
        "failed": stats["retries"],
    }


def child_official(spec: dict[str, Any]) -> dict[str, Any]:
    session = benchkit.official_session(spec["url"], spec["model"])
    from ultralytics.utils.callbacks.hub import on_fit_epoch_end, on_train_end

    # Record when each metrics upload came back and how (no change to what it sends).
    acks: list[tuple[tuple[Any, ...], float, bool]] = []
    upload = session.model.upload_metrics

    calls = [0]

    def recorded(metrics: dict[Any, Any]) -> Any:
        calls[0] += 1  # one request per attempt
        response = upload(metrics)
        ok = response is not None and 200 <= response.status_code < 300
        acks.append((tuple(metrics), time.perf_counter(), ok))
        return response

    session.model.upload_metrics = recorded
    epochs = [benchkit.epoch_metrics(KEYS, e) for e in range(EPOCHS + 1)]
    trainer = types.SimpleNamespace(
        hub_session=session,
        epoch=1,
        tloss=None,
        metrics=epochs[1],
        label_loss_items=lambda tloss, prefix="train": {},
        best=spec["final"],
        last=spec["final"],
    )
    known = set(threading.enumerate())
    t_first = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):  # epoch 0 would also collect model info from torch
        trainer.epoch, trainer.metrics = epoch, epochs[epoch]
        session.timers = {"metrics": 0.0, "ckpt": time.time()}  # an upload is due
        on_fit_epoch_end(trainer)
    t_logged = time.perf_counter()
    on_train_end(trainer)  # the final upload, on this thread
    t_return = time.perf_counter()
    # The threads request_queue started (tqdm's monitor thread, say, is not one of them).
    started = [t for t in threading.enumerate() if t not in known and "retry_request" in t.name]
    running = sum(1 for t in started if t.is_alive())
    acked = {e for keys, at, ok in acks if ok and at <= t_return for e in keys}
    deadline = t_return + 120.0
    for thread in started:
        thread.join(timeout=max(0.0, deadline - time.perf_counter()))
    t_all = time.perf_counter()
    return {
        "logged": EPOCHS,
        "log_s": t_logged - t_first,
        "pending_at_finish": EPOCHS,
        "drain_s": t_all - t_logged,
        "return_s": t_return - t_logged,
        "limit_wait_s": 0.0,
        "requests": calls[0] + 1,  # metrics attempts + the final upload (one attempt)
        "state": "returned",
        "unacked_at_exit": EPOCHS - len(acked),
        "threads_at_exit": running,
        "failed": sum(1 for _, _, ok in acks if not ok),
        "still_running_after_wait": sum(1 for t in started if t.is_alive()),
    }


def child(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    benchkit.setup()
    if variant == "official":
        return child_official(spec)
    return child_hubfsm(spec, just_sent=variant == "hubfsm-limited")


# --- the parent -----------------------------------------------------------------------------


def run(*, runs: int = 5, quick: bool = False) -> dict[str, Any]:
    """Drain each variant ``runs`` times, alternating; medians and per-run figures."""
    from transports.faults import FaultMix

    root = benchkit.setup()
    runs = 1 if quick else runs
    final = root / "best.pt"
    benchkit.make_file(final, FINAL_MIB << 20)
    per_run: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    notes: list[str] = []
    variants = list(VARIANTS)
    if not benchkit.installed("ultralytics"):
        notes.append(f"{LABELS['official']}: {benchkit.missing_note('ultralytics')}")
        variants.remove("official")
    faults = FaultMix(latency=LATENCY)
    with benchkit.local_hub(root / "hub-drain", faults=faults, seed=7) as hub:
        for number in range(runs):
            order = variants if number % 2 == 0 else variants[::-1]
            for variant in order:
                model = benchkit.new_model(hub)
                spec = {"url": hub.url, "model": model, "final": str(final)}
                print(f"  drain: {variant}, run {number + 1}", file=sys.stderr)
                try:
                    out = benchkit.run_child(__file__, variant, spec, key=hub.api_key)
                except Exception as error:
                    notes.append(f"{LABELS[variant]} run {number + 1}: failed ({error})")
                    continue
                out["on_hub_at_end"] = len(benchkit.metrics_on_hub(hub, model))
                record = hub.hub.record(model) or {}
                out["trained_at_end"] = record.get("status") == "trained"
                per_run[variant].append(out)
    rows = []
    for variant in variants:
        got = per_run[variant]
        if not got:
            continue
        row: dict[str, Any] = {"variant": variant, "runs": len(got)}
        for field in (
            "drain_s",
            "return_s",
            "log_s",
            "limit_wait_s",
            "pending_at_finish",
            "requests",
            "unacked_at_exit",
            "threads_at_exit",
            "failed",
            "on_hub_at_end",
            "logged",
        ):
            row[field] = benchkit.median([r[field] for r in got])
        row["max_unacked_at_exit"] = max(r["unacked_at_exit"] for r in got)
        lost = [r["logged"] - r["on_hub_at_end"] for r in got]
        row["lost"], row["max_lost"] = benchkit.median(lost), max(lost)
        row["all_trained"] = all(r["trained_at_end"] for r in got)
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "hubfsm"), None)
    for r in rows:
        r["ratio_drain"] = r["drain_s"] / base["drain_s"] if base else None
    return {
        "epochs": EPOCHS,
        "keys": KEYS,
        "latency_s": list(LATENCY),
        "final_mib": FINAL_MIB,
        "rows": rows,
        "per_run": per_run,
        "notes": notes,
    }


def render(result: dict[str, Any]) -> list[str]:
    """The result as Markdown."""
    rows = [
        [
            LABELS[r["variant"]],
            r["runs"],
            benchkit.fmt(r["drain_s"]),
            benchkit.fmt(r["return_s"]),
            f"{r['pending_at_finish']:g}",
            f"{r['requests']:g}",
            f"{r['unacked_at_exit']:g} (max {r['max_unacked_at_exit']:g})",
            f"{r['threads_at_exit']:g}",
            f"{r['failed']:g}",
            f"{r['on_hub_at_end']:g} / {r['logged']:g}",
            f"{r['lost']:g} (max {r['max_lost']:g})",
            benchkit.fmt(r["ratio_drain"], 2) + "x" if r["ratio_drain"] else "-",
        ]
        for r in result["rows"]
    ]
    lines = benchkit.table(
        [
            "variant",
            "runs",
            "finish → all done (s)",
            "finish → call returns (s)",
            "epochs pending at finish",
            "requests in the drain",
            "epochs unacknowledged when the call returns",
            "threads alive then",
            "failed attempts",
            "epochs on the hub at the end / logged",
            "epochs lost for good",
            "drain / hubfsm",
        ],
        rows,
        "lrrrrrrrrrrr",
    )
    lines.append("")
    lo, hi = result["latency_s"]
    lines.append(
        f"{result['epochs']} epochs of {result['keys']} metrics pending, final weights "
        f"{result['final_mib']} MiB; the local hub delays every API request by "
        f"{lo * 1000:g}-{hi * 1000:g} ms (uniform). Medians over the runs."
    )
    for note in result["notes"]:
        lines.append(f"- {note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__, children=VARIANTS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run")
    return benchkit.script_main(
        parser, argv, run=lambda a: run(runs=a.runs, quick=a.quick), render=render, child=child
    )


if __name__ == "__main__":
    sys.exit(main())
