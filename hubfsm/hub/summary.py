"""What the local hub's pages show of a run: progress, times, best metric, warnings.

:func:`summarize` computes what a run's page and the list of runs (and their JSON) show;
:mod:`hubfsm.hub.page` renders it as HTML. Also here: the strict JSON text the pages and
their data are written in, and a run's metrics as CSV.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hubfsm.hub.parse import MAX_INT, MAX_JSON_INT

#: The metric a run is ranked by, when it has it.
BEST_METRIC = "metrics/mAP50-95(B)"
#: Ultralytics' minimum seconds between checkpoint uploads (see PROTOCOL.md).
CHECKPOINT_INTERVAL = 900
#: Seconds between the official client's heartbeats (see PROTOCOL.md).
HEARTBEAT_INTERVAL = 300.0
#: A run is stalled after this many heartbeat intervals without a heartbeat or an upload.
STALL_BEATS = 2


def seconds_of(iso: object) -> float | None:
    """Seconds since the epoch of an ISO time the API shows, or None."""
    if not isinstance(iso, str):
        return None
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _short(iso: object) -> str:
    # "2026-12-01T14:57:29.166201Z" -> "2026-12-01 14:57"
    return str(iso)[:16].replace("T", " ") if iso else "-"


def duration(seconds: float | None) -> str:
    """``2 h 05 min``, ``4 min 09 s`` or ``12 s``; ``-`` for None (or no finite number)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def size(count: int) -> str:
    """A byte count for people: ``6.2 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def metric_names(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every metric name, in the order the trainer first sent them."""
    names: dict[str, None] = {}
    for entry in metrics:
        names.update(dict.fromkeys(entry["metrics"]))
    return list(names)


def group(name: str) -> str:
    """The section a metric is shown in, as ultralytics names them."""
    if "loss" in name:
        return "Losses"
    if name.startswith("metrics/"):
        return "Metrics"
    if name.startswith("lr/"):
        return "Learning rates"
    return "Other"


