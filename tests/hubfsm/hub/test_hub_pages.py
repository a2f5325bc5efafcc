"""The local hub's pages over HTTP: what they say, the JSON they poll, what they serve."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import requests

from hubfsm.hub import ModelRecord, page
from hubfsm.hub.server import LocalHub

TIMEOUT = 10


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def test_a_training_run_shows_progress_and_a_stale_checkpoint(
    local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    model_id = ids["training"]
    data = requests.get(f"{local.url}/models/{model_id}/data.json", timeout=TIMEOUT).json()
    summary = data["summary"]
    # 15 epochs of metrics, a checkpoint of epoch 0 only (the client's 900 s limit).
    assert data["record"]["last_epoch"] == 14
    assert data["record"]["checkpoint_epoch"] == 0
    assert summary["progress"] == "epoch 15 of 40"
    assert summary["percent"] == 37.5
    assert summary["elapsed"] != "-" and summary["eta"] not in ("-", "finished")
    assert summary["heartbeat"].endswith("ago")
    assert summary["agent"] == "python-3.11.7-local"
    assert summary["best"]["name"] == "metrics/mAP50-95(B)"
    assert "last.pt is from epoch 0" in summary["stale"] and "epoch 14" in summary["stale"]
    (weights,) = data["weights"]
    assert (weights["file"], weights["epoch"], weights["size"]) == ("epoch-0.pt", 0, 200_000)
    assert weights["sha256"] == hashlib.sha256(b"ckpt" * 50_000).hexdigest()
    assert len(data["metrics"]) == 15

    html = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT).text
    assert "epoch 15 of 40" in html
    assert "last.pt is from epoch 0" in html
    assert "epoch-0.pt" in html and "195.3 KiB" in html
    assert f'href="/models/{model_id}/weights/last.pt"' in html
    assert "python-3.11.7-local" in html
    assert "last_epoch 0" not in html
    download = requests.get(f"{local.url}/models/{model_id}/weights/last.pt", timeout=TIMEOUT)
    assert hashlib.sha256(download.content).hexdigest() == weights["sha256"]
    head = requests.head(f"{local.url}/models/{model_id}/weights/last.pt", timeout=TIMEOUT)
    assert head.status_code == 200 and head.headers["Content-Length"] == "200000"

    trained = requests.get(f"{local.url}/models/{ids['trained']}/data.json", timeout=10).json()
    assert trained["summary"]["eta"] == "finished"
    assert trained["summary"]["stale"] is None
    assert {w["file"] for w in trained["weights"]} == {"epoch-29.pt", "best.pt"}


def test_the_front_page_lists_runs_with_status_progress_and_best(
    local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    html = requests.get(f"{local.url}/", timeout=TIMEOUT).text
    for model_id in ids.values():
        assert f'href="/models/{model_id}"' in html
        assert f'class="pick" value="{model_id}"' in html
    assert "epoch 30 of 30" in html and "epoch 15 of 40" in html and "epoch 0 of 100" in html
    assert 'data-sort="best"' in html and 'id="filter"' in html and 'id="compare"' in html
    runs = requests.get(f"{local.url}/runs.json", timeout=TIMEOUT).json()["runs"]
    assert [r["record"]["id"] for r in runs] == [ids["new"], ids["training"], ids["trained"]]
    assert runs[2]["summary"]["best"]["value"] > 0.4


def test_static_files_are_served_from_the_package(local: LocalHub) -> None:
    js = requests.get(f"{local.url}/static/uplot.iife.min.js", timeout=TIMEOUT)
    assert js.status_code == 200 and "uPlot" in js.text
    assert js.headers["Content-Type"].startswith("text/javascript")
    licence = requests.get(f"{local.url}/static/uplot.LICENSE", timeout=TIMEOUT).text
    assert "MIT" in licence
    assert requests.get(f"{local.url}/static/../server.py", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{local.url}/static/other.js", timeout=TIMEOUT).status_code == 404
    assert requests.post(f"{local.url}/", timeout=TIMEOUT).status_code == 405


def test_page_text_is_escaped(local: LocalHub, sample_runs: ModuleType) -> None:
    model_id = sample_runs.create(local, "<script>alert(1)</script>", 3)
    html = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT).text
    assert "<script>alert(1)" not in html
    index = requests.get(f"{local.url}/", timeout=TIMEOUT).text
    assert "<script>alert(1)" not in index
    assert "\\u003cscript>alert(1)\\u003c/script>" in index  # in the page's JSON


def test_summary_of_a_run_without_anything_yet() -> None:
    record = {"id": "a" * 20, "status": "new", "epochs": None, "last_epoch": None}
    summary = page.summarize(record, [], 0.0)
    assert summary["progress"] == "epoch 0"
    assert (summary["elapsed"], summary["heartbeat"], summary["best_text"]) == ("-", "never", "-")
    assert page.duration(3725) == "1 h 02 min" and page.duration(65) == "1 min 05 s"
    assert page.size(200_000) == "195.3 KiB"


def test_a_record_stored_with_huge_integers_does_not_break_the_pages(local: LocalHub) -> None:
    # As a hub that did not bound integers yet kept them: a 401-digit epochs, checkpoint and
    # final epochs past any count, and a metric no double holds.
    huge = int("9" * 401)
    record = ModelRecord(
        id="H" * 20,
        name="huge",
        created_at=1.7e9,
        cfg="yolov8n.yaml",
        epochs=huge,
        imgsz=(huge, 640),
        batch_size=-huge,
        status="training",
        last_epoch=huge,
        has_last_weights=True,
        metrics_epoch=3,
        started_at=1.7e9,
        updated_at=1.7e9 + 60,
    )
    local.hub.store.put_model(record)
    local.hub.store.put_metrics(record.id, {3: f'{{"metrics/mAP50-95(B)": {huge}, "loss": 0.5}}'})
    for path in ("/", "/runs.json", f"/models/{record.id}", f"/models/{record.id}/data.json"):
        answer = requests.get(f"{local.url}{path}", timeout=TIMEOUT)
        assert answer.status_code == 200, (path, answer.text[:200])
    summary = requests.get(f"{local.url}/runs.json", timeout=TIMEOUT).json()["runs"][0]["summary"]
    # The counts it cannot use are left out (the latest epoch seen is the huge one).
    assert summary["progress"] == "epoch 0" and summary["percent"] == 0.0
    assert summary["best"] is None and summary["stale"] is None
    assert summary["eta"] == "-"


def test_summary_arithmetic_is_total() -> None:
    record = {"id": "a" * 20, "status": "training", "epochs": 2**53 - 1, "last_epoch": 0,
              "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:01:00Z"}
    summary = page.summarize(record, [{"epoch": 0, "metrics": {"metrics/x": 10**400}}], 1.8e9)
    assert summary["progress"] == f"epoch 1 of {2**53 - 1}"
    assert summary["eta"].endswith("min") and summary["best"] is None
    for value in (float("inf"), float("nan")):
        assert page.duration(value) == "-"
    assert page.dumps({"n": 10**5000, "x": float("nan")}) == '{"n": null, "x": null}'
