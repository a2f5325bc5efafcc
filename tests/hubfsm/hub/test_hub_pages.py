"""The local hub's pages over HTTP: what they say, the JSON they poll, what they serve."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import requests

import hubfsm
from hubfsm.hub.server import LocalHub
from hubfsm.hub.stored import ModelRecord
from hubfsm.hub.summary import dumps, duration, seconds_of, size, summarize
from tests.support import FAST

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
    # Every client keeps to the limit, hubfsm's too: the note blames none of them.
    assert summary["stale"].endswith(": trainers upload a checkpoint at most every 900 s.")
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
    summary = summarize(record, [], 0.0)
    assert summary["progress"] == "epoch 0"
    assert (summary["elapsed"], summary["heartbeat"], summary["best_text"]) == ("-", "never", "-")
    assert duration(3725) == "1 h 02 min" and duration(65) == "1 min 05 s"
    assert size(200_000) == "195.3 KiB"


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
    # The mAP no float holds is left out: the one usable metric, a loss, is the best shown.
    assert summary["best"] == {"name": "loss", "value": 0.5, "epoch": 3}
    assert summary["stale"] is None
    # Silent since 2023: stalled, with its clocks stopped at its last sign of life.
    assert (summary["state"], summary["eta"], summary["elapsed"]) == (
        "stalled",
        "stopped",
        "1 min 00 s",
    )


@pytest.mark.parametrize(
    ("protocol", "epochs", "said"),
    [
        # ultralytics counts from 0: epochs lost from the start of a Platform run are named.
        ("platform", [3, 4, 5], "no metrics arrived for epochs 0–2 (3 of 6)"),
        ("platform", [0, 1, 4, 7, 8], "no metrics arrived for epochs 2–3, 5–6 (4 of 9)"),
        ("platform", [0, 1, 2], None),
        # A loop of one's own may count from 1, or log every fifth epoch from 5: only holes
        # after its first epoch are named.
        ("hub", [1, 2, 3], None),
        ("hub", [1, 2, 5], "no metrics arrived for epochs 3–4 (2 of 5)"),
        ("hub", [], None),
    ],
)
def test_epochs_that_never_arrived_are_named_from_where_the_trainer_counts(
    protocol: str, epochs: list[int], said: str | None
) -> None:
    record = {"id": "a" * 20, "status": "training", "protocol": protocol}
    metrics = [{"epoch": e, "metrics": {"metrics/x": 0.1}} for e in epochs]
    assert summarize(record, metrics, 1.8e9)["missing"] == said


def test_summary_arithmetic_is_total() -> None:
    record = {
        "id": "a" * 20,
        "status": "training",
        "epochs": 2**53 - 1,
        "last_epoch": 0,
        "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:01:00Z",
    }
    metrics = [{"epoch": 0, "metrics": {"metrics/x": 10**400}}]
    summary = summarize(record, metrics, 1.8e9, stall_after=float("inf"))
    assert summary["progress"] == f"epoch 1 of {2**53 - 1}"
    assert summary["eta"].endswith("min") and summary["best"] is None
    for value in (float("inf"), float("nan")):
        assert duration(value) == "-"
    assert dumps({"n": 10**5000, "x": float("nan")}) == '{"n": null, "x": null}'


def test_a_silent_run_is_stalled_and_a_finished_one_counts_the_epochs_it_ran() -> None:
    record = {
        "id": "a" * 20,
        "status": "training",
        "epochs": 300,
        "last_epoch": 2,
        "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:01:00Z",
        "heartbeat_at": "2026-01-01T00:01:30Z",
    }
    beat = seconds_of(record["heartbeat_at"])
    assert beat is not None
    alive = summarize(record, [], beat + 599, stall_after=600)
    assert (alive["state"], alive["elapsed"]) == ("training", "11 min 29 s")
    silent = summarize(record, [], beat + 601, stall_after=600)
    # Stopped at its last sign of life, however long the page stays open.
    assert (silent["state"], silent["eta"], silent["elapsed"]) == (
        "stalled",
        "stopped",
        "1 min 30 s",
    )
    assert summarize(record, [], beat + 9999, stall_after=600)["elapsed"] == "1 min 30 s"
    assert silent["status"] == "training"  # the API's status is left as the client reads it

    done = {**record, "status": "trained", "final_epoch": 2, "has_best_weights": True}
    summary = summarize(done, [], beat + 9999)
    assert (summary["state"], summary["percent"]) == ("trained", 100.0)
    assert summary["progress"] == "epoch 3 of 3 (300 planned)"


def test_the_best_value_names_its_metric_and_direction() -> None:
    metrics = [
        {"epoch": 0, "metrics": {"train/loss": 0.9, "metrics/accuracy_top1": 0.5}},
        {"epoch": 1, "metrics": {"train/loss": 0.4, "metrics/accuracy_top1": 0.7}},
        {"epoch": 2, "metrics": {"train/loss": 0.6, "metrics/accuracy_top1": 0.7}},
    ]
    summary = summarize({"id": "a" * 20, "status": "training"}, metrics, 0.0)
    assert summary["best"] == {"name": "metrics/accuracy_top1", "value": 0.7, "epoch": 1}
    assert summary["best_label"] == "best accuracy_top1"
    assert summary["better"] == "higher is better"
    loss = summary["stats"]["train/loss"]
    assert (loss["best"], loss["best_epoch"], loss["last"], loss["better"]) == (
        0.4,
        1,
        0.6,
        "lower",
    )


def test_downloads_are_named_after_the_run_and_empty_pages_say_what_to_do(
    local: LocalHub, sample_runs: ModuleType
) -> None:
    empty = requests.get(f"{local.url}/", timeout=TIMEOUT).text
    assert f"export ULTRALYTICS_HUB_API={local.url}" in empty and "api_key" in empty
    assert local.api_key not in empty
    ids = sample_runs.populate(local)
    trained = ids["trained"]
    reply = requests.get(f"{local.url}/models/{trained}/weights/best.pt", timeout=TIMEOUT)
    disposition = reply.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="yolov8n-coco8-baseline-best.pt"'
    html = requests.get(f"{local.url}/models/{trained}", timeout=TIMEOUT).text
    assert 'download="yolov8n-coco8-baseline-best.pt"' in html
    # What the trainer reported with its final weights is shown beside the best epoch.
    assert '<div data-field="record.map">0.46</div>' in html
    assert "<noscript>" in html and 'id="metrics-table"' in html
    assert "wire format carries data, epochs" in html  # said, not silently dropped
    csv_reply = requests.get(f"{local.url}/models/{trained}/metrics.csv", timeout=TIMEOUT)
    assert csv_reply.headers["Content-Type"].startswith("text/csv")
    assert len(csv_reply.text.splitlines()) == 31  # a header and thirty epochs


def test_every_training_argument_a_session_gives_is_kept_shown_and_counted(
    local: LocalHub, tmp_path: Path
) -> None:
    given = {"data": "coco8.yaml", "lr0": 0.02, "mosaic": 0.5, "batch": 8}
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"final weights")
    with hubfsm.Session(
        "yolov8n.yaml",
        api_key=local.api_key,
        api_root=local.url,
        train_args=given,
        config=FAST,
        outbox_dir=tmp_path / "outbox",
        name="baseline lr 0.02",
        tags=["seed=7", " sweep ", "seed=7"],
        notes="first try",
    ) as session:
        model_id = session.model_id
        for k in range(3):
            session.log_metrics({"train/loss": 1.0 - k / 10}, epoch=k)
        session.finish(weights, map50_95=0.3)
    data = requests.get(f"{local.url}/models/{model_id}/data.json", timeout=TIMEOUT).json()
    record = data["record"]
    assert record["params"] == given  # the lr and mosaic too, and no default added
    assert (record["name"], record["tags"], record["notes"]) == (
        "baseline lr 0.02",
        ["seed=7", "sweep"],
        "first try",
    )
    # The wire's record is as the official client makes it (its 300 epochs default) ...
    assert record["epochs"] == 300 and record["train_args"]["batch"] == 8
    # ... but the run never planned 300 epochs: it ran 3 and is over.
    assert data["summary"]["progress"] == "epoch 3 of 3"
    assert data["summary"]["percent"] == 100.0
    html = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT).text
    rows = re.findall(r'<tr data-how="([^"]+)"><th>([^<]+)</th>', html)
    how = {name: kind for kind, name in rows}
    assert how == {
        "data": "wire",
        "lr0": "hub only",
        "mosaic": "hub only",
        "batch": "wire",
        "epochs": "HUB default",
        "imgsz": "HUB default",
        "patience": "HUB default",
        "device": "HUB default",
        "cache": "HUB default",
    }
    cells = dict(re.findall(r'<tr data-how="[^"]+"><th>([^<]+)</th><td>([^<]*)</td>', html))
    assert (cells["data"], cells["lr0"]) == ("coco8.yaml", "0.02")  # text bare, numbers JSON


def test_a_platform_runs_arguments_are_all_on_its_wire_and_shown_as_its_trainer_wrote_them(
    local: LocalHub, tmp_path: Path
) -> None:
    from hubfsm.hub.keys import new_platform_key

    key = new_platform_key()
    local.hub.add_key(key, "laptop")
    args = {"name": "run1", "epochs": 2, "lr0": 0.01, "amp": True, "fraction": None}
    session = hubfsm.Session("alice/birds", api_key=key, api_root=local.url, config=FAST,
                             outbox_dir=tmp_path / "outbox", protocol="platform",
                             train_args=args)  # fmt: skip
    session.start()
    session.log_metrics({"loss": 1.0}, epoch=0)
    assert session.flush(timeout=TIMEOUT)
    model_id = session.model_id
    session.close(timeout=5.0)
    html = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT).text
    rows = re.findall(r'<tr data-how="([^"]+)"><th>([^<]+)</th><td>([^<]*)</td>', html)
    # The Platform wire sends every argument, as the trainer's text: no "hub only", and
    # no quotes around each value, which made every one read as a string literal.
    assert {name: (how, shown) for how, name, shown in rows} == {
        "name": ("wire", "run1"),
        "epochs": ("wire", "2"),
        "lr0": ("wire", "0.01"),
        "amp": ("wire", "True"),
        "fraction": ("wire", "None"),
    }
    assert "Platform wire carries every training argument" in html
    assert "HUB v1 wire format" not in html


def test_a_run_still_training_without_planned_epochs_shows_no_total() -> None:
    record = {"id": "a" * 20, "status": "training", "epochs": 300, "last_epoch": 4}
    assert summarize(record, [], 0.0)["progress"] == "epoch 5 of 300"
    told = {**record, "params": {"data": "coco8.yaml"}}
    assert summarize(told, [], 0.0)["progress"] == "epoch 5"
    planned = {**record, "params": {"epochs": 10}}
    summary = summarize(planned, [], 0.0)
    assert (summary["progress"], summary["percent"]) == ("epoch 5 of 10", 50.0)


def test_a_run_is_renamed_tagged_noted_and_deleted_with_the_key_from_its_own_pages(
    local: LocalHub, sample_runs: ModuleType
) -> None:
    model_id = sample_runs.populate(local)["trained"]
    url = f"{local.url}/models/{model_id}"
    key = {"x-api-key": local.api_key}
    change = {"name": "baseline", "tags": ["seed=3", "keep"], "notes": "the one to beat"}
    # Without the key, with a wrong one, or from another site's page: nothing changes.
    assert requests.post(f"{url}/annotate", json=change, timeout=TIMEOUT).status_code == 401
    wrong = {"x-api-key": "x" * 42}
    reply = requests.post(f"{url}/annotate", json=change, headers=wrong, timeout=TIMEOUT)
    assert reply.status_code == 401
    elsewhere = {**key, "Origin": "http://evil.example"}
    reply = requests.post(f"{url}/annotate", json=change, headers=elsewhere, timeout=TIMEOUT)
    assert reply.status_code == 403
    cross = {**key, "Sec-Fetch-Site": "cross-site"}
    reply = requests.post(f"{url}/annotate", json=change, headers=cross, timeout=TIMEOUT)
    assert reply.status_code == 403
    assert requests.get(f"{url}/data.json", timeout=TIMEOUT).json()["record"]["tags"] == []
    # A bad value or an unknown field is refused whole.
    for bad in ({"name": ""}, {"tags": "x"}, {"owner": "me"}, {"notes": 5}):
        reply = requests.post(f"{url}/annotate", json=bad, headers=key, timeout=TIMEOUT)
        assert reply.status_code == 400
    form = requests.post(f"{url}/annotate", data="name=x", headers=key, timeout=TIMEOUT)
    assert form.status_code == 415

    same = {**key, "Origin": local.url, "Sec-Fetch-Site": "same-origin"}
    reply = requests.post(f"{url}/annotate", json=change, headers=same, timeout=TIMEOUT)
    assert reply.status_code == 200 and reply.json()["name"] == "baseline"
    record = requests.get(f"{url}/data.json", timeout=TIMEOUT).json()["record"]
    assert (record["name"], record["tags"], record["notes"]) == (
        "baseline",
        ["seed=3", "keep"],
        "the one to beat",
    )
    index = requests.get(f"{local.url}/", timeout=TIMEOUT).text
    assert 'data-tags="seed=3 keep"' in index and '<span class="tag">keep</span>' in index
    # Only what is named changes.
    requests.post(f"{url}/annotate", json={"notes": ""}, headers=key, timeout=TIMEOUT)
    record = requests.get(f"{url}/data.json", timeout=TIMEOUT).json()["record"]
    assert (record["name"], record["notes"]) == ("baseline", None)

    assert requests.post(f"{url}/delete", timeout=TIMEOUT).status_code == 401
    assert requests.post(f"{url}/delete", headers=key, timeout=TIMEOUT).json() == {
        "deleted": model_id
    }
    assert requests.get(url, timeout=TIMEOUT).status_code == 404
    assert requests.post(f"{url}/delete", headers=key, timeout=TIMEOUT).status_code == 404
    assert requests.put(f"{url}/delete", headers=key, timeout=TIMEOUT).status_code == 405


def test_another_keys_run_cannot_be_changed(tmp_path: Path) -> None:
    from hubfsm.hub.domain import Hub
    from hubfsm.hub.store import MemoryStore

    hub = Hub(MemoryStore(), keys=["A" * 42, "B" * 42])
    mine = ModelRecord(id="m" * 20, name="n", created_at=1.0, cfg="y.yaml", owner="nobody")
    hub.store.put_model(mine)
    who = hub.principal("A" * 42)
    assert who is not None
    assert hub.annotate(mine.id, who, {"name": "x"}) is None
    assert hub.remove(mine.id, who) is False
    assert hub.store.get_model(mine.id) == mine


def _beat(local: LocalHub, model_id: str, extra: object = None) -> requests.Response:
    body: dict[str, object] = {"agent": "python-3.11.7-local", "agentId": None}
    if extra is not None:
        body["hubfsm"] = extra
    return requests.post(
        f"{local.url}/v1/agent/heartbeat/models/{model_id}",
        json=body,
        headers={"x-api-key": local.api_key},
        timeout=TIMEOUT,
    )


def test_a_run_its_session_says_was_interrupted_shows_so_until_it_beats_again(
    local: LocalHub, sample_runs: ModuleType
) -> None:
    ids = sample_runs.populate(local)
    training = ids["training"]
    for bad in ({"ended": "paused", "reason": "x"}, {"ended": "interrupted"}, "stop"):
        assert _beat(local, training, bad).status_code == 400
    assert _beat(local, training, {"ended": "interrupted", "reason": "SIGTERM"}).ok
    data = requests.get(f"{local.url}/models/{training}/data.json", timeout=TIMEOUT).json()
    summary = data["summary"]
    assert data["record"]["interrupted_by"] == "SIGTERM"
    assert (summary["state"], summary["eta"], summary["ended"]) == (
        "interrupted",
        "stopped",
        "interrupted: SIGTERM",
    )
    assert summary["progress"] == "stopped after epoch 15 of 40"
    assert data["record"]["status"] == "training"  # the API's status, as clients read it
    html = requests.get(f"{local.url}/", timeout=TIMEOUT).text
    assert f'data-id="{training}"' in html and 'data-status="interrupted"' in html
    assert "<option>interrupted</option>" in html
    # The clock stopped when the session said so.
    record = data["record"]
    later = summarize(record, [], seconds_of(record["interrupted_at"]) + 3600)
    assert later["elapsed"] == summary["elapsed"]
    # A heartbeat without the note: the run goes on (resumed).
    assert _beat(local, training).ok
    again = requests.get(f"{local.url}/models/{training}/data.json", timeout=TIMEOUT).json()
    assert again["summary"]["state"] == "training" and again["record"]["interrupted_by"] is None
    # A trained run is never interrupted.
    assert _beat(local, ids["trained"], {"ended": "interrupted", "reason": "Ctrl-C"}).ok
    done = requests.get(f"{local.url}/models/{ids['trained']}/data.json", timeout=10).json()
    assert done["summary"]["state"] == "trained" and done["record"]["interrupted_at"] is None
