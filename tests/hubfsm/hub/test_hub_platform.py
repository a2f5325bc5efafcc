"""The local hub's Platform API over loopback HTTP, in the shapes ultralytics 8.4 sends.

The request bodies are those of ``ultralytics/utils/callbacks/platform.py`` (8.4.190) and
the ``ultralytics-platform`` SDK (0.1.99): ``{modelId | project + name, event, data}`` to
``/api/webhooks/training/metrics``, ``{filename, modelId, runId}`` to
``/api/webhooks/models/upload``, the raw file PUT to the signed ``uploadUrl``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from hubfsm.hub import admin
from hubfsm.hub.keys import UrlSigner, is_platform_key, load_or_create_secret, new_platform_key
from hubfsm.hub.server import LocalHub

TIMEOUT = 10
_LOAD = itertools.count()
METRICS = "/api/webhooks/training/metrics"
UPLOAD = "/api/webhooks/models/upload"
TRAIN_ARGS = {
    "model": "yolov8n.yaml",
    "data": "coco8.yaml",
    "epochs": "3",
    "batch": "16",
    "imgsz": "32",
    "patience": "100",
    "device": "cpu",
    "project": "alice/birds",
    "name": "train",
    "resume": "False",
}


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


@pytest.fixture
def key(local: LocalHub) -> str:
    made = new_platform_key()
    local.hub.add_key(made, "platform")
    return made


def post(local: LocalHub, key: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{local.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    )


def event(
    local: LocalHub, key: str, name: str, data: dict[str, Any], model_id: str | None
) -> dict[str, Any]:
    reply = post(local, key, METRICS, {"modelId": model_id, "event": name, "data": data})
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    assert body["received"] is True and body["event"] == name
    return body


def start(
    local: LocalHub, key: str, project: str = "alice/birds", name: str = "train"
) -> dict[str, Any]:
    # Each run reports the machine's load at its start, so no two runs' bodies are equal.
    system = {"cpu": float(next(_LOAD))}
    data = {"trainArgs": TRAIN_ARGS, "epochs": 3, "device": "cpu", "system": system}
    body = {"project": project, "name": name, "event": "training_started", "data": data}
    reply = post(local, key, METRICS, body)
    assert reply.status_code == 200, reply.text
    started: dict[str, Any] = reply.json()
    return started


def epoch_end(local: LocalHub, key: str, model_id: str, epoch: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "epoch": epoch,
        "metrics": {
            "train/box_loss": 1.5 - epoch / 10,
            "metrics/mAP50-95(B)": 0.1 * (epoch + 1),
            "val/cls_loss": None,  # the client sends a non-finite loss as null
            "lr": 0.01,
        },
        "system": {"cpu": 12.5},
        "fitness": 0.1 * (epoch + 1),
        "best_fitness": 0.1 * (epoch + 1),
    }
    if epoch == 0:
        data["modelInfo"] = {"parameters": 3011043, "gflops": 8.2, "speedMs": 1.5}
    return event(local, key, "epoch_end", data, model_id)


def upload(local: LocalHub, key: str, model_id: str, run_id: int, content: bytes) -> dict:
    reply = post(local, key, UPLOAD, {"filename": "best.pt", "modelId": model_id, "runId": run_id})
    assert reply.status_code == 200, reply.text
    slot: dict[str, Any] = reply.json()
    assert set(slot) >= {"uploadUrl", "gcsPath", "uploadPath"}
    put = requests.put(
        slot["uploadUrl"],
        data=content,
        headers={"Content-Type": "application/octet-stream"},
        timeout=TIMEOUT,
    )
    assert put.status_code == 200, put.text
    return slot


def saved(local: LocalHub, key: str, model_id: str, run_id: int, slot: dict) -> dict:
    data = {"modelPath": slot["gcsPath"], "runId": run_id, "uploadPath": slot["uploadPath"]}
    return event(local, key, "checkpoint_saved", data, model_id)


def runs(local: LocalHub) -> list[dict[str, Any]]:
    reply = requests.get(f"{local.url}/runs.json", timeout=TIMEOUT)
    assert reply.status_code == 200
    return list(reply.json()["runs"])


def test_platform_keys_are_ul_and_forty_hex() -> None:
    made = new_platform_key()
    assert made.startswith("ul_") and len(made) == 43 and is_platform_key(made)
    assert int(made[3:], 16) >= 0
    assert not is_platform_key("ul_" + "G" * 40)
    assert not is_platform_key("A" * 42)


def test_account_summary_answers_a_valid_key_and_refuses_others(local: LocalHub, key: str) -> None:
    url = f"{local.url}/api/account/summary"
    good = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT)
    assert good.status_code == 200
    summary = good.json()
    assert summary["username"] == "local" and summary["counts"]["models"] == 0
    assert set(summary) >= {"name", "accountType", "plan", "creditsCents", "teams"}
    unknown = requests.get(
        url, headers={"Authorization": f"Bearer {new_platform_key()}"}, timeout=TIMEOUT
    )
    assert unknown.status_code == 401 and "error" in unknown.json()
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    # The hub's HUB key is valid on /v1 but is not a Platform key, nor is x-api-key the header.
    hub_key = requests.get(
        url, headers={"Authorization": f"Bearer {local.api_key}"}, timeout=TIMEOUT
    )
    assert hub_key.status_code == 401
    # It says so: a user who exported the HUB key where the ul_ key goes learns which.
    assert hub_key.json()["error"] == (
        "Invalid API key for Platform, a HUB key: the Platform API takes a ul_ key "
        "(`hubfsm hub keys add --platform`)"
    )
    assert local.api_key not in hub_key.text
    assert unknown.json()["error"] == "Invalid or missing API key"
    assert requests.get(url, headers={"x-api-key": key}, timeout=TIMEOUT).status_code == 401


def test_a_revoked_platform_key_gets_401_on_every_endpoint(local: LocalHub, key: str) -> None:
    started = start(local, key)
    local.hub.revoke_key(key)
    for path, body in (
        (METRICS, {"modelId": started["modelId"], "event": "epoch_end", "data": {"epoch": 0}}),
        (UPLOAD, {"filename": "best.pt", "modelId": started["modelId"]}),
    ):
        assert post(local, key, path, body).status_code == 401
    files = f"{local.url}/api/models/alice/birds/train/files"
    reply = requests.get(files, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT)
    assert reply.status_code == 401


def test_a_whole_run_lands_as_a_model_with_metrics_checkpoint_and_final_weights(
    local: LocalHub, key: str
) -> None:
    started = start(local, key)
    model_id, run_id = started["modelId"], started["runId"]
    assert isinstance(run_id, int) and started["cancelled"] is False
    assert started["modelSlug"] == "train"
    assert started["modelUrl"] == f"{local.url}/models/{model_id}"
    for epoch in range(3):
        assert epoch_end(local, key, model_id, epoch)["cancelled"] is False
    checkpoint = b"checkpoint bytes " * 1000
    slot = upload(local, key, model_id, run_id, checkpoint)
    assert saved(local, key, model_id, run_id, slot)["modelId"] == model_id
    record = local.hub.record(model_id)
    assert record is not None and record["has_last_weights"] and record["status"] == "training"
    final = b"final weights " * 2000
    slot = upload(local, key, model_id, run_id, final)
    saved(local, key, model_id, run_id, slot)
    results = {
        "metrics": {"metrics/mAP50-95(B)": 0.3, "fitness": 0.3},
        "bestEpoch": 2,
        "bestFitness": 0.3,
        "modelPath": slot["gcsPath"],
        "modelSize": len(final),
    }
    complete = {"results": results, "classNames": ["bird"], "plots": [], "runId": run_id}
    event(local, key, "training_complete", complete, model_id)
    # The final validation's epoch_end may come after the complete event (a thread pool).
    epoch_end(local, key, model_id, 3)

    record = local.hub.record(model_id)
    assert record is not None
    assert record["status"] == "trained" and record["has_best_weights"]
    assert record["protocol"] == "platform" and record["project"] == "alice/birds"
    assert record["final_epoch"] == 2 and record["map"] == 0.3
    assert record["cfg"] == "yolov8n.yaml" and record["epochs"] == 3 and record["imgsz"] == 32
    best = local.hub.weights(model_id, "best")
    assert best is not None and best[0].sha256 == hashlib.sha256(final).hexdigest()
    last = local.hub.weights(model_id, "last")
    assert last is not None and last[0].size == len(final)
    metrics = {row["epoch"]: row["metrics"] for row in local.hub.metrics(model_id)}
    assert sorted(metrics) == [0, 1, 2, 3]
    assert metrics[0]["model/parameters"] == 3011043 and metrics[0]["val/cls_loss"] is None
    assert "model/parameters" not in metrics[1]

    # The run shows in runs.json like a HUB run, with its progress from the metrics.
    (row,) = [r for r in runs(local) if r["record"]["id"] == model_id]
    assert row["summary"]["status"] == "trained" and row["summary"]["done"] == 3
    assert row["summary"]["best"]["name"] == "metrics/mAP50-95(B)"
    page = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT)
    assert page.status_code == 200 and "alice/birds" in page.text

    files = requests.get(
        f"{local.url}/api/models/alice/birds/train/files",
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    )
    assert files.status_code == 200, files.text
    listed = files.json()["files"]
    assert listed[0]["name"] == "best.pt" and listed[0]["size"] == len(final)
    download = requests.get(listed[0]["downloadUrl"], timeout=TIMEOUT)
    assert download.status_code == 200 and download.content == final


def test_uploads_answered_200_are_promoted_after_the_hub_restarts(tmp_path: Path) -> None:
    # The PUT was answered 200, then the hub stopped before the event that promotes it.
    # Before, the staged file went with the process: checkpoint_saved got 404, and
    # training_complete marked the model trained without its final weights.
    key = new_platform_key()
    with LocalHub(tmp_path / "hub") as first:
        first.hub.add_key(key, "platform")
        started = start(first, key)
        model_id, run_id = started["modelId"], started["runId"]
        epoch_end(first, key, model_id, 0)
        checkpoint, final = b"checkpoint " * 500, b"final " * 700
        slot = upload(first, key, model_id, run_id, checkpoint)
        final_slot = upload(first, key, model_id, run_id, final)
    with LocalHub(tmp_path / "hub") as again:
        assert saved(again, key, model_id, run_id, slot)["modelId"] == model_id
        found = again.hub.weights(model_id, "last")
        assert found is not None and read_all(found[1]) == checkpoint
        results = {"metrics": {"metrics/mAP50-95(B)": 0.3}, "modelPath": final_slot["gcsPath"]}
        event(again, key, "training_complete", {"results": results, "runId": run_id}, model_id)
        best = again.hub.weights(model_id, "best")
        assert best is not None and read_all(best[1]) == final
        assert best[0].sha256 == hashlib.sha256(final).hexdigest()
        assert list((tmp_path / "hub" / "weights" / ".staging").iterdir()) == []


def read_all(content: Any) -> bytes:
    if isinstance(content, bytes):
        return content
    with content:
        data: bytes = content.read()
        return data


def test_epochs_that_never_arrived_are_named_on_the_run_page(local: LocalHub, key: str) -> None:
    # ultralytics 8.4 sends each epoch once: those it sent while the hub was down are gone.
    # Before, the page said "epoch 12 of 12" and showed no sign of the hole in the metrics.
    model_id = start(local, key)["modelId"]
    for epoch in [0, 1, 2, 7, 9, 10, 11]:
        epoch_end(local, key, model_id, epoch)
    said = "no metrics arrived for epochs 3–6, 8 (5 of 12)"
    data = requests.get(f"{local.url}/models/{model_id}/data.json", timeout=TIMEOUT).json()
    assert data["summary"]["missing"] == said
    page = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT).text
    assert f'data-field="summary.missing">{said}</p>' in page
    # A run with every epoch says nothing of the kind.
    whole = start(local, key, name="whole")["modelId"]
    for epoch in range(3):
        epoch_end(local, key, whole, epoch)
    data = requests.get(f"{local.url}/models/{whole}/data.json", timeout=TIMEOUT).json()
    assert data["summary"]["missing"] is None
    page = requests.get(f"{local.url}/models/{whole}", timeout=TIMEOUT).text
    assert 'data-field="summary.missing"></p>' in page


def test_runs_of_both_protocols_show_alike_in_the_run_list(local: LocalHub, key: str) -> None:
    created = requests.post(
        f"{local.url}/v1/models",
        json={
            "meta": {"name": "hub-run"},
            "config": {"epochs": 3},
            "lineage": {"architecture": {"name": "yolov8n"}},
        },
        headers={"x-api-key": local.api_key},
        timeout=TIMEOUT,
    )
    assert created.status_code == 200, created.text
    hub_id = created.json()["data"]["id"]
    metrics = {"0": json.dumps({"metrics/mAP50-95(B)": 0.1, "train/box_loss": 1.5})}
    sent = requests.post(
        f"{local.url}/v1/models/{hub_id}",
        json={"type": "metrics", "metrics": metrics},
        headers={"x-api-key": local.api_key},
        timeout=TIMEOUT,
    )
    assert sent.status_code == 200, sent.text
    platform_id = start(local, key)["modelId"]
    epoch_end(local, key, platform_id, 0)

    rows = {row["record"]["id"]: row for row in runs(local)}
    hub_row, platform_row = rows[hub_id], rows[platform_id]
    assert hub_row["record"]["protocol"] == "hub"
    assert platform_row["record"]["protocol"] == "platform"
    assert set(hub_row) == set(platform_row) and set(hub_row["record"]) == set(
        platform_row["record"]
    )
    for row in (hub_row, platform_row):
        assert row["summary"]["status"] == "training"
        assert row["summary"]["progress"] == "epoch 1 of 3"
        assert row["summary"]["best"]["value"] == pytest.approx(0.1)
    front = requests.get(f"{local.url}/", timeout=TIMEOUT)
    assert hub_id in front.text and platform_id in front.text


def test_a_second_run_of_the_same_name_gets_its_own_model_and_slug(
    local: LocalHub, key: str
) -> None:
    first, second = start(local, key), start(local, key)
    assert first["modelId"] != second["modelId"]
    assert (first["modelSlug"], second["modelSlug"]) == ("train", "train-2")
    # A project without an owner lands in the caller's own workspace.
    solo = start(local, key, project="my-project")
    record = local.hub.record(solo["modelId"])
    assert record is not None and record["project"] == "local/my-project"


def test_resume_with_a_known_model_id_reuses_the_model_and_opens_a_new_run(
    local: LocalHub, key: str
) -> None:
    started = start(local, key)
    epoch_end(local, key, started["modelId"], 0)
    data = {"trainArgs": {**TRAIN_ARGS, "resume": "True"}, "epochs": 3, "device": "cpu"}
    again = event(local, key, "training_started", data, started["modelId"])
    assert again["modelId"] == started["modelId"]
    assert again["runId"] == started["runId"] + 1
    assert len(local.hub.models()) == 1
    # An unknown modelId is a 404, which the client takes as "register a new model".
    missing = post(
        local, key, METRICS, {"modelId": "A" * 20, "event": "training_started", "data": data}
    )
    assert missing.status_code == 404


def test_cancellation_reaches_every_later_answer(local: LocalHub, key: str) -> None:
    started = start(local, key)
    model_id = started["modelId"]
    assert epoch_end(local, key, model_id, 0)["cancelled"] is False
    assert admin.cancel(local.data_dir, model_id) == 0  # the command, on the running hub's data
    assert epoch_end(local, key, model_id, 1)["cancelled"] is True
    chunk = {"chunkId": 1, "content": "x\n", "lineCount": 1, "progress": {}}
    assert event(local, key, "console_output", chunk, model_id)["cancelled"] is True
    # A resume of a cancelled model is told so: the client then registers a new model.
    data = {"trainArgs": TRAIN_ARGS, "epochs": 3, "device": "cpu"}
    assert event(local, key, "training_started", data, model_id)["cancelled"] is True
    assert admin.cancel(local.data_dir, "B" * 20) == 1


def test_cancelling_a_hub_run_is_refused_for_its_trainer_would_never_hear_of_it(
    local: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    # HUB v1's answers carry no cancellation: "its trainer stops" would not be true.
    created = requests.post(
        f"{local.url}/v1/models",
        json={
            "config": {"epochs": 3, "imageSize": 64},
            "dataset": {"name": "coco8.yaml"},
            "lineage": {"architecture": {"name": "yolov8n"}, "parent": {}},
            "meta": {"name": "hub-run"},
        },
        headers={"x-api-key": local.api_key},
        timeout=TIMEOUT,
    )
    model_id = created.json()["data"]["id"]

    assert admin.cancel(local.data_dir, model_id) == 1

    captured = capsys.readouterr()
    assert "Cancelled" not in captured.out
    assert f"error: model {model_id} is a HUB run" in captured.err
    assert "stop its trainer where it runs" in captured.err
    record = local.hub.record(model_id)
    assert record is not None and record["cancelled"] is False


def test_cancelling_a_trained_run_is_refused_for_no_trainer_is_left_to_stop(
    local: LocalHub, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, it said "Cancelled model ...: its trainer stops at its next event" of a run
    # that had ended, and marked the finished model cancelled.
    model_id = start(local, key)["modelId"]
    epoch_end(local, key, model_id, 0)
    complete = {"results": {"metrics": {}}, "classNames": [], "plots": [], "runId": 1}
    event(local, key, "training_complete", complete, model_id)
    assert local.hub.record(model_id)["status"] == "trained"

    assert admin.cancel(local.data_dir, model_id) == 1

    captured = capsys.readouterr()
    assert "Cancelled" not in captured.out
    assert f"error: model {model_id} has finished training: no trainer is left" in captured.err
    assert local.hub.record(model_id)["cancelled"] is False


def test_console_chunks_are_stored_once_per_chunk_id_and_shown_on_the_page(
    local: LocalHub, key: str
) -> None:
    model_id = start(local, key)["modelId"]
    first = {"chunkId": 1765000000001, "content": "Epoch 1/3\n", "lineCount": 1, "progress": {}}
    second = {"chunkId": 1765000000002, "content": "Epoch 2/3 <b>\n", "lineCount": 1}
    event(local, key, "console_output", second, model_id)
    event(local, key, "console_output", first, model_id)
    # A retry of a chunk the hub already has (its answer was lost) adds nothing.
    event(local, key, "console_output", {**first, "content": "changed\n"}, model_id)
    assert local.hub.console(model_id) == "Epoch 1/3\nEpoch 2/3 <b>\n"
    page = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT)
    assert '<pre class="console" id="console">Epoch 1/3\nEpoch 2/3 &lt;b&gt;\n</pre>' in page.text
    data = requests.get(f"{local.url}/models/{model_id}/data.json", timeout=TIMEOUT).json()
    assert data["console"] == "Epoch 1/3\nEpoch 2/3 <b>\n"


def test_a_tampered_upload_url_is_refused(local: LocalHub, key: str) -> None:
    started = start(local, key)
    body = {"filename": "best.pt", "modelId": started["modelId"], "runId": started["runId"]}
    slot = post(local, key, UPLOAD, body).json()
    for tampered in (
        slot["uploadUrl"].replace("best.pt", "last.pt"),
        slot["uploadUrl"].replace("signature=", "signature=0"),
        slot["uploadUrl"].split("?")[0],
    ):
        put = requests.put(tampered, data=b"evil", timeout=TIMEOUT)
        assert put.status_code == 403, tampered
    # Nothing was staged: promoting the slot's path finds no file.
    data = {
        "modelPath": slot["gcsPath"],
        "runId": started["runId"],
        "uploadPath": slot["uploadPath"],
    }
    refused = post(
        local,
        key,
        METRICS,
        {"modelId": started["modelId"], "event": "checkpoint_saved", "data": data},
    )
    assert refused.status_code == 404


def test_an_expired_upload_url_is_refused(local: LocalHub, key: str) -> None:
    started = start(local, key)
    body = {"filename": "best.pt", "modelId": started["modelId"], "runId": started["runId"]}
    slot = post(local, key, UPLOAD, body).json()
    parts = urlsplit(slot["uploadUrl"])
    expires = int(dict(parse_qsl(parts.query))["expires"])
    assert expires > time.time()
    # The same path signed with the hub's own secret, an hour in the past: valid but expired.
    signer = UrlSigner(load_or_create_secret(local.data_dir / "url_secret"), time.time)
    stale = signer.sign(local.url, parts.path, int(time.time()) - 3600)
    put = requests.put(stale, data=b"late", timeout=TIMEOUT)
    assert put.status_code == 403 and "expired" in put.text
    fresh = signer.sign(local.url, parts.path, expires)
    assert requests.put(fresh, data=b"on time", timeout=TIMEOUT).status_code == 200


def test_checkpoint_saved_promotes_only_its_own_run_and_is_idempotent(
    local: LocalHub, key: str
) -> None:
    started = start(local, key)
    model_id, run_id = started["modelId"], started["runId"]
    slot = upload(local, key, model_id, run_id, b"ckpt")
    data = {"modelPath": slot["gcsPath"], "runId": run_id + 1, "uploadPath": slot["uploadPath"]}
    wrong_run = post(
        local, key, METRICS, {"modelId": model_id, "event": "checkpoint_saved", "data": data}
    )
    assert wrong_run.status_code == 409
    saved(local, key, model_id, run_id, slot)
    saved(local, key, model_id, run_id, slot)  # a retry after a lost answer
    info = local.hub.weights_info(model_id, "last")
    assert info is not None and info.sha256 == hashlib.sha256(b"ckpt").hexdigest()
    # An upload slot for a run that is not the model's is refused up front.
    stale = post(local, key, UPLOAD, {"filename": "best.pt", "modelId": model_id, "runId": 99})
    assert stale.status_code == 409


def test_another_keys_model_is_not_found(local: LocalHub, key: str) -> None:
    started = start(local, key)
    other = new_platform_key()
    local.hub.add_key(other, "other")
    data = {"epoch": 0, "metrics": {}}
    reply = post(
        local, other, METRICS, {"modelId": started["modelId"], "event": "epoch_end", "data": data}
    )
    assert reply.status_code == 404
    files = requests.get(
        f"{local.url}/api/models/alice/birds/train/files",
        headers={"Authorization": f"Bearer {other}"},
        timeout=TIMEOUT,
    )
    assert files.status_code == 404


def test_bad_bodies_and_routes_get_4xx_with_an_error(local: LocalHub, key: str) -> None:
    model_id = start(local, key)["modelId"]
    for body in (
        {"modelId": model_id, "event": "nonsense", "data": {}},
        {"modelId": model_id, "event": "epoch_end", "data": {"epoch": -1, "metrics": {}}},
        {"modelId": model_id, "event": "epoch_end", "data": "text"},
        {"modelId": model_id, "event": "console_output", "data": {"chunkId": "a", "content": ""}},
        {"project": "", "event": "training_started", "data": {}},
    ):
        reply = post(local, key, METRICS, body)
        assert reply.status_code == 400 and "error" in reply.json(), body
    assert post(local, key, UPLOAD, {"filename": "../x.pt", "modelId": model_id}).status_code == 400
    assert post(local, key, "/api/nothing", {}).status_code == 404
    get = requests.get(
        f"{local.url}{METRICS}", headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT
    )
    assert get.status_code == 405 and get.headers["Allow"] == "POST"


def test_an_upload_without_a_length_is_refused(local: LocalHub, key: str) -> None:
    started = start(local, key)
    body = {"filename": "best.pt", "modelId": started["modelId"], "runId": started["runId"]}
    slot = post(local, key, UPLOAD, body).json()
    put = requests.put(slot["uploadUrl"], data=iter([b"chunked"]), timeout=TIMEOUT)
    assert put.status_code == 411


def test_keys_add_can_make_a_platform_key(tmp_path: Path) -> None:
    import io

    out = io.StringIO()
    made = admin.add(tmp_path / "hub", "laptop", out, platform=True)
    assert is_platform_key(made) and made in out.getvalue()
    with LocalHub(tmp_path / "hub") as local:
        url = f"{local.url}/api/account/summary"
        reply = requests.get(url, headers={"Authorization": f"Bearer {made}"}, timeout=TIMEOUT)
        assert reply.status_code == 200 and reply.json()["name"] == "laptop"


def test_an_in_process_hub_takes_the_same_calls_without_http() -> None:
    from hubfsm.hub.calls import HubCall
    from hubfsm.hub.domain import Hub
    from hubfsm.hub.store import MemoryStore

    made = new_platform_key()
    hub = Hub(MemoryStore(), clock=lambda: 1000.0, keys=[made])
    data = {"trainArgs": TRAIN_ARGS, "epochs": 3, "device": "cpu"}
    body = {"project": "alice/birds", "name": "train", "event": "training_started", "data": data}
    started = hub.handle(HubCall("POST", METRICS, made, body)).body
    model_id, run_id = started["modelId"], started["runId"]
    ask = {"filename": "best.pt", "modelId": model_id, "runId": run_id}
    slot = hub.handle(HubCall("POST", UPLOAD, made, ask)).body
    assert slot["uploadUrl"] == f"/{slot['uploadPath']}"  # unsigned: this hub has no signer
    put = hub.handle(HubCall("PUT", slot["uploadUrl"], file=b"weights"))
    assert put.status == 200
    promote = {"modelPath": slot["gcsPath"], "runId": run_id, "uploadPath": slot["uploadPath"]}
    call = HubCall(
        "POST", METRICS, made, {"modelId": model_id, "event": "checkpoint_saved", "data": promote}
    )
    assert hub.handle(call).status == 200
    info = hub.weights_info(model_id, "last")
    assert info is not None and info.size == len(b"weights")
    assert hub.audit().requests["platform_training_metrics"] == 2


def test_the_rate_limit_and_the_upload_cap_hold_on_the_platform_api(tmp_path: Path) -> None:
    from hubfsm.hub.bodies import BodyLimits

    with LocalHub(tmp_path / "hub", rate_limit=1.0, limits=BodyLimits(upload=100)) as local:
        made = new_platform_key()
        local.hub.add_key(made)
        started = start(local, made)
        body = {"filename": "best.pt", "modelId": started["modelId"], "runId": started["runId"]}
        limited = post(local, made, UPLOAD, body)
        # One request per second per key: the second at once is refused, saying when to retry.
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    with LocalHub(tmp_path / "hub", limits=BodyLimits(upload=100)) as local:
        slot = post(local, made, UPLOAD, body).json()
        too_big = requests.put(slot["uploadUrl"], data=b"x" * 101, timeout=TIMEOUT)
        assert too_big.status_code == 413
        fits = requests.put(slot["uploadUrl"], data=b"x" * 100, timeout=TIMEOUT)
        assert fits.status_code == 200


def test_a_retried_training_started_opens_one_model(local: LocalHub, key: str) -> None:
    data = {"trainArgs": TRAIN_ARGS, "epochs": 3, "device": "cpu", "system": {"cpu": 7.5}}
    body = {"project": "alice/birds", "name": "train", "event": "training_started", "data": data}
    # The SDK sends the very same body again when the first answer was lost.
    first, retry = post(local, key, METRICS, body), post(local, key, METRICS, body)
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(local.hub.models()) == 1
    # A run that started reporting is not reopened by the same body: that is a new run.
    epoch_end(local, key, first.json()["modelId"], 0)
    again = post(local, key, METRICS, body).json()
    assert again["modelId"] != first.json()["modelId"] and again["modelSlug"] == "train-2"
    # Another run's body (another moment's load) is a new model at once.
    other = {**body, "data": {**data, "system": {"cpu": 9.0}}}
    assert post(local, key, METRICS, other).json()["modelSlug"] == "train-3"
