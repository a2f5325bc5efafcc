"""The official client (hub-sdk 0.0.25) against the local hub, in a subprocess.

hub-sdk reads ``ULTRALYTICS_HUB_API`` when it is imported, so it runs in a fresh
interpreter with the local hub's URL in its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import requests

from hubfsm.hub.server import LocalHub

pytest.importorskip("hub_sdk")

SCRIPT = r"""
import json, os, sys, time
from hub_sdk import HUBClient

last_path, best_path = sys.argv[1], sys.argv[2]
out = {}
client = HUBClient({"api_key": os.environ["HUB_API_KEY"]})
out["authenticated"] = client.authenticated
model = client.model()
model.create_model({
    "config": {"batchSize": 16, "epochs": 2, "imageSize": 640, "patience": 100,
               "device": "", "cache": "ram"},
    "dataset": {"name": "coco8.yaml"},
    "lineage": {"architecture": {"name": "yolov8n"}, "parent": {}},
    "meta": {"name": "yolov8n"},
})
out["id"] = model.id
out["cfg"] = model.get_architecture()
out["dataset"] = model.get_dataset_url()
out["config"] = model.data.get("config")
out["trained_before"] = model.is_trained()
metrics = {str(e): json.dumps({"metrics/mAP50-95(B)": 0.1 * e, "train/box_loss": 1.0 - 0.1 * e})
           for e in (0, 1)}
out["metrics_status"] = model.upload_metrics(metrics).status_code
out["epoch_upload_status"] = model.upload_model(1, last_path, is_best=True).status_code
again = client.model(model.id)
out["resumable"] = again.is_resumable()
out["resume_url"] = again.get_weights_url("last")
model.start_heartbeat(1)
deadline = time.monotonic() + 10
while model.hub_client.agent_id is None and time.monotonic() < deadline:
    time.sleep(0.02)
model.stop_heartbeat()
out["agent_id"] = model.hub_client.agent_id
out["final_upload_status"] = model.upload_model(2, best_path, map=0.66, final=True).status_code
done = client.model(model.id)
out["trained"] = done.is_trained()
out["best_url"] = done.get_weights_url("best")
out["metrics"] = done.get_metrics()
out["bad_key_authenticated"] = HUBClient({"api_key": "x" * 42}).authenticated
print("RESULT " + json.dumps(out))
"""


def test_official_client_against_the_local_hub(tmp_path: Path) -> None:
    last = tmp_path / "last.pt"
    best = tmp_path / "best.pt"
    last.write_bytes(os.urandom(200_000))
    best.write_bytes(os.urandom(300_000))
    script = tmp_path / "client.py"
    script.write_text(SCRIPT)
    with LocalHub(tmp_path / "hub") as local:
        env = {
            **os.environ,
            "ULTRALYTICS_HUB_API": local.url,
            "HUB_API_KEY": local.api_key,
            "ULTRALYTICS_HUB_WEB": local.url,
        }
        done = subprocess.run(
            [sys.executable, str(script), str(last), str(best)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        out = json.loads(line.removeprefix("RESULT "))
        model_id = out["id"]

        assert out["authenticated"] is True
        assert out["bad_key_authenticated"] is False
        assert len(model_id) == 20
        assert out["cfg"] == "yolov8n.yaml"
        assert out["dataset"] == "coco8.yaml"
        assert out["config"] == {
            "batchSize": 16,
            "epochs": 2,
            "imageSize": 640,
            "patience": 100,
            "device": "",
            "cache": "ram",
        }
        assert out["trained_before"] is False
        assert out["metrics_status"] == out["epoch_upload_status"] == 200
        assert out["final_upload_status"] == 200
        assert out["resumable"] is True
        # Signed like the real service's: ends in the file name, as ultralytics needs.
        resume = urllib.parse.urlsplit(out["resume_url"])
        assert out["resume_url"].startswith(f"{local.url}/files/{model_id}/epoch-1.pt?")
        assert resume.path.rsplit("/", 1)[-1] == "epoch-1.pt"
        assert "signature=" in resume.query and "expires=" in resume.query
        # As ultralytics 8.2.0 fetches it: no key, named after the path's last segment.
        clean = urllib.parse.unquote(out["resume_url"]).split("?")[0]
        assert pathlib.PurePosixPath(clean).name == "epoch-1.pt"
        got = requests.get(out["resume_url"], timeout=10)
        assert got.status_code == 200 and got.content == last.read_bytes()
        assert requests.head(out["resume_url"], timeout=10).status_code == 200
        assert out["agent_id"] and len(out["agent_id"]) == 20
        assert out["trained"] is True
        assert out["best_url"].startswith(f"{local.url}/files/{model_id}/best.pt?")
        best_got = requests.get(out["best_url"], timeout=10)
        assert best_got.content == best.read_bytes()
        assert [m["epoch"] for m in out["metrics"]] == [0, 1]

        # And on the hub's side:
        hub = local.hub
        record = hub.record(model_id)
        assert record is not None
        assert record["status"] == "trained"
        assert record["map"] == 0.66
        assert hub.metrics(model_id)[1]["metrics"]["train/box_loss"] == pytest.approx(0.9)
        uploads = hub.audit().uploads
        assert [(u.type, u.epoch, u.is_best) for u in uploads] == [
            ("epoch", 1, True),
            ("final", 2, False),
        ]
        assert uploads[0].sha256 == hashlib.sha256(last.read_bytes()).hexdigest()
        assert uploads[1].sha256 == hashlib.sha256(best.read_bytes()).hexdigest()
        assert hub.audit().heartbeats[model_id]
        assert local.api_key not in done.stdout
