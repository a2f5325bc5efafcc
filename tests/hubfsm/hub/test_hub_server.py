from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import structlog
import werkzeug.test

from hubfsm.hub.app import HubApp, RateLimiter
from hubfsm.hub.domain import Hub
from hubfsm.hub.foreground import serve
from hubfsm.hub.keys import load_or_create_key
from hubfsm.hub.server import LocalHub
from tests.support import KEY
from transports.faults import FaultMix

CREATE = {
    "config": {
        "batchSize": 16,
        "epochs": 10,
        "imageSize": 320,
        "patience": 5,
        "device": "cpu",
        "cache": "ram",
    },
    "dataset": {"name": "coco8.yaml"},
    "lineage": {"architecture": {"name": "yolov8n"}, "parent": {}},
    "meta": {"name": "served"},
}
TIMEOUT = 10


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def headers(local: LocalHub, **extra: str) -> dict[str, str]:
    return {"x-api-key": local.api_key, **extra}


def create(local: LocalHub) -> str:
    reply = requests.post(
        f"{local.url}/v1/models", json=CREATE, headers=headers(local), timeout=TIMEOUT
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["id"])


def test_auth_and_wrong_key(local: LocalHub) -> None:
    good = requests.post(f"{local.url}/v1/auth", headers=headers(local), timeout=TIMEOUT)
    assert good.status_code == 200
    assert good.json()["success"] is True
    wrong = requests.post(f"{local.url}/v1/auth", headers={"x-api-key": "w" * 42}, timeout=TIMEOUT)
    assert wrong.status_code == 401
    assert wrong.json()["success"] is False
    missing = requests.get(f"{local.url}/v1/models/abcdefghij0123456789", timeout=TIMEOUT)
    assert missing.status_code == 401
    assert local.api_key not in repr(local)


def test_key_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    local = LocalHub(data_dir)
    key_file = data_dir / "api_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key_file.read_text().strip() == local.api_key
    assert len(local.api_key) == 42 and local.api_key.isalnum()
    assert LocalHub(data_dir).api_key == local.api_key
    key_file.write_text("short\n")
    with pytest.raises(ValueError) as caught:
        load_or_create_key(key_file)
    assert "short" not in str(caught.value)


