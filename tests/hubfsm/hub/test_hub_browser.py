"""The local hub's pages in a real browser: headless Chromium driven by Playwright.

Playwright cannot download a browser here, so it drives the system's Chromium
(``apt-get install chromium``; ``pip install -e '.[browser]'``). Without either, these
tests are skipped and say which is missing.

Set ``HUBFSM_SCREENSHOTS=<folder>`` to also write the screenshots the docs show.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import hubfsm
from hubfsm.core.engine import CoreConfig, Limits
from hubfsm.core.retry import ChannelPolicies, RetryPolicy
from hubfsm.hub.server import LocalHub

CHROMIUM = os.environ.get("HUBFSM_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 20_000

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[browser]'"
)
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: apt-get install chromium (or set HUBFSM_CHROMIUM)",
        allow_module_level=True,
    )

POLICY = RetryPolicy(base=0.02, cap=0.1, max_attempts=6, deadline=5.0)
FAST = CoreConfig(
    limits=Limits(metrics=0.05, checkpoint=0.05, heartbeat=0.3, park=0.05, checkpoint_grace=0.01),
    policies=ChannelPolicies(POLICY, POLICY, POLICY, POLICY, POLICY),
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=ARGS,
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # Nothing but the hub itself: the pages must work offline.
    outside: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "about:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    opened.route("**/*", only_loopback)
    yield opened
    context.close()
    assert errors == [], errors
    assert outside == [], outside


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def _shoot(page: Any, name: str) -> None:
    folder = os.environ.get("HUBFSM_SCREENSHOTS")
    if folder:
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(pathlib.Path(folder) / name), full_page=True)


AXES_JS = """metric => {
  const u = window.hubCharts[metric];
  const left = Math.floor(u.bbox.left), bottom = Math.ceil(u.bbox.top + u.bbox.height);
  const ink = (x, y, w, h) => {
    const d = u.ctx.getImageData(x, y, w, h).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  };
  return {
    axes: u.axes.length, xlabel: u.axes[0].label,
    xticks: (u.axes[0]._values || []).filter(v => v !== "").length,
    yticks: (u.axes[1]._values || []).filter(v => v !== "").length,
    yInk: ink(0, 0, left, bottom),
    xInk: ink(left, bottom, u.ctx.canvas.width - left, u.ctx.canvas.height - bottom),
    points: u.data[0].length,
  };
}"""


def _axes(page: Any, metric: str) -> dict[str, Any]:
    """What the chart of ``metric`` drew: axes, tick labels, ink left of and below the plot."""
    return dict(page.evaluate(AXES_JS, metric))


def test_charts_render_with_axes_and_update_while_a_session_trains(
    page: Any, local: LocalHub, tmp_path: Path
) -> None:
    weights = tmp_path / "last.pt"
    session = hubfsm.Session(
        "yolov8n.yaml",
        api_key=local.api_key,
        api_root=local.url,
        web_root=local.url,
        train_args={"data": "coco8.yaml", "epochs": 12},
        config=FAST,
        outbox_dir=tmp_path / "outbox",
    )
    with session:

        def epoch(k: int) -> None:
            weights.write_bytes(b"weights of epoch %d" % k)
            session.log_metrics(
                {"train/box_loss": 2.0 - k / 10, "metrics/mAP50-95(B)": k / 20, "lr/pg0": 0.01}
            )
            session.save_checkpoint(weights, epoch=k, is_best=True)

        for k in range(3):
            epoch(k)
        page.goto(session.model_url)
        page.wait_for_function("document.querySelectorAll('.uplot').length === 3", timeout=WAIT_MS)
        page.wait_for_function("Number(document.body.dataset.epochs) >= 1", timeout=WAIT_MS)
        # Grouped as the trainer's metrics are: losses, metrics, learning rates.
        groups = page.eval_on_selector_all(
            "#charts section h2", "els => els.map(e => e.textContent)"
        )
        assert groups == ["Losses", "Metrics", "Learning rates"]
        axes = _axes(page, "train/box_loss")
        assert (axes["axes"], axes["xlabel"]) == (2, "epoch")
        assert axes["xticks"] >= 2 and axes["yticks"] >= 2
        assert axes["yInk"] > 100 and axes["xInk"] > 100  # tick labels drawn, not just kept
        canvas = page.locator('.chart[data-metric="train/box_loss"] canvas')
        assert canvas.count() == 1
        size = canvas.bounding_box()
        assert size is not None and size["width"] > 200 and size["height"] > 100

        # Hovering shows the value under the pointer in the legend.
        box = page.locator('.chart[data-metric="train/box_loss"] .u-over').bounding_box()
        page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)
        legend = page.locator('.chart[data-metric="train/box_loss"] .u-legend')
        sync_api.expect(legend).to_contain_text("2")

        # Live: more epochs arrive while the page is open, and it shows them unreloaded.
        page.evaluate("window.__loadedOnce = true")
        for k in range(3, 8):
            epoch(k)
        page.wait_for_function("Number(document.body.dataset.epochs) === 8", timeout=WAIT_MS)
        assert _axes(page, "train/box_loss")["points"] == 8
        assert page.evaluate("window.__loadedOnce") is True  # the same page, not a reload
        sync_api.expect(page.locator('[data-field="summary.progress"]')).to_have_text(
            "epoch 8 of 12"
        )
        session.finish(weights, map50_95=0.4)
    page.wait_for_function(
        "document.querySelector('.badge').textContent === 'trained'", timeout=WAIT_MS
    )
    sync_api.expect(page.locator("#weights-body")).to_contain_text("best.pt")


def test_pages_of_sample_runs_compare_and_filter(
    page: Any, local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    page.goto(f"{local.url}/models/{ids['training']}")
    # 13 metrics; train/ and val/ of the same loss share a chart: 10 charts.
    page.wait_for_function("document.querySelectorAll('.uplot').length === 10", timeout=WAIT_MS)
    sync_api.expect(page.locator("#stale")).to_be_visible()
    sync_api.expect(page.locator("#stale")).to_contain_text("last.pt is from epoch 0")
    _shoot(page, "local-hub-run.png")

    page.goto(f"{local.url}/")
    rows = page.locator("#runs tbody tr")
    sync_api.expect(rows).to_have_count(3)
    page.fill("#filter", "baseline")
    sync_api.expect(page.locator("#runs tbody tr:visible")).to_have_count(1)
    page.fill("#filter", "")
    page.select_option("#status-filter", "training")
    sync_api.expect(page.locator("#runs tbody tr:visible")).to_have_count(1)
    page.select_option("#status-filter", "")
    page.click('th[data-sort="best"] button')  # best first
    first = page.locator("#runs tbody tr").first
    sync_api.expect(first).to_have_attribute("data-id", ids["trained"])
    page.click('th[data-sort="best"] button')  # and the other way round
    sync_api.expect(page.locator("#runs tbody tr").first).to_have_attribute("data-id", ids["new"])

    page.check(f'.pick[value="{ids["trained"]}"]')
    page.check(f'.pick[value="{ids["training"]}"]')
    page.wait_for_selector("#compare-chart .uplot", timeout=WAIT_MS)
    legend = page.locator("#compare-chart .u-legend")
    sync_api.expect(legend).to_contain_text("yolov8n-coco8-baseline")
    sync_api.expect(legend).to_contain_text("yolov8n-coco8-mosaic-off")
    assert page.input_value("#compare-metric") == "metrics/mAP50-95(B)"
    page.select_option("#compare-metric", "train/box_loss")
    sync_api.expect(page.locator("#compare-chart .u-title")).to_have_text("train/box_loss")
    page.select_option("#compare-metric", "metrics/mAP50-95(B)")
    sync_api.expect(page.locator("#compare-chart .u-title")).to_have_text("metrics/mAP50-95(B)")
    page.click('th[data-sort="created"] button')
    _shoot(page, "local-hub-runs.png")