def _count(value: object) -> int | None:
    """An integer the page computes with, or None: absent, not an integer, or too large.

    Records kept before the hub bounded its integers may hold any integer (a 401-digit
    ``epochs``, say): the page shows the rest of the run rather than fail for everyone.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT:
        return value
    return None


def _number_of(value: object) -> float | None:
    """A metric value as a finite float, or None (text, a bool, or too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def better(name: str) -> str:
    """``lower`` for a loss, ``higher`` for anything else: which way a metric improves."""
    return "lower" if "loss" in name.lower() else "higher"


def primary(names: Sequence[str]) -> str | None:
    """The metric a run is ranked by: mAP50-95, else the first ``metrics/*``, else the first."""
    if BEST_METRIC in names:
        return BEST_METRIC
    return next((n for n in names if n.startswith("metrics/")), names[0] if names else None)


def short(name: str) -> str:
    """A metric's name without its ``metrics/`` prefix: ``mAP50-95(B)``."""
    return name.removeprefix("metrics/")


def metric_stats(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: its last and best value with their epochs, and which way is better."""
    out: dict[str, dict[str, Any]] = {}
    for name in metric_names(metrics):
        values = [
            (value, int(entry["epoch"]))
            for entry in metrics
            if (value := _number_of(entry["metrics"].get(name))) is not None
        ]
        if not values:
            continue
        way = better(name)
        sign = 1.0 if way == "lower" else -1.0
        # The earliest epoch wins a tie, as a tracker's "best epoch" does.
        best = min(values, key=lambda item: (sign * item[0], item[1]))
        last = max(values, key=lambda item: item[1])
        out[name] = {
            "best": best[0],
            "best_epoch": best[1],
            "last": last[0],
            "last_epoch": last[1],
            "better": way,
        }
    return out


def _best(
    metrics: Sequence[Mapping[str, Any]], stats: Mapping[str, Mapping[str, Any]]
) -> tuple[str, float, int] | None:
    name = primary([n for n in metric_names(metrics) if n in stats])
    if name is None:
        return None
    return name, stats[name]["best"], stats[name]["best_epoch"]


#: The training arguments the HUB v1 create body carries, by their ultralytics names.
WIRE_ARGS = ("data", "epochs", "batch", "imgsz", "patience", "device", "cache")


def params(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every training argument of a run: what the trainer gave, else what the wire carried."""
    given = record.get("params")
    if isinstance(given, Mapping):
        return dict(given)
    return dict(record.get("train_args") or {})


def param_rows(record: Mapping[str, Any]) -> list[tuple[str, object, str]]:
    """The parameter table: (name, value, how it reached the hub) per argument.

    How: ``wire`` for an argument the HUB v1 create body carries, ``hub only`` for one a
    hubfsm session sent beside it (the wire has no room for it), ``HUB default`` for a wire
    argument the trainer did not give (the official client fills these in). A Platform
    run's wire carries every argument (as text): each is ``wire``.
    """
    given = record.get("params")
    if record.get("protocol") == "platform" and isinstance(given, Mapping):
        return [(str(k), v, "wire") for k, v in given.items()]
    if not isinstance(given, Mapping):
        return [(str(k), v, "wire") for k, v in (record.get("train_args") or {}).items()]
    rows = [(str(k), v, "wire" if k in WIRE_ARGS else "hub only") for k, v in given.items()]
    wire = record.get("train_args") or {}
    rows += [(k, wire[k], "HUB default") for k in WIRE_ARGS if k in wire and k not in given]
    return rows


def planned_epochs(record: Mapping[str, Any]) -> int | None:
    """The epochs the trainer planned: its own ``epochs`` when it sent every argument.

    A run whose arguments came beside the wire's and hold no ``epochs`` planned what its
    trainer defaults to, which the hub does not know: the wire's 300 is the official
    client's default, not the trainer's.
    """
    given = record.get("params")
    if isinstance(given, Mapping) and record.get("protocol") != "platform":
        return _count(given.get("epochs"))
    # Platform runs say their epochs themselves; a HUB v1 record without the arguments
    # has the wire's value, the best there is.
    return _count(record.get("epochs"))


def state(record: Mapping[str, Any], now: float, stall_after: float) -> str:
    """The run's status, ``interrupted`` or ``stalled``.

    ``interrupted``: not trained, and its session said it stopped before the end (Ctrl-C,
    a signal, an exception; a hubfsm session says so to a hubfsm hub as it closes).
    ``stalled``: not trained, and silent for ``stall_after`` seconds. A run killed, or
    stopped by a client that does not say so, sends nothing more: the hub only sees the
    silence. The API's status stays ``training`` (the official client reads it).

    A Platform trainer may send nothing between epochs (hubfsm's sends no heartbeat there):
    its run is stalled only after two of its epochs' average time, if that is longer.
    """
    status = str(record.get("status"))
    if status == "trained":
        return status
    if record.get("interrupted_at"):
        return "interrupted"
    times = [seconds_of(record.get(k)) for k in ("updated_at", "heartbeat_at")]
    latest = max((t for t in times if t is not None), default=None)
    started, last = seconds_of(record.get("started_at")), _count(record.get("last_epoch"))
    if record.get("protocol") == "platform" and latest and started and last is not None:
        stall_after = max(stall_after, 2 * (latest - started) / (last + 1))
    if latest is not None and now - latest > stall_after:
        return "stalled"
    return status


def missing(metrics: Sequence[Mapping[str, Any]], *, from_zero: bool) -> str | None:
    """Epochs before the last without metrics: from 0 (as ultralytics counts), else the first."""
    seen = sorted({e for entry in metrics if (e := _count(entry["epoch"])) is not None and e >= 0})
    first = 0 if from_zero or not seen else seen[0]
    gaps = [(a + 1, b - 1) for a, b in zip([first - 1, *seen], seen, strict=False) if b > a + 1]
    if not gaps:
        return None
    shown = ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in gaps[:5])
    shown += f" and {len(gaps) - 5} more gaps" if len(gaps) > 5 else ""
    count = sum(b - a + 1 for a, b in gaps)
    return f"no metrics arrived for epochs {shown} ({count} of {seen[-1] - first + 1})"


def summarize(
    record: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    now: float,
    stall_after: float = STALL_BEATS * HEARTBEAT_INTERVAL,
) -> dict[str, Any]:
    """Progress, times, best metric and warnings of a run, as text ready to show.

    Args:
        record: The API's view of the run.
        metrics: Its metrics, as the API lists them.
        now: Hub clock seconds.
        stall_after: Seconds without a heartbeat or upload after which a run is stalled.
    """
    total = planned_epochs(record)
    last = _count(record.get("last_epoch"))
    done = 0 if last is None else last + 1
    final = _count(record.get("final_epoch"))
    if record.get("status") == "trained" and final is not None:
        done = max(done, final + 1)
    shown = state(record, now, stall_after)
    running = shown in ("new", "training")
    started = seconds_of(record.get("started_at"))
    updated = seconds_of(record.get("updated_at"))
    beat = seconds_of(record.get("heartbeat_at"))
    latest = max((t for t in (updated, beat) if t is not None), default=None)
    # The clocks stop with the run: at its last upload once trained, its last sign if stalled.
    end = now if running else (updated if shown == "trained" else latest) or now
    if shown == "interrupted":
        end = seconds_of(record.get("interrupted_at")) or end
    elapsed = None if started is None else end - started
    eta = None
    if running and started is not None and updated is not None and done and total:
        eta = max(0, total - done) * (updated - started) / done
    stats = metric_stats(metrics)
    best = _best(metrics, stats)
    checkpoint = _count(record.get("checkpoint_epoch"))
    stale = None
    if (
        checkpoint is not None
        and last is not None
        and last > checkpoint
        and not record.get("has_best_weights")
    ):
        stale = (
            f"last.pt is from epoch {checkpoint}, older than the last metrics (epoch {last}): "
            f"trainers upload a checkpoint at most every {CHECKPOINT_INTERVAL} s."
        )
    if shown != "trained" and not running and done:
        # Stopped: the epochs it ran are what there is (the bar shows how far it got).
        progress = f"stopped after epoch {done}" + (f" of {total}" if total else "")
        percent = min(100.0, 100.0 * done / total) if total and total > 0 else 100.0
    elif shown == "trained":
        # Over: the epochs actually run are the whole, whatever was planned.
        percent = 100.0
        progress = f"epoch {done} of {done}"
        if total and total != done:
            progress += f" ({total} planned)"
    else:
        percent = min(100.0, 100.0 * done / total) if total and total > 0 else 0.0
        progress = f"epoch {done} of {total}" if total else f"epoch {done}"
    eta_text = {"trained": "finished", "stalled": "stopped", "interrupted": "stopped"}.get(
        shown, duration(eta)
    )
    name = None if best is None else best[0]
    return {
        "status": record.get("status"),
        "state": shown,
        "done": done,
        "total": total,
        "percent": round(percent, 1),
        "progress": progress,
        "elapsed": duration(elapsed),
        "eta": eta_text,
        "heartbeat": "never" if beat is None else f"{duration(now - beat)} ago",
        "agent": record.get("agent") or "-",
        "best": None if best is None else {"name": best[0], "value": best[1], "epoch": best[2]},
        "best_text": "-" if best is None else f"{best[1]:.4g} (epoch {best[2]})",
        "best_label": "best" if name is None else f"best {short(name)}",
        "better": None if name is None else f"{better(name)} is better",
        "stats": stats,
        "stale": stale,
        "missing": missing(metrics, from_zero=record.get("protocol") == "platform"),
        "last_epoch": "-" if last is None else str(last),
        "created": _short(record.get("created_at")),
        "activity": "no activity yet" if latest is None else f"active {duration(now - latest)} ago",
        "params": params(record),
        "ended": (
            f"interrupted: {record.get('interrupted_by')}"
            if shown == "interrupted"
            else "silent: no heartbeat or upload for a while (killed, or lost)"
            if shown == "stalled"
            else ""
        ),
    }


def since_start(
    record: dict[str, Any], metrics: list[dict[str, Any]], times: dict[int, float]
) -> list[float | None]:
    """Seconds from the run's start to each epoch's arrival (None where not noted).

    The start is the run's first sign (metrics, checkpoint or heartbeat), else its first
    epoch's arrival; epochs kept before the hub noted times have none.
    """
    start = seconds_of(record.get("started_at"))
    if start is None and times:
        start = min(times.values())
    out: list[float | None] = []
    for row in metrics:
        at = times.get(row["epoch"])
        out.append(None if at is None or start is None else round(max(0.0, at - start), 3))
    return out


def dumps(value: object) -> str:
    """Strict JSON text; what no JSON number holds (from data of older versions) is null.

    That is NaN, Infinity, and integers past what a double holds.
    """
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not -MAX_JSON_INT <= value <= MAX_JSON_INT:
        return None  # no JSON number holds it (and past 4300 digits, json.dumps raises)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run_stem(record: Mapping[str, Any]) -> str:
    """The run's name as a file name: ``yolov8n-coco8`` (its id when it has no usable name)."""
    name = str(record.get("name") or "")
    # A run named after its model file (``yolov8n.yaml``) is saved as ``yolov8n-best.pt``.
    name = re.sub(r"\.(ya?ml|pt)$", "", name)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return name[:80] or str(record["id"])


def download_name(record: Mapping[str, Any], kind: str) -> str:
    """What a weight file is saved as: ``<run>-best.pt``, so that runs do not overwrite."""
    return f"{run_stem(record)}-{kind}.pt"


def metrics_csv(metrics: Sequence[Mapping[str, Any]]) -> str:
    """The metrics as CSV: a row per epoch, a column per metric, each value as sent."""
    names = metric_names(metrics)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *names])
    for entry in metrics:
        values = [entry["metrics"].get(name) for name in names]
        # A float as its shortest round-tripping text: read back, it is the value sent.
        writer.writerow([entry["epoch"], *(_cell(v) for v in values)])
    return out.getvalue()


def _cell(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else dumps(value)
