"""How long logging one epoch's metrics keeps the training thread, hubfsm against its peers.

Each run of a variant is a fresh interpreter that times every call on its own
(``time.perf_counter_ns`` around the one call), after a few discarded warm-up calls.
Every variant runs five times, in rounds, and its figures are the medians of its runs'
figures: the machine's speed drifts, and one run can be twice as slow as the next.

- ``hubfsm``: ``Session.log_metrics`` on a real session (worker thread, real clock,
  ``RequestsTransport``) against the local hub, with 0.5 ms of work between calls (a
  stand-in for training: it walks 32 MiB of memory, then spins), so the worker has
  handled the previous epoch and gone back to sleep and the caller's caches are cold.
- ``hubfsm-idle``: the same, with the CPU idle between calls (``time.sleep``): on a
  virtual machine an idle CPU wakes up with colder caches still, so this is the worst case.
- ``hubfsm-burst``: the same, calls back to back (the worker competes for the GIL).
- ``official``: ultralytics 8.2.0's epoch callback (``on_fit_epoch_end``) on an epoch
  whose upload is due: it encodes the metrics and calls ``HUBTrainingSession.upload_metrics``,
  which starts a thread that runs hub-sdk's ``Models.upload_metrics`` against the same
  local hub. The session is the real ``HUBTrainingSession``, opened on the local hub.
  Between calls the upload thread is joined (untimed), so each call starts from quiet.
- ``official-call``: only ``HUBTrainingSession.upload_metrics()`` (the thread start).
- ``wandb``: Weights & Biases in offline mode, ``run.log(metrics)``.
- ``reference``: no library, the least an asynchronous logger does: copy the dict, put a
  job on a deque and wake a sleeping worker thread (``threading.Event.set``), paced like
  ``hubfsm``.
- ``reference-durable``: the reference plus the least a call that a ``kill -9`` cannot
  lose does (no library either): the values packed as doubles, in one C call of a
  ``struct`` made once, straight into a shared mapping of a file, whose pages the kernel
  keeps after a kill. It checks nothing (hubfsm also proves every value a float) and
  keeps no names. It is the floor under any logger that keeps hubfsm's promise; hubfsm's
  row against it is what is left to its own code.

Every paced variant but ``hubfsm-idle`` has the same 0.5 ms of work between calls.

Usage::

    python bench/log_call.py [--keys 10 100] [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Appended, not put first: a script of this directory is named like a module of the
# standard library (platform), which must not shadow it.
sys.path.append(str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402

TARGET_MEDIAN_US = 5.0  # hubfsm, 10 keys
#: hubfsm (paced, with its journal) against the reference row of the same run, each size.
TARGET_REFERENCE_RATIO = 2.0
KEYS = (10, 100)
VARIANTS = (
    "hubfsm",
    "hubfsm-idle",
    "hubfsm-burst",
    "hubfsm-nojournal",
    "reference",
    "reference-durable",
    "official",
    "official-call",
    "wandb",
)
HUBFSM_VARIANTS = ("hubfsm", "hubfsm-idle", "hubfsm-burst", "hubfsm-nojournal")
#: Runs of each variant in a full run (a quick run makes 2).
RUNS = 5
#: Variant -> (calls, warm-up calls) per variant in a full run, shared by its runs;
#: --quick divides the calls by 5.
CALLS = {
    "hubfsm": (5000, 200),
    "hubfsm-idle": (5000, 200),
    "hubfsm-burst": (20000, 500),
    "hubfsm-nojournal": (5000, 200),
    "official": (600, 20),
    "official-call": (600, 20),
    "wandb": (3000, 100),
    "reference": (5000, 200),
    "reference-durable": (5000, 200),
}
#: The pause between paced calls.
GAP_S = 0.0005
#: What the work between paced calls walks through, a byte per page.
WORK_BYTES = 32 << 20
LABELS = {
    "hubfsm": "hubfsm `Session.log_metrics` (paced)",
    "hubfsm-idle": "hubfsm `Session.log_metrics` (paced, CPU idle in the pause)",
    "hubfsm-burst": "hubfsm `Session.log_metrics` (back to back)",
    "hubfsm-nojournal": "hubfsm `Session.log_metrics`, `journal=False` (paced)",
    "official": "ultralytics 8.2.0 epoch callback, upload due (`json.dumps` + `upload_metrics`)",
    "official-call": "ultralytics 8.2.0 `HUBTrainingSession.upload_metrics()` (thread start)",
    "wandb": "wandb offline `run.log`",
    "reference": "reference: dict copy + deque + wake a sleeping thread (no library)",
    "reference-durable": "reference + values packed into a shared file mapping (no library)",
}
PEER_OF = {"official": "ultralytics", "official-call": "ultralytics", "wandb": "wandb"}


# --- the children: one variant, one interpreter ---------------------------------------------


def _timed(call: Any, arg_of: Any, calls: int, warmup: int, settle: Any) -> list[float]:
    """Time ``call(arg_of(i))`` one call at a time; microseconds of the recorded calls."""
    clock = time.perf_counter_ns
    samples: list[float] = []
    for i in range(warmup + calls):
        arg = arg_of(i)
        t0 = clock()
        call(arg)
        t1 = clock()
        if i >= warmup:
            samples.append((t1 - t0) / 1000.0)
        settle()
    return samples


_WORK: list[bytearray] = []


def _pause() -> None:
    """0.5 ms of work, as training does between epochs: touch memory, then compute."""
    if not _WORK:
        _WORK.append(bytearray(WORK_BYTES))
    until = time.perf_counter() + GAP_S
    work = _WORK[0]
    work[::4096] = bytes(len(range(0, WORK_BYTES, 4096)))
    while time.perf_counter() < until:
        pass


def _idle() -> None:
    time.sleep(GAP_S)


def child_hubfsm(spec: dict[str, Any], variant: str) -> dict[str, Any]:
    import hubfsm

    session = hubfsm.Session(
        spec["model"],
        api_key=benchkit.child_key(),
        api_root=spec["url"],
        journal=variant != "hubfsm-nojournal",
    )
    session.start()
    metrics = benchkit.epoch_metrics(spec["keys"])
    log = session.log_metrics

    def call(epoch: int) -> None:
        log(metrics, epoch=epoch)

    # Epochs cycle through 300 (a later value for an epoch replaces it), so the pending
    # batch stays the size of a real run's.
    samples = _timed(
        call,
        lambda i: i % 300,
        spec["calls"],
        spec["warmup"],
        {"hubfsm-burst": lambda: None, "hubfsm-idle": _idle}.get(variant, _pause),
    )
    session.close(timeout=30.0)
    return {"samples": samples}


def _joiner() -> tuple[Any, Any]:
    """(mark, settle): settle joins every thread started since the last mark."""
    known: set[threading.Thread] = set(threading.enumerate())

    def mark(_: Any = None) -> None:
        known.clear()
        known.update(threading.enumerate())

    def settle() -> None:
        for thread in threading.enumerate():
            if thread not in known:
                thread.join(timeout=30.0)
        mark()

    return mark, settle


def child_official(spec: dict[str, Any], whole_callback: bool) -> dict[str, Any]:
    import types

    session = benchkit.official_session(spec["url"], spec["model"])
    from ultralytics.utils.callbacks.hub import on_fit_epoch_end

    metrics = benchkit.epoch_metrics(spec["keys"])
    trainer = types.SimpleNamespace(
        hub_session=session,
        epoch=1,
        tloss=None,
        metrics=metrics,
        label_loss_items=lambda tloss, prefix="train": {},
    )
    mark, settle = _joiner()

    def arg_of(i: int) -> int:
        # Untimed: an upload is due on every recorded epoch (more than 3 s since the last).
        session.timers = {"metrics": 0.0, "ckpt": time.time()}
        if not whole_callback:
            session.metrics_queue = {i + 1: json.dumps(metrics)}
        mark()
        return i + 1

    def callback(epoch: int) -> None:
        trainer.epoch = epoch
        on_fit_epoch_end(trainer)

    def upload(epoch: int) -> None:
        session.upload_metrics()

    def settle_then_pause() -> None:
        settle()
        _pause()

    samples = _timed(
        callback if whole_callback else upload,
        arg_of,
        spec["calls"],
        spec["warmup"],
        settle_then_pause,
    )
    return {"samples": samples}


def child_wandb(spec: dict[str, Any]) -> dict[str, Any]:
    import wandb

    where = Path(os.environ.get("WANDB_DIR") or ".")
    run = wandb.init(mode="offline", dir=str(where), project="hubfsm-bench")
    metrics = benchkit.epoch_metrics(spec["keys"])
    samples = _timed(run.log, lambda i: metrics, spec["calls"], spec["warmup"], _pause)
    run.finish()
    return {"samples": samples}


def _sleeping_worker() -> tuple[Any, threading.Event]:
    """The reference rows' worker: a deque, and the event that wakes a thread to empty it."""
    import collections

    inbox: collections.deque[Any] = collections.deque()
    wake = threading.Event()

    def worker() -> None:
        while True:
            wake.wait()
            wake.clear()
            while inbox:
                inbox.popleft()

    threading.Thread(target=worker, daemon=True).start()
    return inbox, wake


