"""A hub stopped (Ctrl-C, SIGTERM, a restart) while a request's body is on its way.

The server cuts a request still reading its body a second into a stop. The client is
still there, reading the answer: it must hear a status it retries, never a 400 that a
client takes for the hub's word that the request is wrong (a refused checkpoint, refused
final weights).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

import hubfsm
from hubfsm.hub.server import LocalHub
from tests.support import FAST, hub_upload_body
from transports import uploads

TIMEOUT = 10
CREATE = {"lineage": {"architecture": {"name": "yolov8n"}}, "meta": {"name": "stopped"}}


def _upload(model_id: str) -> tuple[str, str, bytes]:
    fields = {"epoch": "1", "type": "final", "map": "0.5"}
    body = hub_upload_body(fields, "best.pt", b"w" * (1 << 20))
    return f"/v1/models/{model_id}/upload", "multipart/form-data; boundary=bnd", body


def _metrics(model_id: str) -> tuple[str, str, bytes]:
    metrics = {str(epoch): json.dumps({"loss": 1.0}) for epoch in range(2000)}
    body = json.dumps({"type": "metrics", "metrics": metrics}).encode()
    return f"/v1/models/{model_id}", "application/json", body


@pytest.mark.parametrize("make", [_upload, _metrics], ids=["final weights", "metrics"])
def test_a_body_cut_by_a_stop_is_answered_503_and_nothing_of_it_kept(
    tmp_path: Path, make
) -> None:
    local = LocalHub(tmp_path / "hub").start()
    try:
        created = requests.post(
            f"{local.url}/v1/models", json=CREATE, headers={"x-api-key": local.api_key},
            timeout=TIMEOUT,
        )
        model_id = created.json()["data"]["id"]
        path, kind, body = make(model_id)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\n"
            f"x-api-key: {local.api_key}\r\nIdempotency-Key: cut-1\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", local.port), timeout=TIMEOUT) as sock:
            sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.2)  # the hub is reading the body
            stopping = threading.Thread(target=local.stop)
            stopping.start()
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            stopping.join(TIMEOUT)
        status = int(reply.split(b" ", 2)[1])
        message = json.loads(reply.partition(b"\r\n\r\n")[2])["message"]
        # Before: 400 "malformed multipart body: ..." (or "The browser (or proxy) sent a
        # request that this server could not understand."), which ends a client's run.
        assert status == 503, reply[-300:]
        assert f"broke off after {len(body) // 2} of {len(body)} bytes" in message
    finally:
        local.stop()
    with LocalHub(tmp_path / "hub") as again:
        record = again.hub.record(model_id)
        assert record is not None
        assert record["status"] != "trained" and not record["has_best_weights"]
        assert again.hub.metrics(model_id) == []


@pytest.mark.slow
def test_a_run_whose_hub_restarts_mid_upload_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A slow uplink: the final weights take about 3 s to go out, a stop cuts them.
    pieces = uploads.MultipartBody._file_pieces

    def slowly(self, handle, file):  # type: ignore[no-untyped-def]
        for piece in pieces(self, handle, file):
            time.sleep(0.1)
            yield piece

    monkeypatch.setattr(uploads.MultipartBody, "_file_pieces", slowly)
    weights = tmp_path / "best.pt"
    weights.write_bytes(os.urandom(8 << 20))
    local = LocalHub(tmp_path / "hub").start()
    staging = tmp_path / "hub" / "weights" / ".staging"

    def restart() -> None:
        for _ in range(300):
            if any(p.stat().st_size > (1 << 20) for p in staging.iterdir()):
                break
            time.sleep(0.02)
        local.stop()
        local.start()

    restarting = threading.Thread(target=restart)
    try:
        with hubfsm.Session("yolov8n.yaml", api_root=local.url, web_root=local.url,
                            api_key=local.api_key, config=FAST,
                            outbox_dir=tmp_path / "outbox") as session:
            session.log_metrics({"loss": 1.0}, epoch=0)
            restarting.start()
            # Before, the cut upload was answered 400 and the run failed with "the hub
            # rejected the final weights (400) ...: malformed multipart body".
            session.finish(weights, map50_95=0.5, timeout=60)
            model_id = session.model_id
        restarting.join(TIMEOUT)
        record = local.hub.record(model_id)
        assert record is not None and record["status"] == "trained"
        assert record["has_best_weights"]
    finally:
        restarting.join(TIMEOUT)
        local.stop()
    assert "rejected" not in capsys.readouterr().err


def test_a_stop_ends_a_download_to_a_client_that_reads_slowly(tmp_path: Path) -> None:
    local = LocalHub(tmp_path / "hub").start()
    headers = {"x-api-key": local.api_key}
    created = requests.post(f"{local.url}/v1/models", json=CREATE, headers=headers,
                            timeout=TIMEOUT)
    model_id = created.json()["data"]["id"]
    fields = {"epoch": "1", "type": "epoch", "isBest": "False"}
    uploaded = requests.post(
        f"{local.url}/v1/models/{model_id}/upload", data=fields, headers=headers,
        files={"last.pt": ("last.pt", os.urandom(16 << 20))}, timeout=TIMEOUT,
    )
    assert uploaded.status_code == 200
    url = requests.get(f"{local.url}/v1/models/{model_id}", headers=headers,
                       timeout=TIMEOUT).json()["data"]["resume"]
    path = url.split(f":{local.port}", 1)[1]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", local.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\n\r\n".encode())
        reading = threading.Event()

        def trickle() -> None:  # a kilobyte every 0.1 s: 16 MiB take hours
            with contextlib.suppress(OSError):
                while sock.recv(1024):
                    reading.set()
                    time.sleep(0.1)

        reader = threading.Thread(target=trickle, daemon=True)
        reader.start()
        assert reading.wait(TIMEOUT)
        stopping = threading.Thread(target=local.stop)
        started = time.monotonic()
        stopping.start()
        stopping.join(TIMEOUT)
        # Before, the stop (Ctrl-C, SIGTERM) waited for the download: "Stopping." and hours.
        assert not stopping.is_alive(), "the stop waits for the slow download"
        assert time.monotonic() - started < 5
    stopping.join(TIMEOUT)