def test_a_session_over_http(local: LocalHub) -> None:
    model_id = create(local)
    url = f"{local.url}/v1/models/{model_id}"
    record = requests.get(url, headers=headers(local), timeout=TIMEOUT).json()["data"]
    assert (record["status"], record["cfg"], record["epochs"]) == ("new", "yolov8n.yaml", 10)

    body = {
        "type": "metrics",
        "metrics": {
            str(e): json.dumps({"metrics/mAP50-95(B)": e / 10, "train/box_loss": 2 - e / 5})
            for e in range(4)
        },
    }
    reply = requests.post(
        url, json=body, headers=headers(local, **{"Idempotency-Key": "m"}), timeout=TIMEOUT
    )
    assert reply.status_code == 200
    again = requests.post(
        url, json=body, headers=headers(local, **{"Idempotency-Key": "m"}), timeout=TIMEOUT
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert local.hub.audit().metrics_applied[(model_id, 3)] == 1
    listed = requests.get(f"{url}/metrics", headers=headers(local), timeout=TIMEOUT).json()
    assert [m["epoch"] for m in listed["data"]] == [0, 1, 2, 3]

    data = os.urandom(3 << 20)
    reply = requests.post(
        f"{url}/upload",
        headers=headers(local),
        data={"epoch": "3", "type": "epoch", "isBest": "True"},
        files={"last.pt": ("last.pt", io.BytesIO(data))},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"]["sha256"] == hashlib.sha256(data).hexdigest()
    record = requests.get(url, headers=headers(local), timeout=TIMEOUT).json()["data"]
    assert record["has_last_weights"] is True
    assert record["resume"].startswith(f"{local.url}/files/{model_id}/epoch-3.pt?expires=")

    api_download = f"{local.url}/v1/models/{model_id}/weights/last"
    download = requests.get(api_download, headers=headers(local), timeout=TIMEOUT)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == hashlib.sha256(data).hexdigest()
    assert download.headers["X-Checksum-Sha256"] == hashlib.sha256(data).hexdigest()
    assert requests.get(api_download, timeout=TIMEOUT).status_code == 401
    # the record's URL needs no key, as the official client fetches it without one
    assert requests.get(record["resume"], timeout=TIMEOUT).content == data
    keyless = requests.get(f"{local.url}/models/{model_id}/weights/last.pt", timeout=TIMEOUT)
    assert keyless.content == data

    beat = requests.post(
        f"{local.url}/v1/agent/heartbeat/models/{model_id}",
        json={"agent": "python-test", "agentId": None},
        headers=headers(local),
        timeout=TIMEOUT,
    )
    assert beat.status_code == 200
    assert len(beat.json()["data"]["agentId"]) == 20

    page = requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert 'class="metrics"' in page.text
    assert "train/box_loss" in page.text
    assert "/static/uplot.iife.min.js" in page.text
    assert f"/models/{model_id}/weights/last.pt" in page.text
    index = requests.get(f"{local.url}/", timeout=TIMEOUT)
    assert f'href="/models/{model_id}"' in index.text
    assert (
        requests.get(f"{local.url}/models/abcdefghij0123456789", timeout=TIMEOUT).status_code == 404
    )
    assert requests.get(f"{local.url}/elsewhere", timeout=TIMEOUT).status_code == 404


def test_a_reused_idempotency_key_over_http(local: LocalHub) -> None:
    model_id = create(local)
    url = f"{local.url}/v1/models/{model_id}"

    def send(epoch: int) -> requests.Response:
        body = {"type": "metrics", "metrics": {str(epoch): json.dumps({"loss": 1.0})}}
        return requests.post(
            url, json=body, headers=headers(local, **{"Idempotency-Key": "k"}), timeout=TIMEOUT
        )

    def upload(data: bytes) -> requests.Response:
        return requests.post(
            f"{url}/upload",
            headers=headers(local, **{"Idempotency-Key": "u"}),
            data={"epoch": "0", "type": "epoch", "isBest": "false"},
            files={"last.pt": ("last.pt", io.BytesIO(data))},
            timeout=TIMEOUT,
        )

    assert send(0).status_code == 200
    reused = send(1)
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["message"]
    assert send(0).headers["Idempotent-Replayed"] == "true"
    listed = requests.get(f"{url}/metrics", headers=headers(local), timeout=TIMEOUT).json()
    assert [m["epoch"] for m in listed["data"]] == [0]

    first = os.urandom(1 << 16)
    assert upload(first).status_code == 200
    assert upload(os.urandom(1 << 16)).status_code == 422
    assert upload(first).headers["Idempotent-Replayed"] == "true"
    api_download = f"{local.url}/v1/models/{model_id}/weights/last"
    assert requests.get(api_download, headers=headers(local), timeout=TIMEOUT).content == first
    # Nothing of the refused upload is left behind in the staging folder.
    assert list((local.data_dir / "weights" / ".staging").iterdir()) == []


def test_bad_bodies(local: LocalHub) -> None:
    model_id = create(local)
    url = f"{local.url}/v1/models/{model_id}"
    broken = requests.post(url, data=b"{not json", headers=headers(local), timeout=TIMEOUT)
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["message"]
    listed = requests.post(url, json=[1, 2], headers=headers(local), timeout=TIMEOUT)
    assert listed.status_code == 400
    method = requests.delete(url, headers=headers(local), timeout=TIMEOUT)
    assert method.status_code == 405
    assert (
        requests.get(f"{local.url}/v1/nowhere", headers=headers(local), timeout=TIMEOUT).status_code
        == 404
    )


def test_restart_keeps_everything(tmp_path: Path) -> None:
    with LocalHub(tmp_path) as first:
        model_id = create(first)
        requests.post(
            f"{first.url}/v1/models/{model_id}/upload",
            headers=headers(first),
            data={"epoch": "9", "type": "final", "map": "0.7"},
            files={"best.pt": b"best weights"},
            timeout=TIMEOUT,
        )
        key = first.api_key
    with LocalHub(tmp_path) as second:
        assert second.api_key == key
        record = requests.get(
            f"{second.url}/v1/models/{model_id}", headers=headers(second), timeout=TIMEOUT
        ).json()["data"]
        assert record["status"] == "trained"
        assert record["weights"].startswith(f"{second.url}/files/{model_id}/best.pt?")
        got = requests.get(record["weights"], timeout=TIMEOUT)
        assert got.content == b"best weights"


def test_server_faults_are_seeded(tmp_path: Path) -> None:
    mix = FaultMix(server_error=0.5, rate_limited=0.5, retry_after=(2.0, 3.0))

    def statuses(seed: int) -> list[tuple[int, str | None]]:
        with LocalHub(tmp_path / str(seed), faults=mix, seed=seed) as local:
            seen = []
            for _ in range(12):
                reply = requests.post(
                    f"{local.url}/v1/auth", headers=headers(local), timeout=TIMEOUT
                )
                seen.append((reply.status_code, reply.headers.get("Retry-After")))
                assert reply.json()["success"] is False
            return seen

    seen = statuses(3)
    assert seen == statuses(3)
    codes = {code for code, _ in seen}
    assert 429 in codes and codes & {500, 502, 503, 504}
    assert all(after in ("2", "3") for code, after in seen if code == 429)


def test_lost_response_applies_and_drops(tmp_path: Path) -> None:
    with LocalHub(tmp_path, faults=FaultMix(lost_response=1.0)) as local:
        with pytest.raises(requests.ConnectionError):
            requests.post(
                f"{local.url}/v1/models", json=CREATE, headers=headers(local), timeout=TIMEOUT
            )
        assert len(local.hub.models()) == 1
    with LocalHub(tmp_path, faults=FaultMix(connection_error=1.0)) as local:
        with pytest.raises(requests.ConnectionError):
            requests.post(
                f"{local.url}/v1/models", json=CREATE, headers=headers(local), timeout=TIMEOUT
            )
        assert len(local.hub.models()) == 1
        # Pages are not subject to faults.
        assert requests.get(f"{local.url}/", timeout=TIMEOUT).status_code == 200


def test_latency_is_added(hub: Hub) -> None:
    # The delay is what the app asks its sleep for, not a wall-clock reading.
    slept: list[float] = []
    app = HubApp(hub, faults=FaultMix(latency=(0.2, 0.2)), sleep=slept.append)
    reply = werkzeug.test.Client(app).post("/v1/auth", headers={"x-api-key": KEY})
    assert reply.status_code == 200 and slept == [0.2]


def test_rate_limit(tmp_path: Path) -> None:
    with LocalHub(tmp_path, rate_limit=2.0) as local:
        replies = [
            requests.post(f"{local.url}/v1/auth", headers=headers(local), timeout=TIMEOUT)
            for _ in range(5)
        ]
    codes = [r.status_code for r in replies]
    assert codes[:2] == [200, 200]
    assert 429 in codes
    limited = replies[codes.index(429)]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Limit"] == "2"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) >= 1
    assert replies[0].headers["X-RateLimit-Remaining"] == "1"


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, clock=lambda: now[0])
    assert limiter.take("a")[0] is True
    allowed, limit_headers = limiter.take("a")
    assert allowed is False and limit_headers["Retry-After"] == "1"
    assert limiter.take("b")[0] is True
    now[0] = 1.0
    assert limiter.take("a")[0] is True


def test_guessed_keys_share_their_address_bucket_and_make_no_new_ones(hub: Hub) -> None:
    app = HubApp(hub, rate_limit=1.0)
    client = werkzeug.test.Client(app)
    codes = [
        client.post(
            "/v1/auth",
            headers={"x-api-key": os.urandom(21).hex()},
            environ_base={"REMOTE_ADDR": "127.0.0.9"},
        ).status_code
        for _ in range(50)
    ]
    # Before, each guess had a fresh bucket of its own: 50 times 401, 50 buckets kept.
    assert codes[0] == 401 and codes.count(429) >= 45
    assert app.limiter is not None and len(app.limiter._buckets) == 1
    # A key the hub knows keeps its own bucket, apart from the guesser's address.
    known = client.post("/v1/auth", headers={"x-api-key": KEY},
                        environ_base={"REMOTE_ADDR": "127.0.0.9"})  # fmt: skip
    assert known.status_code == 200


def test_serve_prints_how_to_use_it(tmp_path: Path) -> None:
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(tmp_path,),
        kwargs={"port": 0, "out": out, "stop": stop, "fault_rate": 0.1, "heartbeat_interval": 0.2},
    )
    with structlog.testing.capture_logs() as logs:
        thread.start()
        deadline = time.monotonic() + 5
        while "Ctrl-C" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        text = out.getvalue()
        url = next(
            line.split("=", 1)[1] for line in text.splitlines() if "ULTRALYTICS_HUB_API=" in line
        )
        key = (tmp_path / "api_key").read_text().strip()
        for _ in range(5):
            requests.post(f"{url}/v1/auth", headers={"x-api-key": key}, timeout=TIMEOUT)
        # The pages go by the interval given: silent for two of them, a run is stalled.
        states = []
        for _ in range(50):
            created = requests.post(
                f"{url}/v1/models",
                json={"lineage": {"architecture": {"name": "yolov8n"}}},
                headers={"x-api-key": key},
                timeout=TIMEOUT,
            )
            if created.status_code == 200:  # a fault drawn may fail it: try again
                break
        for _ in range(100):
            reply = requests.get(f"{url}/runs.json", timeout=TIMEOUT)
            states = [run["summary"]["state"] for run in reply.json()["runs"]] if reply.ok else []
            if states == ["new"]:
                requests.post(
                    f"{url}/v1/agent/heartbeat/models/{created.json()['data']['id']}",
                    json={"agent": "test"},
                    headers={"x-api-key": key},
                    timeout=TIMEOUT,
                )
            if states == ["stalled"]:
                break
            time.sleep(0.05)
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert states == ["stalled"]
    assert f"export HUB_API_KEY=$(cat {tmp_path / 'api_key'})" in text
    assert url.startswith("http://127.0.0.1:")
    assert key not in text
    assert any(entry["event"] == "hub.request" for entry in logs)
    assert key not in repr(logs)
