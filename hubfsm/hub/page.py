"""The local hub's web pages: a list of runs, and one page per run.

The pages are plain HTML rendered here (every value goes through :func:`html.escape`), and
the same data as JSON in the page; ``static/hub.js`` draws the charts with uPlot (vendored,
see ``static/uplot.LICENSE``; nothing is loaded from elsewhere, so the pages work offline)
and polls the JSON while a run trains. :func:`summarize` computes what both show.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from hubfsm.hub.parse import MAX_INT, MAX_JSON_INT

#: The metric a run is ranked by, when it has it.
BEST_METRIC = "metrics/mAP50-95(B)"
#: Ultralytics' minimum seconds between checkpoint uploads (see PROTOCOL.md).
CHECKPOINT_INTERVAL = 900


def _seconds(iso: object) -> float | None:
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


def _best(metrics: Sequence[Mapping[str, Any]]) -> tuple[str, float, int] | None:
    names = metric_names(metrics)
    name = (
        BEST_METRIC
        if BEST_METRIC in names
        else next((n for n in names if n.startswith("metrics/")), None)
    )
    if name is None:
        return None
    values = [
        (value, int(entry["epoch"]))
        for entry in metrics
        if (value := _number_of(entry["metrics"].get(name))) is not None
    ]
    if not values:
        return None
    value, epoch = max(values)
    return name, value, epoch


def summarize(
    record: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]], now: float
) -> dict[str, Any]:
    """Progress, times, best metric and warnings of a run, as text ready to show."""
    total = _count(record.get("epochs"))
    last = _count(record.get("last_epoch"))
    done = 0 if last is None else last + 1
    final = _count(record.get("final_epoch"))
    if record.get("status") == "trained" and final is not None:
        done = max(done, final + 1)
    training = record.get("status") != "trained"
    started = _seconds(record.get("started_at"))
    updated = _seconds(record.get("updated_at"))
    beat = _seconds(record.get("heartbeat_at"))
    end = now if training else (updated or now)
    elapsed = None if started is None else end - started
    eta = None
    if training and started is not None and updated is not None and done and total:
        eta = max(0, total - done) * (updated - started) / done
    best = _best(metrics)
    latest = max((t for t in (updated, beat) if t is not None), default=None)
    checkpoint = _count(record.get("checkpoint_epoch"))
    stale = None
    if checkpoint is not None and last is not None and last > checkpoint:
        stale = (
            f"last.pt is from epoch {checkpoint}, older than the last metrics (epoch {last}): "
            f"the official client uploads a checkpoint at most every {CHECKPOINT_INTERVAL} s."
        )
    percent = min(100.0, 100.0 * done / total) if total and total > 0 else 0.0
    return {
        "status": record.get("status"),
        "done": done,
        "total": total,
        "percent": round(percent, 1),
        "progress": f"epoch {done} of {total}" if total else f"epoch {done}",
        "elapsed": duration(elapsed),
        "eta": duration(eta) if training else "finished",
        "heartbeat": "never" if beat is None else f"{duration(now - beat)} ago",
        "agent": record.get("agent") or "-",
        "best": None if best is None else {"name": best[0], "value": best[1], "epoch": best[2]},
        "best_text": "-" if best is None else f"{best[1]:.4g} (epoch {best[2]})",
        "stale": stale,
        "last_epoch": "-" if last is None else str(last),
        "created": _short(record.get("created_at")),
        "activity": "no activity yet" if latest is None else f"active {duration(now - latest)} ago",
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


def _badge(status: object) -> str:
    text = escape(str(status))
    return f'<span class="badge {text}" data-field="summary.status">{text}</span>'


def _bar(percent: float) -> str:
    return f'<div class="bar"><div class="fill" style="width:{percent:.1f}%"></div></div>'


def render_index(runs: Sequence[Mapping[str, Any]], now: float) -> str:
    """The list of runs: status, progress, best metric; sortable, filterable, comparable."""
    rows = "".join(_index_row(run) for run in runs)
    table = (
        '<div class="tools"><input id="filter" type="search" placeholder="filter by name or id">'
        '<select id="status-filter"><option value="">any status</option>'
        "<option>new</option><option>training</option><option>trained</option></select>"
        '<span class="hint">click a column to sort; tick runs to compare them</span></div>'
        '<table id="runs" class="runs"><thead><tr><th></th>'
        '<th data-sort="name">run</th><th data-sort="status">status</th>'
        '<th data-sort="percent">progress</th><th data-sort="best">best mAP50-95</th>'
        '<th data-sort="created">created</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        '<section id="compare" class="card"><h2>Compare runs</h2>'
        '<label>metric <select id="compare-metric"></select></label>'
        '<p class="hint" id="compare-hint">Tick two or more runs above.</p>'
        '<div id="compare-chart"></div></section>'
        if runs
        else "<p>No runs yet. Point a trainer at this hub and its runs show up here.</p>"
    )
    body = f'<header><h1>Local hub</h1><span class="hint">{len(runs)} runs</span></header>'
    body += f"<main>{table}</main>"
    return _doc("Local hub", body, _data_tag("runs-data", {"now": now, "runs": list(runs)}))


def _index_row(run: Mapping[str, Any]) -> str:
    record, summary = run["record"], run["summary"]
    model_id = escape(str(record["id"]))
    best = summary["best"]
    best_value = "" if best is None else f"{best['value']:.6g}"
    return (
        f'<tr data-id="{model_id}" data-name="{escape(str(record.get("name") or ""))}" '
        f'data-status="{escape(str(record.get("status")))}" data-percent="{summary["percent"]}" '
        f'data-best="{best_value}" data-created="{escape(str(record.get("created_at")))}">'
        f'<td><input type="checkbox" class="pick" value="{model_id}"></td>'
        f'<td><a href="/models/{model_id}">{escape(str(record.get("name") or model_id))}</a>'
        f'<div class="id">{model_id}</div></td>'
        f"<td>{_badge(record.get('status'))}</td>"
        f"<td>{_bar(summary['percent'])}<div>{escape(summary['progress'])}</div></td>"
        f"<td>{escape(summary['best_text'])}</td>"
        f"<td>{escape(summary['created'])}"
        f'<div class="hint">{escape(summary["activity"])}</div></td></tr>'
    )


def _fact(label: str, field: str, value: object) -> str:
    shown = "-" if value is None else escape(str(value))
    return (
        f'<div class="fact"><div class="label">{label}</div>'
        f'<div data-field="{field}">{shown}</div></div>'
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
        + _fact("best mAP50-95", "summary.best_text", summary["best_text"])
        + f'</div><div id="progress-bar">{_bar(summary["percent"])}</div>'
        + f'<p id="stale" class="warn"{"" if summary["stale"] else " hidden"}>'
        + f"{escape(summary['stale'] or '')}</p></section>"
    )
    weights = "".join(
        f"<tr><td><code>{escape(w['file'])}</code></td><td>{escape(str(w['epoch']))}</td>"
        f'<td>{size(int(w["size"]))}</td><td><code title="{escape(w["sha256"])}">'
        f"{escape(w['sha256'][:16])}…</code></td>"
        f'<td><a href="{escape(w["href"])}" download>download</a></td></tr>'
        for w in data["weights"]
    )
    weights_table = (
        '<table class="weights"><thead><tr><th>file</th><th>epoch</th><th>size</th>'
        f'<th>sha256</th><th></th></tr></thead><tbody id="weights-body">{weights}</tbody></table>'
    )
    config = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(dumps(v))}</td></tr>"
        for k, v in record.get("train_args", {}).items()
    )
    facts = "".join(
        f"<tr><th>{key}</th><td>{escape(str(record.get(key)))}</td></tr>"
        for key in ("cfg", "data", "parent", "created_at", "agent_id")
    )
    names = metric_names(data["metrics"])
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{entry['epoch']}</td>"
        + "".join(f"<td>{_number(entry['metrics'].get(n))}</td>" for n in names)
        + "</tr>"
        for entry in data["metrics"]
    )
    table = f'<table class="metrics"><tr><th>epoch</th>{head}</tr>{rows}</table>'
    body = (
        f'<header><a href="/">← all runs</a><h1>{name}</h1>{_badge(record.get("status"))}'
        f'<span class="id">{model_id}</span></header><main>{progress}'
        f'<section id="charts">{"" if names else "<p>No metrics yet.</p>"}</section>'
        f'<section class="card"><h2>Weights</h2>{weights_table}</section>'
        f'<section class="card two"><div><h2>Training arguments</h2><table>{config}</table></div>'
        f"<div><h2>Run</h2><table>{facts}</table></div></section>"
        f'<section class="card"><details><summary>Metrics table ({len(data["metrics"])} epochs)'
        f"</summary>{table}</details></section></main>"
    )
    return _doc(
        f"{record.get('name') or record['id']} - local hub", body, _data_tag("model-data", data)
    )


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return "" if value is None else escape(str(value))


def render_missing(what: str) -> str:
    """The page of something that does not exist."""
    return _doc("Not found", f"<header><h1>No {escape(what)}</h1><a href='/'>all runs</a></header>")
