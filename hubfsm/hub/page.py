"""The local hub's web pages as HTML: a list of runs, one page per run, the sign-in page.

The pages are plain HTML rendered here (every value goes through :func:`html.escape`), and
the same data as JSON in the page; ``static/hub.js`` draws the charts with uPlot (vendored,
see ``static/uplot.LICENSE``; nothing is loaded from elsewhere, so the pages work offline)
and polls the JSON while a run trains. What they show of a run comes from
:mod:`hubfsm.hub.summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from hubfsm.hub.access import CSRF_FIELD, Viewer
from hubfsm.hub.summary import dumps, metric_names, param_rows, run_stem, short, size


def _head(title: str, *styles: str) -> str:
    """A page's start up to its body: the title and the style sheets (all served here)."""
    links = "".join(f'<link rel="stylesheet" href="/static/{name}">' for name in styles)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>{links}</head>"
    )


def _doc(title: str, body: str, script: str = "") -> str:
    return (
        f"{_head(title, 'uplot.min.css', 'hub.css')}"
        f'<body>{body}<script src="/static/uplot.iife.min.js"></script>'
        f'<script src="/static/hub.js"></script>{script}</body></html>'
    )


def _data_tag(element_id: str, value: object) -> str:
    # "<" written as an escape, so nothing in the data can end the <script> element.
    text = dumps(value).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


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
        + '<p class="hint" id="missing" data-field="summary.missing">'
        + f"{escape(summary.get('missing') or '')}</p>"
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
        f'<tr data-how="{escape(how)}"><th>{escape(k)}</th><td>{escape(_arg_text(v))}</td>'
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
        f"{'' if record.get('notes') else ' hidden'}>{escape(str(record.get('notes') or ''))}</p>"
        f"{progress}{_chart_tools() if names else ''}"
        f'<section id="charts">{"" if names else "<p>No metrics yet.</p>"}</section>'
        f'<section class="card"><h2>Weights</h2>{weights_table}</section>'
        f'<section class="card two"><div><h2>Training arguments</h2>'
        f'<table id="params">{config}</table>{_params_hint(record)}</div>'
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


def signin_page(problem: str = "") -> str:
    """The sign-in page: one field for an API key."""
    note = f'<p class="problem">{escape(problem)}</p>' if problem else ""
    return (
        f"{_head('Sign in · local hub', 'hub.css')}<body><main><h1>Sign in</h1>"
        "<p>Paste your API key: you will see the models it made.</p>"
        f"{note}"
        '<form method="post" action="/signin">'
        '<input type="password" name="key" autocomplete="current-password" '
        'aria-label="API key" required autofocus> '
        '<button type="submit">Sign in</button></form>'
        "</main></body></html>"
    )


def session_bar(viewer: Viewer, token: str) -> str:
    """Who is signed in, a sign-out button, and the CSRF token for the page's own forms."""
    who = escape(viewer.label or viewer.key_id or "")
    role = " (admin: all models)" if viewer.admin else ""
    return (
        f'<meta name="csrf-token" content="{token}">'
        '<form class="session" method="post" action="/signout">'
        f"Signed in as {who}{role} "
        f'<input type="hidden" name="{CSRF_FIELD}" value="{token}">'
        '<button type="submit">Sign out</button></form>'
    )


def _arg_text(value: object) -> str:
    """A training argument as the table shows it: text as it is, any other value as JSON.

    A Platform trainer sends every argument as text ("0.01", "True"): quoted, each read as
    a string literal; and a HUB run's ``"coco8.yaml"`` reads better bare as well.
    """
    return value if isinstance(value, str) else dumps(value)


def _params_hint(record: Mapping[str, Any]) -> str:
    if record.get("protocol") == "platform":
        return (
            '<p class="hint">The Platform wire carries every training argument, as the '
            "trainer's text (<em>wire</em>).</p>"
        )
    return (
        '<p class="hint">The HUB v1 wire format carries data, epochs, batch, imgsz, patience, '
        "device and cache only (<em>wire</em>); a hubfsm session sends every other argument "
        "beside them to any hub but the public one, and this hub keeps it (<em>hub only</em>). "
        "<em>HUB default</em>: a value the trainer did not give, filled in as the official "
        "client does.</p>"
    )
