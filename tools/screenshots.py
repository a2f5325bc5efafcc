"""Take the screenshots of the local hub's pages that the docs show.

    python -m tools.screenshots [--out docs/img] [--chromium /usr/bin/chromium]

Starts a local hub in a temporary folder, fills it with sample runs shaped like ultralytics'
(a finished one, one training, one stalled, one just created), and photographs the list of
runs, a live run, a finished run and a comparison, at desktop (1280 px) and phone (390 px)
width, with the system's Chromium driven by Playwright (``pip install -e '.[browser]'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from hubfsm.hub.server import LocalHub

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
WAIT_MS = 20_000


def _sample_runs() -> ModuleType:
    path = ROOT / "tests" / "hubfsm" / "hub" / "sample_runs.py"
    spec = importlib.util.spec_from_file_location("hub_sample_runs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _populate(local: LocalHub) -> dict[str, str]:
    runs = _sample_runs()
    ids = runs.populate(local)
    # A run whose trainer died at epoch 9: silent for longer than two heartbeat intervals.
    ids["stalled"] = runs.create(local, "yolov8n-coco8-lr-high", 50)
    runs.heartbeat(local, ids["stalled"])
    runs.send_epochs(local, ids["stalled"], range(9), 50, seed=2)
    record = local.hub.store.get_model(ids["stalled"])
    assert record is not None and record.updated_at is not None
    gone = record.updated_at - 3 * local.hub.heartbeat_interval
    from hubfsm.hub.records import evolve

    local.hub.store.put_model(
        evolve(record, started_at=gone - 9 * 40.0, updated_at=gone, heartbeat_at=gone)
    )
    return ids


def _shots(page: Any, url: str, ids: dict[str, str], out: Path, size: str) -> list[Path]:
    taken = []

    def shoot(name: str) -> None:
        path = out / f"local-hub-{name}-{size}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)

    page.goto(f"{url}/")
    page.wait_for_selector("#runs tbody tr", timeout=WAIT_MS)
    shoot("runs")
    page.evaluate(f"window.hubCompare({[ids['trained'], ids['training'], ids['stalled']]!r})")
    page.wait_for_selector("#compare-chart .uplot", timeout=WAIT_MS)
    page.select_option("#compare-metric", ["metrics/mAP50-95(B)", "val/box_loss"])
    page.wait_for_function(
        "() => document.querySelectorAll('#compare-chart .uplot').length === 2", timeout=WAIT_MS
    )
    page.locator("#compare").scroll_into_view_if_needed()
    path = out / f"local-hub-compare-{size}.png"
    page.locator("#compare").screenshot(path=str(path))
    taken.append(path)
    for name, key in (("live", "training"), ("finished", "trained")):
        page.goto(f"{url}/models/{ids[key]}?smooth=0.6")
        page.wait_for_selector(".uplot", timeout=WAIT_MS)
        shoot(name)
    return taken


def main(argv: list[str] | None = None) -> int:
    """Write the screenshots; print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data, LocalHub(data) as local, sync_playwright() as pw:
        ids = _populate(local)
        browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
        try:
            for size, viewport in SIZES.items():
                context = browser.new_context(viewport=viewport, is_mobile=size == "phone")
                try:
                    for path in _shots(context.new_page(), local.url, ids, args.out, size):
                        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
                finally:
                    context.close()
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