def child_reference(spec: dict[str, Any]) -> dict[str, Any]:
    inbox, wake = _sleeping_worker()
    metrics = benchkit.epoch_metrics(spec["keys"])

    def call(epoch: int) -> None:
        item = dict(metrics)
        inbox.append((epoch, item))
        if not wake.is_set():
            wake.set()

    samples = _timed(call, lambda i: i, spec["calls"], spec["warmup"], _pause)
    return {"samples": samples}


def child_reference_durable(spec: dict[str, Any]) -> dict[str, Any]:
    import mmap
    import struct
    import tempfile

    inbox, wake = _sleeping_worker()
    size = 1 << 20
    fd, name = tempfile.mkstemp(prefix="log-call-")
    os.unlink(name)  # the mapping keeps the file's pages; nothing is left behind
    os.posix_fallocate(fd, 0, size)
    view = memoryview(mmap.mmap(fd, size))
    metrics = benchkit.epoch_metrics(spec["keys"])
    pack = struct.Struct(f"<{len(metrics)}d")
    write = pack.pack_into
    at = [0]

    def call(epoch: int) -> None:
        item = dict(metrics)
        start = at[0]
        if start + pack.size > size:
            start = 0
        write(view, start, *item.values())
        at[0] = start + pack.size
        inbox.append((epoch, item))
        if not wake.is_set():
            wake.set()

    samples = _timed(call, lambda i: i, spec["calls"], spec["warmup"], _pause)
    return {"samples": samples}


