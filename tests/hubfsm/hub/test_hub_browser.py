"""The local hub's pages in a real browser: headless Chromium driven by Playwright.

Playwright cannot download a browser here, so it drives the system's Chromium
(``apt-get install chromium``; ``pip install -e '.[browser]'``). Without either, these
tests are skipped and say which is missing.

The screenshots the docs show come from ``python -m tools.screenshots``.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

import hubfsm
from hubfsm.core.config import ChannelPolicies, CoreConfig, Limits, RetryPolicy
from hubfsm.hub.server import LocalHub

pytestmark = pytest.mark.slow  # headless Chromium against a real local hub

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


def _refused(text: str, errors: list[str]) -> None:
    if "Content Security Policy" in text:
        errors.append(text)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # The hub's Content-Security-Policy must let its pages do all they do.
    opened.on("console", lambda message: _refused(message.text, errors))
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
        sent: list[dict[str, float]] = []

        def epoch(k: int) -> None:
            weights.write_bytes(b"weights of epoch %d" % k)
            values = {"train/box_loss": 2.0 - k / 10, "metrics/mAP50-95(B)": k / 20, "lr/pg0": 0.01}
            sent.append(values)
            session.log_metrics(values)
            session.save_checkpoint(weights, epoch=k, is_best=True)

        for k in range(3):
            epoch(k)
        page.goto(session.model_url)
        page.wait_for_function(
            "() => document.querySelectorAll('.uplot').length === 3", timeout=WAIT_MS
        )
        page.wait_for_function("() => Number(document.body.dataset.epochs) >= 1", timeout=WAIT_MS)
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
        page.wait_for_function("() => Number(document.body.dataset.epochs) === 8", timeout=WAIT_MS)
        assert _axes(page, "train/box_loss")["points"] == 8
        assert page.evaluate("window.__loadedOnce") is True  # the same page, not a reload
        sync_api.expect(page.locator('[data-field="summary.progress"]')).to_have_text(
            "epoch 8 of 12"
        )
        # The metrics table follows too: a header and eight epochs, unreloaded.
        sync_api.expect(page.locator("#metrics-table tr")).to_have_count(9)
        sync_api.expect(page.locator("#metrics-count")).to_have_text("8")
        # The CSV linked from the page holds what the session sent, value for value.
        link = page.locator('a[href$="/metrics.csv"]')
        reply = requests.get(local.url + str(link.get_attribute("href")), timeout=10)
        assert link.get_attribute("download") == "yolov8n-metrics.csv"
        assert 'filename="yolov8n-metrics.csv"' in reply.headers["Content-Disposition"]
        rows = list(csv.DictReader(io.StringIO(reply.text)))
        assert [int(r.pop("epoch")) for r in rows] == list(range(8))
        assert [{k: float(v) for k, v in r.items()} for r in rows] == sent
        json_reply = requests.get(f"{session.model_url}/metrics.json", timeout=10).json()
        assert [e["metrics"] for e in json_reply] == sent
        session.finish(weights, map50_95=0.4)
    page.wait_for_function(
        "() => document.querySelector('.badge').textContent === 'trained'", timeout=WAIT_MS
    )
    sync_api.expect(page.locator("#weights-body")).to_contain_text("best.pt")
    # Saved under the run's name, so that the best weights of two runs do not collide.
    sync_api.expect(page.locator("#weights-body a").last).to_have_attribute(
        "download", "yolov8n-best.pt"
    )
    # Over: the clocks stop and the checkpoint note is gone with the final weights in.
    sync_api.expect(page.locator('[data-field="summary.eta"]')).to_have_text("finished")
    sync_api.expect(page.locator("#stale")).to_be_hidden()


def test_pages_of_sample_runs_compare_and_filter(
    page: Any, local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    page.goto(f"{local.url}/models/{ids['training']}")
    # 13 metrics; train/ and val/ of the same loss share a chart: 10 charts.
    page.wait_for_function(
        "() => document.querySelectorAll('.uplot').length === 10", timeout=WAIT_MS
    )
    sync_api.expect(page.locator("#stale")).to_be_visible()
    sync_api.expect(page.locator("#stale")).to_contain_text("last.pt is from epoch 0")

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


def _state(page: Any) -> str:
    return str(page.locator("header .badge").text_content())


def test_a_run_goes_stalled_when_its_heartbeats_stop_and_the_page_says_when_the_hub_is_gone(
    page: Any, tmp_path: Path, sample_runs: ModuleType
) -> None:
    # Two intervals of silence make a run stalled: here 2 s instead of 10 min.
    with LocalHub(tmp_path / "hub", heartbeat_interval=1.0) as local:
        model_id = sample_runs.create(local, "killed-run", 20)
        sample_runs.heartbeat(local, model_id)
        sample_runs.send_epochs(local, model_id, range(3), 20, seed=0)
        page.goto(f"{local.url}/models/{model_id}")
        # Nothing more arrives, as after a kill -9: the open page turns it stalled.
        page.wait_for_function("() => document.body.dataset.state === 'stalled'", timeout=WAIT_MS)
        assert _state(page) == "stalled"
        sync_api.expect(page.locator('[data-field="summary.eta"]')).to_have_text("stopped")
        # The clocks stopped: a later poll shows the same elapsed time.
        elapsed = page.locator('[data-field="summary.elapsed"]').text_content()
        polls = int(page.evaluate("Number(document.body.dataset.polls)"))
        page.wait_for_function(
            f"() => Number(document.body.dataset.polls) >= {polls + 2}", timeout=WAIT_MS
        )
        assert page.locator('[data-field="summary.elapsed"]').text_content() == elapsed

        # The list shows it stalled, and the status filter finds it.
        page.goto(f"{local.url}/")
        row = page.locator(f'#runs tbody tr[data-id="{model_id}"]')
        sync_api.expect(row.locator(".badge")).to_have_text("stalled")
        page.select_option("#status-filter", "training")
        sync_api.expect(page.locator("#runs tbody tr:visible")).to_have_count(0)
        page.select_option("#status-filter", "stalled")
        sync_api.expect(page.locator("#runs tbody tr:visible")).to_have_count(1)

        # It comes back to life with its next heartbeat. The page polls every 2 s and the
        # run is stalled again 2 s after that heartbeat: it is sent just before the page's
        # next poll, which then sees it (a heartbeat sent at any other moment may fall
        # silent before a poll comes).
        page.goto(f"{local.url}/models/{model_id}")
        beats: list[str] = []

        def beat_before_the_poll(route: Any) -> None:
            if not beats:
                sample_runs.heartbeat(local, model_id)
                beats.append(route.request.url)
            route.fallback()

        page.route("**/data.json", beat_before_the_poll)
        # Read at once, in the page: its next poll finds the run silent again.
        page.wait_for_function(
            "() => document.body.dataset.state === 'training'"
            " && document.querySelector('header .badge').textContent === 'training'",
            timeout=WAIT_MS,
        )
        assert len(beats) == 1
        sync_api.expect(page.locator("#offline")).to_be_hidden()
        local.stop()
        # The hub is gone: the open page says so instead of showing old data as current.
        sync_api.expect(page.locator("#offline")).to_be_visible(timeout=WAIT_MS)
        sync_api.expect(page.locator("#offline")).to_contain_text("unreachable")


MARK_JS = """key => {
  const u = window.hubCharts[key];
  const x = Math.round(u.valToPos(u._best.x, "x", true));
  const top = Math.ceil(u.bbox.top), h = Math.floor(u.bbox.height);
  const count = col => {
    const d = u.ctx.getImageData(col, top, 1, h).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4)
      if (d[i] === 0xbf && d[i + 1] === 0x87 && d[i + 2] === 0) n++;
    return n;
  };
  return {epoch: u._best.x, at: count(x), left: count(Math.ceil(u.bbox.left) + 3)};
}"""


def test_best_epoch_marker_smoothing_log_scale_and_settings_in_the_url(
    page: Any, local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    url = f"{local.url}/models/{ids['trained']}"
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelectorAll('.uplot').length === 10", timeout=WAIT_MS
    )
    data = page.evaluate("JSON.parse(document.getElementById('model-data').textContent)")
    stats = data["summary"]["stats"]
    key = "metrics/mAP50-95(B)"
    mark = page.evaluate(MARK_JS, key)
    assert mark["epoch"] == stats[key]["best_epoch"]
    assert mark["at"] > 50 and mark["left"] == 0  # a dashed line there, and only there
    # A loss is best at its lowest: the marker of box_loss is at its minimum.
    low = min(data["metrics"], key=lambda e: e["metrics"]["train/box_loss"])["epoch"]
    assert page.evaluate("window.hubCharts['train/box_loss']._best.x") == low
    # The caption says the last and best values in words.
    caption = page.locator(f'.chart[data-metric="{key}"] figcaption')
    best = float(f"{stats[key]['best']:.5g}")
    sync_api.expect(caption).to_contain_text(f"best {best} (epoch {stats[key]['best_epoch']}")
    sync_api.expect(caption).to_contain_text("higher is better")
    # train/ and val/ box_loss share one chart.
    labels = page.evaluate("window.hubCharts['train/box_loss'].series.slice(1).map(s => s.label)")
    assert labels == ["train", "val"]

    # Zooming one chart zooms the others to the same epochs.
    page.evaluate("window.hubCharts['metrics/mAP50-95(B)'].setScale('x', {min: 5, max: 10})")
    shared = page.evaluate(
        "['train/box_loss', 'lr/pg0'].map(k => [window.hubCharts[k].scales.x.min,"
        " window.hubCharts[k].scales.x.max])"
    )
    assert shared == [[5, 10], [5, 10]]

    before = page.evaluate("window.hubCharts['train/box_loss'].ctx.canvas.toDataURL()")
    page.locator("#smooth").fill("0.9")
    page.wait_for_function("() => location.search.includes('smooth=0.9')", timeout=WAIT_MS)
    chart = page.evaluate(
        "(() => { const u = window.hubCharts['train/box_loss'];"
        " return {labels: u.series.slice(1).map(s => s.label), raw: u.data[1], smooth: u.data[2],"
        " png: u.ctx.canvas.toDataURL()}; })()"
    )
    assert chart["labels"] == ["train (raw)", "train", "val (raw)", "val"]
    sent = [e["metrics"]["train/box_loss"] for e in data["metrics"]]
    assert chart["raw"] == sent and chart["smooth"] != sent
    assert chart["smooth"][0] == pytest.approx(sent[0])  # debiased: starts at the first value
    assert chart["png"] != before  # the drawn line changed

    page.check("#log")
    page.wait_for_function("() => location.search.includes('log=1')", timeout=WAIT_MS)
    assert page.evaluate("window.hubCharts['train/box_loss'].scales.y.distr") == 3
    # The settings are in the URL: opened again, the page draws the same view.
    page.goto(page.url)
    page.wait_for_function(
        "() => document.querySelectorAll('.uplot').length === 10", timeout=WAIT_MS
    )
    assert page.input_value("#smooth") == "0.9" and page.is_checked("#log")
    assert page.evaluate("window.hubCharts['train/box_loss'].scales.y.distr") == 3
    page.uncheck("#log")
    page.check("#zero")
    page.wait_for_function(
        "() => window.hubCharts['metrics/mAP50-95(B)'].scales.y.min <= 0", timeout=WAIT_MS
    )


def test_a_single_epoch_is_drawn_in_the_middle_of_its_chart(
    page: Any, local: LocalHub, sample_runs: ModuleType
) -> None:
    model_id = sample_runs.create(local, "one-epoch", 10)
    sample_runs.send_epochs(local, model_id, range(1), 10, seed=0)
    page.goto(f"{local.url}/models/{model_id}")
    page.wait_for_function(
        "() => document.querySelectorAll('.uplot').length === 10", timeout=WAIT_MS
    )
    scales = page.evaluate(
        "(() => { const u = window.hubCharts['metrics/mAP50-95(B)'];"
        " return [u.scales.x.min, u.scales.x.max, u.scales.y.min, u.scales.y.max,"
        " u.data[1][0]]; })()"
    )
    xmin, xmax, ymin, ymax, value = scales
    assert xmin < 0 < xmax and ymin < value < ymax


def test_sorting_by_keyboard_and_comparing_parameters_and_metrics(
    page: Any, local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    page.goto(f"{local.url}/")
    best = page.locator('th[data-sort="best"]')
    assert best.get_attribute("aria-sort") == "none"
    page.focus('th[data-sort="best"] button')
    page.keyboard.press("Enter")
    sync_api.expect(best).to_have_attribute("aria-sort", "descending")
    sync_api.expect(page.locator("#runs tbody tr").first).to_have_attribute(
        "data-id", ids["trained"]
    )
    page.keyboard.press("Space")
    sync_api.expect(best).to_have_attribute("aria-sort", "ascending")
    # Every control has a name a screen reader reads.
    for selector in ("#filter", "#status-filter", "#list-metric", ".pick"):
        name = page.locator(selector).first.evaluate(
            "el => el.labels && el.labels.length ? el.labels[0].textContent"
            " : el.getAttribute('aria-label')"
        )
        assert name and name.strip(), selector

    # The column shows the last value of any metric on demand.
    page.select_option("#list-metric", "train/box_loss")
    page.select_option("#list-which", "last")
    sync_api.expect(page.locator("#best-head")).to_have_text("last train/box_loss")
    trained = page.locator(f'#runs tbody tr[data-id="{ids["trained"]}"] td.best')
    sync_api.expect(trained).to_contain_text("(epoch 29)")

    page.evaluate(f"window.hubCompare({[ids['trained'], ids['training']]!r})")
    params = page.locator("#compare-params")
    sync_api.expect(params).to_contain_text("epochs")
    sync_api.expect(params).to_contain_text("30")
    sync_api.expect(params).not_to_contain_text("batch")  # the same in both: left out
    page.select_option("#compare-metric", ["metrics/mAP50-95(B)", "val/box_loss", "lr/pg0"])
    sync_api.expect(page.locator("#compare-chart .uplot")).to_have_count(3)
    values = page.locator("#compare-values")
    sync_api.expect(values).to_contain_text("val/box_loss")
    sync_api.expect(values.locator("tr")).to_have_count(4)


@pytest.mark.parametrize("path", ["/", "/models/{trained}", "/models/{training}"])
def test_no_page_scrolls_sideways_on_a_phone(
    browser: Any, local: LocalHub, sample_runs: ModuleType, path: str
) -> None:
    ids = sample_runs.populate(local)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        opened = context.new_page()
        opened.goto(local.url + path.format(**ids))
        opened.wait_for_load_state("networkidle")
        if path == "/":
            opened.evaluate(f"window.hubCompare({[ids['trained'], ids['training']]!r})")
            opened.wait_for_selector("#compare-chart .uplot", timeout=WAIT_MS)
        else:
            opened.wait_for_selector(".uplot", timeout=WAIT_MS)
        width = opened.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
    finally:
        context.close()


def test_a_run_is_renamed_tagged_and_deleted_from_its_page_with_the_key(
    page: Any, local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    trained = ids["trained"]
    page.goto(f"{local.url}/models/{trained}")
    page.fill("#edit-name", "baseline, the one to beat")
    page.fill("#edit-tags", "seed=3, keep ,")
    page.fill("#edit-notes", "lr 0.01")
    # Without the key nothing changes, and the page says why.
    page.click("#edit-save")
    sync_api.expect(page.locator("#edit-status")).to_contain_text("Not saved")
    sync_api.expect(page.locator("#run-name")).not_to_have_text("baseline, the one to beat")
    page.fill("#edit-key", local.api_key)
    page.click("#edit-save")
    sync_api.expect(page.locator("#edit-status")).to_have_text("Saved.")
    sync_api.expect(page.locator("#run-name")).to_have_text("baseline, the one to beat")
    sync_api.expect(page.locator("#run-tags .tag")).to_have_text(["seed=3", "keep"])
    sync_api.expect(page.locator("#run-notes")).to_have_text("lr 0.01")
    record = requests.get(f"{local.url}/models/{trained}/data.json", timeout=10).json()["record"]
    assert (record["name"], record["tags"], record["notes"]) == (
        "baseline, the one to beat",
        ["seed=3", "keep"],
        "lr 0.01",
    )
    # The run list shows the tags and finds the run by one.
    page.goto(f"{local.url}/")
    page.fill("#filter", "keep")
    sync_api.expect(page.locator("#runs tbody tr:visible")).to_have_count(1)
    sync_api.expect(page.locator("#runs tbody tr:visible")).to_have_attribute("data-id", trained)

    # Deleting asks first; the key is remembered in the tab.
    page.goto(f"{local.url}/models/{ids['new']}")
    assert page.input_value("#edit-key") == local.api_key
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#edit-delete")
    page.wait_for_url(f"{local.url}/", timeout=WAIT_MS)
    sync_api.expect(page.locator("#runs tbody tr")).to_have_count(2)
    assert requests.get(f"{local.url}/models/{ids['new']}", timeout=10).status_code == 404


def test_an_interrupted_run_is_shown_filtered_and_its_clock_stopped(
    page: Any, local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    training = ids["training"]
    reply = requests.post(
        f"{local.url}/v1/agent/heartbeat/models/{training}",
        json={"agent": "a", "hubfsm": {"ended": "interrupted", "reason": "Ctrl-C"}},
        headers={"x-api-key": local.api_key},
        timeout=10,
    )
    assert reply.ok
    page.goto(f"{local.url}/")
    page.select_option("#status-filter", "interrupted")
    visible = page.locator("#runs tbody tr:visible")
    sync_api.expect(visible).to_have_count(1)
    sync_api.expect(visible).to_have_attribute("data-id", training)
    sync_api.expect(visible.locator(".badge")).to_have_text("interrupted")
    page.select_option("#status-filter", "")
    # Sorted by status, by keyboard: the interrupted run among the others, in order.
    page.focus('th[data-sort="status"] button')
    page.keyboard.press("Enter")
    statuses = page.eval_on_selector_all("#runs tbody tr", "rs => rs.map(r => r.dataset.status)")
    assert statuses == sorted(statuses) and "interrupted" in statuses

    page.goto(f"{local.url}/models/{training}")
    sync_api.expect(page.locator("header .badge")).to_have_text("interrupted")
    sync_api.expect(page.locator("#ended")).to_have_text("interrupted: Ctrl-C")
    sync_api.expect(page.locator('[data-field="summary.eta"]')).to_have_text("stopped")
    elapsed = page.locator('[data-field="summary.elapsed"]').text_content()
    page.wait_for_function("() => Number(document.body.dataset.polls || 0) >= 2", timeout=WAIT_MS)
    sync_api.expect(page.locator('[data-field="summary.elapsed"]')).to_have_text(str(elapsed))


def test_the_x_axis_switches_to_time_and_a_zoom_survives_live_epochs(
    page: Any, local: LocalHub, tmp_path: Path
) -> None:
    session = hubfsm.Session(
        "yolov8n.yaml",
        api_key=local.api_key,
        api_root=local.url,
        web_root=local.url,
        train_args={"data": "coco8.yaml", "epochs": 30},
        config=FAST,
        outbox_dir=tmp_path / "outbox",
    )
    with session:
        for k in range(6):
            session.log_metrics({"train/loss": 2.0 - k / 10, "metrics/acc": k / 10}, epoch=k)
        assert session.flush(timeout=10)
        page.goto(session.model_url)
        page.wait_for_function("() => Number(document.body.dataset.epochs) === 6", timeout=WAIT_MS)
        # Zoomed to epochs 1-3; more epochs arrive; the zoom stays, on every chart.
        page.evaluate("window.hubCharts['train/loss'].setScale('x', {min: 1, max: 3})")
        for k in range(6, 9):
            session.log_metrics({"train/loss": 2.0 - k / 10, "metrics/acc": k / 10}, epoch=k)
        page.wait_for_function("() => Number(document.body.dataset.epochs) === 9", timeout=WAIT_MS)
        scales = page.evaluate(
            "['train/loss', 'metrics/acc'].map(k => { const u = window.hubCharts[k];"
            " return [u.scales.x.min, u.scales.x.max, u.data[0].length]; })"
        )
        assert scales == [[1, 3, 9], [1, 3, 9]]
        # A double-click (a reset) shows every epoch again, and the next ones as they come.
        page.evaluate("window.hubCharts['train/loss'].setScale('x', {min: 0, max: 8})")
        session.log_metrics({"train/loss": 1.0, "metrics/acc": 0.9}, epoch=9)
        page.wait_for_function("() => Number(document.body.dataset.epochs) === 10", timeout=WAIT_MS)
        page.wait_for_function(
            "() => window.hubCharts['train/loss'].scales.x.max === 9", timeout=WAIT_MS
        )

        # The x-axis of time since the start: when each epoch reached the hub.
        page.select_option("#xaxis", "time")
        page.wait_for_function("() => location.search.includes('x=time')", timeout=WAIT_MS)
        data = requests.get(f"{session.model_url}/data.json", timeout=10).json()
        since = data["since_start"]
        assert len(since) == 10 and all(t is not None and t >= 0 for t in since)
        assert since == sorted(since)
        chart = page.evaluate(
            "(() => { const u = window.hubCharts['train/loss'];"
            " return {xs: u.data[0], label: u.axes[0].label}; })()"
        )
        assert chart["label"] == "time since the start"
        assert chart["xs"] == pytest.approx(since)
        caption = page.locator('.chart[data-metric="train/loss"] figcaption')
        sync_api.expect(caption).to_contain_text("(epoch 9)")  # epochs still named
        # Kept in the URL: opened again, the page draws time.
        page.goto(page.url)
        page.wait_for_function(
            "() => document.querySelectorAll('.uplot').length === 2", timeout=WAIT_MS
        )
        assert page.input_value("#xaxis") == "time"
        assert page.evaluate("window.hubCharts['train/loss'].axes[0].label") == (
            "time since the start"
        )
