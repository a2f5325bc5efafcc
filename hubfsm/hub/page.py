"""The local hub's web pages: a list of runs, and one page per run.

The pages are plain HTML rendered here (every value goes through :func:`html.escape`), and
the same data as JSON in the page; ``static/hub.js`` draws the charts with uPlot (vendored,
see ``static/uplot.LICENSE``; nothing is loaded from elsewhere, so the pages work offline)
and polls the JSON while a run trains. :func:`summarize` computes what both show.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from html import escape
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
    argument the trainer did not give (the official client fills these in).
    """
    given = record.get("params")
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
    """
    status = str(record.get("status"))
    if status == "trained":
        return status
    if record.get("interrupted_at"):
        return "interrupted"
    times = [seconds_of(record.get(k)) for k in ("updated_at", "heartbeat_at")]
    latest = max((t for t in times if t is not None), default=None)
    if latest is not None and now - latest > stall_after:
        return "stalled"
    return status


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
            f"the official client uploads a checkpoint at most every {CHECKPOINT_INTERVAL} s."
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


def _doc(title: str, body: str, script: str = "") -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel="stylesheet" href="/static/uplot.min.css">'
        '<link rel="stylesheet" href="/static/hub.css">'
        f'</head><body>{body}<script src="/static/uplot.iife.min.js"></script>'
        f'<script src="/static/hub.js"></script>{script}</body></html>'
    )


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


def _data_tag(element_id: str, value: object) -> str:
    # "<" written as an escape, so nothing in the data can end the <script> element.
    text = dumps(value).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


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


def _badge(state: object) -> str:
    text = escape(str(state))
    return f'<span class="badge {text}" data-field="summary.state">{text}</span>'


def _bar(percent: float) -> str:
    return (
        f'<div class="bar" role="progressbar" aria-label="progress" aria-valuemin="0" '
        f'aria-valuemax="100" aria-valuenow="{percent:.0f}">'
        f'<div class="fill" style="width:{percent:.1f}%"></div></div>'
    )


#: The states a run shows, in the order the status filter offers them.
STATES = ("new", "training", "stalled", "interrupted", "trained")


def _sort_head(key: str, label: str) -> str:
    return (
        f'<th data-sort="{key}" aria-sort="none"><button type="button" class="sort">'
        f"{label}</button></th>"
    )


def _unreachable() -> str:
    return (
        '<p id="offline" class="warn" role="status" hidden>The hub is unreachable: '
        "this page shows what it last received and keeps trying.</p>"
    )


def _empty_state(api_root: str) -> str:
    root = escape(api_root or "http://127.0.0.1:8000")
    return (
        '<section class="card empty"><h2>No runs yet</h2>'
        "<p>Point a trainer at this hub and its runs show up here, live:</p>"
        f"<pre><code>export ULTRALYTICS_HUB_API={root}\n"
        "export HUB_API_KEY=$(cat &lt;hub data&gt;/api_key)\n"
        "python train.py   # a hubfsm.Session, or ultralytics with hub_model_url</code></pre>"
        f"<p>Or train the built-in tiny model: <code>hubfsm demo --hub {root} "
        "--key-file &lt;hub data&gt;/api_key</code></p></section>"
    )


def render_index(runs: Sequence[Mapping[str, Any]], now: float, api_root: str = "") -> str:
    """The list of runs: status, progress, best metric; sortable, filterable, comparable."""
    rows = "".join(_index_row(run) for run in runs)
    all_names: dict[str, None] = {}
    for run in runs:
        all_names.update(dict.fromkeys(run["summary"].get("stats", {})))
    metric_options = "".join(f"<option>{escape(n)}</option>" for n in all_names)
    table = (
        '<div class="tools"><label>filter <input id="filter" type="search" '
        'placeholder="name, tag or id"></label>'
        '<label>status <select id="status-filter"><option value="">any</option>'
        + "".join(f"<option>{s}</option>" for s in STATES)
        + "</select></label>"
        '<label>column <select id="list-metric"><option value="">primary metric</option>'
        f"{metric_options}</select></label>"
        '<label>value <select id="list-which"><option value="best">best</option>'
        '<option value="last">last</option></select></label>'
        '<span class="hint">sort by a column; tick runs to compare them</span></div>'
        '<div class="scroll"><table id="runs" class="runs"><thead><tr>'
        '<th><span class="sr-only">compare</span></th>'
        + _sort_head("name", "run")
        + _sort_head("status", "status")
        + _sort_head("percent", "progress")
        + _sort_head("best", '<span id="best-head">best (primary metric)</span>')
        + _sort_head("created", "created")
        + f"</tr></thead><tbody>{rows}</tbody></table></div>"
        '<section id="compare" class="card"><h2>Compare runs</h2>'
        '<label id="compare-pick" hidden>metrics (pick any number) '
        '<select id="compare-metric" multiple size="4"></select></label>'
        '<p class="hint" id="compare-hint">Tick two or more runs above.</p>'
        '<div id="compare-tables"></div><div id="compare-chart" class="grid"></div></section>'
        if runs
        else _empty_state(api_root)
    )
    body = f'<header><h1>Local hub</h1><span class="hint" id="count">{len(runs)} runs</span>'
    body += f"</header>{_unreachable()}<main>{_noscript()}{table}</main>"
    return _doc("Local hub", body, _data_tag("runs-data", {"now": now, "runs": list(runs)}))


def _noscript() -> str:
    return (
        '<noscript><p class="warn">JavaScript is off: the charts, sorting and live updates '
        "need it. The tables below are complete.</p></noscript>"
    )


def _index_row(run: Mapping[str, Any]) -> str:
    record, summary = run["record"], run["summary"]
    model_id = escape(str(record["id"]))
    name = escape(str(record.get("name") or model_id))
    best = summary["best"]
    best_value = "" if best is None else f"{best['value']:.6g}"
    best_cell = escape(summary["best_text"])
    if best is not None:
        best_cell = f'{best_cell}<div class="hint">{escape(short(best["name"]))}</div>'
    state_ = escape(str(summary.get("state", record.get("status"))))
    return (
        f'<tr data-id="{model_id}" data-name="{escape(str(record.get("name") or ""))}" '
        f'data-tags="{escape(" ".join(str(t) for t in record.get("tags") or []))}" '
        f'data-status="{state_}" data-percent="{summary["percent"]}" '
        f'data-best="{best_value}" data-created="{escape(str(record.get("created_at")))}">'
        f'<td><input type="checkbox" class="pick" value="{model_id}" '
        f'aria-label="compare {name}"></td>'
        f'<td><a href="/models/{model_id}">{name}</a>'
        f'<div class="id">{model_id}</div>{_tags(record.get("tags"))}</td>'
        f'<td><span class="badge {state_}">{state_}</span></td>'
        f"<td>{_bar(summary['percent'])}<div>{escape(summary['progress'])}</div></td>"
        f'<td class="best">{best_cell}</td>'
        f"<td>{escape(summary['created'])}"
        f'<div class="hint">{escape(summary["activity"])}</div></td></tr>'
    )


def _fact(label: str, field: str, value: object, label_field: str = "") -> str:
    shown = "-" if value is None else escape(str(value))
    named = f' data-field="{label_field}"' if label_field else ""
    return (
        f'<div class="fact"><div class="label"{named}>{escape(label)}</div>'
        f'<div data-field="{field}">{shown}</div></div>'
    )


def _chart_tools() -> str:
    return (
        '<div class="tools chart-tools" id="chart-tools">'
        '<label>smoothing <input id="smooth" type="range" min="0" max="0.99" step="0.01" '
        'value="0"><output id="smooth-value">0</output></label>'
        '<label><input id="log" type="checkbox"> log scale</label>'
        '<label><input id="zero" type="checkbox"> y from zero</label>'
        '<label>x-axis <select id="xaxis"><option value="epoch">epoch</option>'
        '<option value="time">time since the start</option></select></label>'
        '<span class="hint">drag across a chart to zoom, double-click to reset</span></div>'
    )


def _tags(tags: object) -> str:
    shown = [str(t) for t in tags] if isinstance(tags, list) else []
    return "".join(f'<span class="tag">{escape(t)}</span>' for t in shown)


def _edit_form(record: Mapping[str, Any]) -> str:
    """The run's name, tags and notes, changed with the hub's key; and its deletion."""
    tags = ", ".join(str(t) for t in record.get("tags") or [])
    return (
        '<section class="card" id="edit"><h2>Name, tags and notes</h2>'
        '<form id="edit-form" class="edit">'
        f'<label>name <input id="edit-name" name="name" '
        f'value="{escape(str(record.get("name") or ""))}" maxlength="2000" required></label>'
        f'<label>tags <input id="edit-tags" name="tags" value="{escape(tags)}" '
        'placeholder="comma, separated"></label>'
        '<label>notes <textarea id="edit-notes" name="notes" rows="3" maxlength="20000">'
        f"{escape(str(record.get('notes') or ''))}</textarea></label>"
        '<label>API key <input id="edit-key" name="key" type="password" autocomplete="off" '
        'placeholder="the hub\'s key, as in &lt;hub data&gt;/api_key"></label>'
        '<div class="row"><button type="submit" id="edit-save">Save</button>'
        '<button type="button" id="edit-delete" class="danger">Delete run</button></div>'
        '<p class="hint" id="edit-status" role="status" aria-live="polite">'
        "Changing a run needs the hub's API key; it is kept in this tab only.</p>"
        "</form></section>"
    )


def render_model(data: Mapping[str, Any]) -> str:
    """A run's page: progress, charts per metric group, weight files, config and metrics."""
    record, summary = data["record"], data["summary"]
    model_id = escape(str(record["id"]))
    name = escape(str(record.get("name") or record["id"]))
    progress = (
        '<section class="card progress"><div class="row">'
        + _fact("progress", "summary.progress", summary["progress"])
        + _fact("elapsed", "summary.elapsed", summary["elapsed"])
        + _fact("time left", "summary.eta", summary["eta"])
        + _fact("last heartbeat", "summary.heartbeat", summary["heartbeat"])
        + _fact("agent", "summary.agent", summary["agent"])
        + _fact(
            summary.get("best_label", "best"),
            "summary.best_text",
            summary["best_text"],
            "summary.best_label",
        )
        + _fact("final mAP50-95 (reported)", "record.map", record.get("map"))
        + f'</div><p class="hint" data-field="summary.better">{escape(summary.get("better") or "")}'
        + '</p><p class="hint" id="ended" data-field="summary.ended">'
        + f"{escape(summary.get('ended') or '')}</p>"
        + f'<div id="progress-bar">{_bar(summary["percent"])}</div>'
        + f'<p id="stale" class="info"{"" if summary["stale"] else " hidden"}>'
        + f"{escape(summary['stale'] or '')}</p></section>"
    )
    weights = "".join(
        f"<tr><td><code>{escape(w['file'])}</code></td><td>{escape(str(w['epoch']))}</td>"
        f'<td>{size(int(w["size"]))}</td><td><code title="{escape(w["sha256"])}">'
        f"{escape(w['sha256'][:16])}…</code></td>"
        f'<td><a href="{escape(w["href"])}" download="{escape(w.get("download", ""))}">'
        f"{escape(w.get('download') or 'download')}</a></td></tr>"
        for w in data["weights"]
    )
    weights_table = (
        '<div class="scroll"><table class="weights"><thead><tr><th>file</th><th>epoch</th>'
        "<th>size</th><th>sha256</th><th>download</th></tr></thead>"
        f'<tbody id="weights-body">{weights}</tbody></table></div>'
    )
    config = "".join(
        f'<tr data-how="{escape(how)}"><th>{escape(k)}</th><td>{escape(dumps(v))}</td>'
        f'<td class="hint">{escape(how)}</td></tr>'
        for k, v, how in param_rows(record)
    )
    facts = "".join(
        f"<tr><th>{key}</th><td>{escape(str(record.get(key)))}</td></tr>"
        for key in ("cfg", "data", "parent", "created_at", "agent_id", "protocol")
        + (("project", "slug", "run_id", "cancelled") if record.get("project") else ())
    )
    console = _console(data.get("console") or "", bool(record.get("project")))
    names = metric_names(data["metrics"])
    stem = escape(run_stem(record))
    links = (
        f'<a href="/models/{model_id}/metrics.csv" download="{stem}-metrics.csv">CSV</a> · '
        f'<a href="/models/{model_id}/metrics.json" download="{stem}-metrics.json">JSON</a>'
    )
    body = (
        f'<header><a href="/">← all runs</a><h1 id="run-name">{name}</h1>'
        f'{_badge(summary.get("state"))}<span class="id">{model_id}</span>'
        f'<span id="run-tags">{_tags(record.get("tags"))}</span></header>{_unreachable()}'
        f'<main>{_noscript()}<p id="run-notes" class="notes"'
        f'{"" if record.get("notes") else " hidden"}>{escape(str(record.get("notes") or ""))}</p>'
        f"{progress}{_chart_tools() if names else ''}"
        f'<section id="charts">{"" if names else "<p>No metrics yet.</p>"}</section>'
        f'<section class="card"><h2>Weights</h2>{weights_table}</section>'
        f'<section class="card two"><div><h2>Training arguments</h2>'
        f'<table id="params">{config}</table>'
        '<p class="hint">The HUB v1 wire format carries data, epochs, batch, imgsz, patience, '
        "device and cache only (<em>wire</em>); a hubfsm session sends every other argument "
        "beside them to any hub but the public one, and this hub keeps it (<em>hub only</em>). "
        "<em>HUB default</em>: a value the trainer did not give, filled in as the official "
        "client does.</p></div>"
        f"<div><h2>Run</h2><table>{facts}</table></div></section>"
        f'<section class="card"><details id="metrics-details"><summary>Metrics table '
        f'(<span id="metrics-count">{len(data["metrics"])}</span> epochs)</summary>'
        f'<p>Download: {links}</p><div class="scroll">{metrics_table(data["metrics"])}</div>'
        f"</details></section>{console}{_edit_form(record)}</main>"
    )
    return _doc(
        f"{record.get('name') or record['id']} - local hub", body, _data_tag("model-data", data)
    )


def metrics_table(metrics: Sequence[Mapping[str, Any]]) -> str:
    """The metrics as an HTML table, a row per epoch (the page redraws it as epochs arrive)."""
    names = metric_names(metrics)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{entry['epoch']}</td>"
        + "".join(f"<td>{_number(entry['metrics'].get(n))}</td>" for n in names)
        + "</tr>"
        for entry in metrics
    )
    return f'<table class="metrics" id="metrics-table"><tr><th>epoch</th>{head}</tr>{rows}</table>'


def _console(text: str, platform: bool) -> str:
    """The run's console output: Platform runs send it (the page's script keeps it current)."""
    if not text and not platform:
        return ""
    return (
        '<section class="card"><details open><summary>Console</summary>'
        f'<pre class="console" id="console">{escape(text)}</pre></details></section>'
    )


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return "" if value is None else escape(str(value))


def render_missing(what: str) -> str:
    """The page of something that does not exist."""
    return _doc("Not found", f"<header><h1>No {escape(what)}</h1><a href='/'>all runs</a></header>")