def child(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    benchkit.setup()
    gc.collect()
    if variant in HUBFSM_VARIANTS:
        result = child_hubfsm(spec, variant)
    elif variant in ("official", "official-call"):
        result = child_official(spec, whole_callback=variant == "official")
    elif variant == "wandb":
        result = child_wandb(spec)
    elif variant == "reference":
        result = child_reference(spec)
    elif variant == "reference-durable":
        result = child_reference_durable(spec)
    else:
        raise SystemExit(f"unknown variant {variant}")
    result["stats"] = benchkit.spread(result.pop("samples"))
    return result


# --- the parent -----------------------------------------------------------------------------


def run(
    *,
    keys: tuple[int, ...] = KEYS,
    quick: bool = False,
    variants: tuple[str, ...] = VARIANTS,
    runs: int = RUNS,
) -> dict[str, Any]:
    """Run every variant for every key count ``runs`` times; figures and ratios peer/hubfsm.

    The runs go in rounds (every variant once, then again), so a machine whose speed
    drifts during the benchmark weighs on every variant alike. A row's figures are the
    medians of its runs' figures.
    """
    root = benchkit.setup()
    runs = 2 if quick else runs
    notes: list[str] = []
    ready = []
    for variant in variants:
        peer = PEER_OF.get(variant)
        if peer and not benchkit.installed(peer):
            note = f"{LABELS[variant]}: {benchkit.missing_note(peer)}"
            if note not in notes:
                notes.append(note)
        else:
            ready.append(variant)
    per_run: dict[tuple[str, int], list[dict[str, float]]] = {}
    broken: set[str] = set()
    with benchkit.local_hub(root / "hub-log-call") as hub:
        for number in range(runs):
            for variant in ready:
                for k in keys:
                    if variant in broken:
                        continue
                    calls, warmup = CALLS[variant]
                    calls = max(100, calls // (5 if quick else runs))
                    warmup = max(10, warmup // (5 if quick else 1))
                    spec = {
                        "keys": k,
                        "calls": calls,
                        "warmup": warmup,
                        "url": hub.url,
                        "model": benchkit.new_model(hub),
                    }
                    print(
                        f"  log call: run {number + 1}/{runs} {variant}, {k} keys, {calls} calls",
                        file=sys.stderr,
                    )
                    try:
                        out = benchkit.run_child(__file__, variant, spec, key=hub.api_key)
                    except Exception as error:  # a peer that breaks must not sink the suite
                        notes.append(f"{LABELS[variant]}: failed ({error})".splitlines()[0])
                        broken.add(variant)
                        continue
                    per_run.setdefault((variant, k), []).append(out["stats"])
    rows: list[dict[str, Any]] = []
    for (variant, k), got in per_run.items():
        if variant in broken:
            continue
        row: dict[str, Any] = {"variant": variant, "keys": k, "runs": len(got)}
        row["n"] = sum(int(g["n"]) for g in got)
        for field in ("median", "p95", "p99", "mean"):
            row[field] = benchkit.median([g[field] for g in got])
        row["median_min"] = min(g["median"] for g in got)
        row["median_max"] = max(g["median"] for g in got)
        rows.append(row)
    base = {r["keys"]: r for r in rows if r["variant"] == "hubfsm"}
    for r in rows:
        b = base.get(r["keys"]) if r["variant"] in PEER_OF else None
        r["ratio_median"] = r["median"] / b["median"] if b else None
        r["ratio_p99"] = r["p99"] / b["p99"] if b else None
    return {
        "rows": rows,
        "runs": runs,
        "per_run": {f"{v} {k}": got for (v, k), got in per_run.items()},
        "notes": notes,
        "gap_s": GAP_S,
        "targets": targets({"rows": rows}),
        "versions": {p: benchkit.installed(p) for p in ("ultralytics", "hub-sdk", "wandb")},
    }


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, on medians: hubfsm <= 5 us with 10 keys, at most twice the reference row
    of the same run (paced) at each size, and faster than every peer at each size.
    """
    rows = result["rows"]
    out = []
    reference = {r["keys"]: r for r in rows if r["variant"] == "reference"}
    for r in rows:
        ref = reference.get(r["keys"])
        if r["variant"] == "hubfsm" and ref is not None and ref["median"] > 0:
            ratio = r["median"] / ref["median"]
            out.append(
                {
                    "target": f"hubfsm (paced) <= {TARGET_REFERENCE_RATIO:g}x the reference row "
                    f"({r['keys']} keys, median)",
                    "value": f"{r['median']:.2f} us against {ref['median']:.2f} us: {ratio:.1f}x",
                    "met": ratio <= TARGET_REFERENCE_RATIO,
                }
            )
    durable = {r["keys"]: r for r in rows if r["variant"] == "reference-durable"}
    for k, floor in sorted(durable.items()):
        ref = reference.get(k)
        if ref is not None and ref["median"] > 0:
            ratio = floor["median"] / ref["median"]
            # Not hubfsm's target but its premise: whether any logger that keeps the
            # promise can be within the ratio of the reference on this machine.
            out.append(
                {
                    "target": f"the floor of a call a kill cannot lose <= "
                    f"{TARGET_REFERENCE_RATIO:g}x the reference row ({k} keys, median)",
                    "value": f"{floor['median']:.2f} us against {ref['median']:.2f} us: "
                    f"{ratio:.1f}x",
                    "met": ratio <= TARGET_REFERENCE_RATIO,
                }
            )
    for r in rows:
        if r["variant"] in HUBFSM_VARIANTS and r["keys"] == 10:
            how = {
                "hubfsm": "paced",
                "hubfsm-idle": "paced, CPU idle in the pause",
                "hubfsm-burst": "back to back",
                "hubfsm-nojournal": "paced, journal=False",
            }[r["variant"]]
            out.append(
                {
                    "target": f"hubfsm median <= {TARGET_MEDIAN_US:g} us with 10 keys ({how})",
                    "value": f"{r['median']:.2f} us",
                    "met": r["median"] <= TARGET_MEDIAN_US,
                }
            )
    for r in rows:
        if r["variant"] in PEER_OF and r["ratio_median"] is not None:
            out.append(
                {
                    "target": f"hubfsm faster than {r['variant']} ({r['keys']} keys, median)",
                    "value": f"peer/hubfsm {r['ratio_median']:.1f}x",
                    "met": r["ratio_median"] > 1.0,
                }
            )
    return out


def render(result: dict[str, Any]) -> list[str]:
    """The result as Markdown."""
    rows = [
        [
            LABELS[r["variant"]],
            r["keys"],
            f"{r['runs']} × {r['n'] // r['runs']:,}",
            benchkit.fmt(r["median"]),
            f"{benchkit.fmt(r['median_min'])}-{benchkit.fmt(r['median_max'])}",
            benchkit.fmt(r["p95"]),
            benchkit.fmt(r["p99"]),
            benchkit.fmt(r["ratio_median"], 1) + "x" if r["ratio_median"] else "-",
            benchkit.fmt(r["ratio_p99"], 1) + "x" if r["ratio_p99"] else "-",
        ]
        for r in sorted(result["rows"], key=lambda r: (r["keys"], VARIANTS.index(r["variant"])))
    ]
    lines = benchkit.table(
        [
            "variant",
            "keys",
            "runs × calls",
            "median µs",
            "run medians µs",
            "p95 µs",
            "p99 µs",
            "median / hubfsm",
            "p99 / hubfsm",
        ],
        rows,
        "lrrrrrrrr",
    )
    lines.append("")
    lines.append(
        "Each figure is the median over the runs (fresh interpreters, run in rounds) of "
        "that run's figure; the run medians column shows how far runs differed. "
        f"Paced variants do {result['gap_s'] * 1000:g} ms of work between calls (untimed: "
        f"a byte written on each page of {WORK_BYTES >> 20} MiB, then a spin), except the "
        "idle one, which sleeps; the official variants also join the upload thread between "
        "calls (untimed)."
    )
    for note in result["notes"]:
        lines.append(f"- {note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__, children=VARIANTS)
    parser.add_argument("--keys", type=int, nargs="+", default=list(KEYS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--quick", action="store_true", help="fewer calls and runs")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each variant")
    return benchkit.script_main(
        parser,
        argv,
        run=lambda a: run(
            keys=tuple(a.keys), quick=a.quick, variants=tuple(a.variants), runs=a.runs
        ),
        render=render,
        child=child,
    )


if __name__ == "__main__":
    sys.exit(main())
