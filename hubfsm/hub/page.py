"""The local hub's web pages: a model list, and one page per model with its metrics.

Plain string templates: every value from a request or the store goes through
:func:`html.escape`. The charts are inline SVG, one small chart per metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg { border: 1px solid #ddd; background: #fff; }
.status { font-weight: bold; }
"""

_WIDTH, _HEIGHT, _PAD = 300, 130, 24
_MAX_CHARTS = 24


def _doc(title: str, body: str, *, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="15">' if refresh else ""
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8">{meta}'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return escape(str(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _shown(value: Any) -> str:
    return "-" if value is None else escape(str(value))


def render_index(models: Sequence[Mapping[str, Any]]) -> str:
    """The list of models, newest first, each linking to its page."""
    rows = "".join(
        f'<tr><td class="l"><a href="/models/{escape(m["id"])}">{escape(m["id"])}</a></td>'
        f'<td class="l">{escape(str(m.get("name") or ""))}</td>'
        f'<td class="l">{escape(str(m.get("status")))}</td>'
        f'<td class="l">{escape(str(m.get("created_at") or ""))}</td></tr>'
        for m in reversed(models)
    )
    table = (
        '<table><tr><th class="l">model</th><th class="l">name</th><th class="l">status</th>'
        f'<th class="l">created</th></tr>{rows}</table>'
        if models
        else "<p>No models yet.</p>"
    )
    return _doc("Local hub", f"<h1>Local hub</h1>{table}")


def render_model(
    record: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    weights: Mapping[str, tuple[str, int] | None],
) -> str:
    """A model's page: status, weight links, a chart per metric and the metrics table.

    Args:
        record: The model record, as ``GET /v1/models/{id}`` shows it.
        metrics: Its per-epoch records (``epoch``, ``metrics``), sorted by epoch.
        weights: For ``last`` and ``best``: (sha256, size) if the file exists, else None.
    """
    model_id = escape(str(record["id"]))
    facts = "".join(
        f'<tr><th class="l">{key}</th><td class="l">{_shown(record.get(key))}</td></tr>'
        for key in ("name", "cfg", "data", "epochs", "batch_size", "imgsz", "last_epoch", "map")
    )
    links = "".join(
        f'<li><a href="/models/{model_id}/weights/{kind}">{kind}.pt</a> '
        f"({size} bytes, sha256 <code>{escape(digest)}</code>)</li>"
        if found is not None
        else f"<li>{kind}.pt: not uploaded</li>"
        for kind, found in weights.items()
        for digest, size in [found or ("", 0)]
    )
    names = _metric_names(metrics)
    charts = "".join(_chart(name, metrics) for name in names[:_MAX_CHARTS])
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><td>{_number(entry['epoch'])}</td>"
        + "".join(f"<td>{_number(entry['metrics'].get(name, ''))}</td>" for name in names)
        + "</tr>"
        for entry in metrics
    )
    status = escape(str(record.get("status")))
    body = (
        f'<p><a href="/">all models</a></p><h1>Model {model_id}</h1>'
        f'<p>Status: <span class="status">{status}</span></p>'
        f"<table>{facts}</table><h2>Weights</h2><ul>{links}</ul><h2>Metrics</h2>"
    )
    if metrics:
        body += (
            f'<div class="charts">{charts}</div>'
            f'<table class="metrics"><tr><th>epoch</th>{head}</tr>{rows}</table>'
        )
    else:
        body += "<p>No metrics yet.</p>"
    return _doc(f"Model {record['id']}", body, refresh=record.get("status") != "trained")


def render_missing(model_id: str) -> str:
    """The page of a model that does not exist."""
    return _doc("No such model", f"<h1>No model {escape(model_id)}</h1><a href='/'>all models</a>")


def _metric_names(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for entry in metrics:
        names.update(dict.fromkeys(entry["metrics"]))
    return list(names)


def _chart(name: str, metrics: Sequence[Mapping[str, Any]]) -> str:
    points = [
        (float(entry["epoch"]), float(value))
        for entry in metrics
        if isinstance(value := entry["metrics"].get(name), (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    ]
    if not points:
        return ""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    inner_w, inner_h = _WIDTH - 2 * _PAD, _HEIGHT - 2 * _PAD

    def at(x: float, y: float) -> str:
        px = _PAD + (x - x0) / ((x1 - x0) or 1.0) * inner_w
        py = _PAD + (1.0 - (y - y0) / ((y1 - y0) or 1.0)) * inner_h
        return f"{px:.1f},{py:.1f}"

    line = (
        f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" '
        f'points="{" ".join(at(x, y) for x, y in points)}"/>'
        if len(points) > 1
        else f'<circle r="3" fill="#1565c0" cx="{at(*points[0]).split(",")[0]}" '
        f'cy="{at(*points[0]).split(",")[1]}"/>'
    )
    bottom = _HEIGHT - 6
    return (
        f'<svg width="{_WIDTH}" height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'role="img" aria-label="{escape(name)} per epoch">'
        f'<text x="{_PAD}" y="14" font-size="12">{escape(name)}</text>'
        f'<text x="{_WIDTH - 4}" y="14" font-size="10" text-anchor="end">max {y1:.4g}</text>'
        f'<text x="{_WIDTH - 4}" y="{bottom}" font-size="10" text-anchor="end">'
        f"min {y0:.4g}</text>"
        f'<text x="{_PAD}" y="{bottom}" font-size="10">epoch {x0:.0f}-{x1:.0f}</text>'
        f"{line}</svg>"
    )
