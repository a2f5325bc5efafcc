"""Markup in what clients send (names, metric names, tags, notes, console output) stays text.

Every string a client chose reaches the pages through the hub's JSON and the pages'
script; none of it may run in the browser, on any view that shows it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from hubfsm.hub import admin
from hubfsm.hub.server import LocalHub

# Skipped as the other page tests are, without Playwright (the README's test install
# has none): importing their fixtures would fail to collect instead.
pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[browser]'"
)

# The browser fixtures, and the mark that makes these tests slow.
from tests.hubfsm.hub.test_hub_browser import browser, page, pytestmark  # noqa: E402, F401

#: Breaks out of an attribute, a text node and a script, and calls home when it runs.
X = "<img src=x onerror=window.ran=1>\"'</script><script>window.ran=2</script><b>"
TIMEOUT = 10


def _hub_model(local: LocalHub, name: str) -> str:
    key = {"x-api-key": local.api_key}
    made = requests.post(
        f"{local.url}/v1/models",
        json={"meta": {"name": name}, "lineage": {"architecture": {"name": X}},
              "dataset": {"name": X}, "data": X, "config": {"epochs": 3}},
        headers=key,
        timeout=TIMEOUT,
    )  # fmt: skip
    model_id = str(made.json()["data"]["id"])
    metrics = {X + "/loss": 1.0, "metrics/mAP50-95(B)": 0.5, "label": X, X: 2.0}
    epochs = {str(e): json.dumps(metrics) for e in range(2)}
    requests.post(f"{local.url}/v1/models/{model_id}", json={"type": "metrics", "metrics": epochs},
                  headers=key, timeout=TIMEOUT).raise_for_status()  # fmt: skip
    changed = requests.post(
        f"{local.url}/models/{model_id}/annotate",
        json={"name": name, "tags": [X, "ok"], "notes": X},
        headers={**key, "Origin": local.url},
        timeout=TIMEOUT,
    )
    assert changed.status_code == 200, changed.text
    return model_id


def _platform_run(local: LocalHub, key: str) -> str:
    bearer = {"Authorization": f"Bearer {key}"}
    url = f"{local.url}/api/webhooks/training/metrics"
    data = {"trainArgs": {"data": X, "epochs": "2"}, "epochs": 2}
    started = requests.post(url, json={"project": "me/p", "name": X, "event": "training_started",
                                       "data": data}, headers=bearer, timeout=TIMEOUT)  # fmt: skip
    model_id = str(started.json()["modelId"])
    for body in (
        {"event": "epoch_end", "data": {"epoch": 0, "metrics": {X: 1.0, "lr/pg0": X}}},
        {"event": "console_output", "data": {"chunkId": 0, "content": X, "lineCount": 1}},
    ):
        requests.post(url, json={"modelId": model_id, **body}, headers=bearer,
                      timeout=TIMEOUT).raise_for_status()  # fmt: skip
    return model_id


def test_markup_from_clients_never_runs_on_any_page(page: Any, tmp_path: Path) -> None:  # noqa: F811
    platform_key = admin.add(tmp_path / "hub", "xss", io.StringIO(), platform=True)
    with LocalHub(tmp_path / "hub") as local:
        ids = [_hub_model(local, X), _hub_model(local, X + "2"), _platform_run(local, platform_key)]
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        ran = "() => [window.ran || 0, document.querySelectorAll('img[src=x], b').length]"
        for model_id in ids:
            page.goto(f"{local.url}/models/{model_id}")
            page.wait_for_function("() => document.body.dataset.epochs !== undefined")
            assert page.evaluate(ran) == [0, 0], model_id
            assert X in page.inner_text("body")  # shown, as text
        page.goto(f"{local.url}/")
        page.wait_for_selector("#runs tbody tr")
        for box in page.query_selector_all("input.pick"):
            box.check()  # the comparison view: its chart, tables and metric list
        page.wait_for_timeout(1000)
        options = page.query_selector_all("#compare-metric option")
        assert options
        page.select_option("#compare-metric", index=list(range(len(options))))
        page.select_option("#list-metric", index=1)
        page.wait_for_timeout(500)
        assert page.evaluate(ran) == [0, 0]
    assert dialogs == []
