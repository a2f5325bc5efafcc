"""Benchmark: the local hub under concurrent sessions, with and without silent sockets.

The hub runs as ``hubfsm hub serve`` in a subprocess (so the load generator's threads do
not share its interpreter). Each of ``--clients`` threads creates a model and then, for
``--seconds``, plays a training session's requests in a loop: a metrics upload, a
heartbeat and a read of the record, with a 256 KiB epoch checkpoint every tenth round.

Scenarios:

- ``plain``: only the sessions.
- ``silent``: the same while ``--silent`` sockets are connected and send nothing, and as
  many again send half a request line and stall (each holds a worker where the server
  gives one per connection).
- ``keyless``: one keyless 16 MiB JSON body and one keyless 64 MiB upload; reports the
  server's peak RSS growth and what it answered.

Usage::

    python bench/hub_load.py [--clients 8] [--seconds 8] [--silent 32] [--quick] [--json PATH]

``--quick`` plays each load scenario for 3 seconds at most.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402

TIMEOUT = 10.0
#: The most seconds a quick run plays each load scenario.
QUICK_SECONDS = 3.0


@contextlib.contextmanager
def served(data: Path) -> Iterator[tuple[str, str, int]]:
    """Run ``hubfsm hub serve`` on a free port: (url, key, pid)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        url = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"serving at (http://\S+)", line)
            if found:
                url = found.group(1)
            if "Ctrl-C" in line:
                break
        key = next(
            line.split()[-1] for line in (data / "api_key").read_text().splitlines() if line.strip()
        )
        yield url, key, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


CREATE = {
    "config": {"batchSize": 16, "epochs": 1000, "imageSize": 640, "patience": 100},
    "dataset": {"name": "coco8.yaml"},
    "lineage": {"architecture": {"name": "yolov8n"}, "parent": {}},
    "meta": {"name": "load"},
}


def session_loop(url: str, key: str, stop: threading.Event, tally: dict[str, int]) -> None:
    """One client: create a model, then metrics, heartbeat, read; a checkpoint now and then."""
    http = requests.Session()
    http.headers["x-api-key"] = key
    ok = errors = 0
    try:
        reply = http.post(f"{url}/v1/models", json=CREATE, timeout=TIMEOUT)
        model = reply.json()["data"]["id"]
    except Exception:  # noqa: BLE001 - counted
        with lock:
            tally["errors"] += 1
        return
    base = f"{url}/v1/models/{model}"
    blob = os.urandom(256 << 10)
    epoch = 0
    while not stop.is_set():
        calls: list[tuple[str, str, dict[str, Any]]] = [
            (
                "POST",
                base,
                {"json": {"type": "metrics", "metrics": {str(epoch): json.dumps({"a": 1.0})}}},
            ),
            ("POST", f"{url}/v1/agent/heartbeat/models/{model}", {"json": {"agent": "x"}}),
            ("GET", base, {}),
        ]
        if epoch % 10 == 9:
            files = {"last.pt": ("last.pt", io.BytesIO(blob))}
            data = {"epoch": str(epoch), "type": "epoch", "isBest": "false"}
            calls.append(("POST", f"{base}/upload", {"files": files, "data": data}))
        for method, where, kwargs in calls:
            try:
                got = http.request(method, where, timeout=TIMEOUT, **kwargs)
                if got.status_code == 200:
                    ok += 1
                else:
                    errors += 1
            except requests.RequestException:
                errors += 1
        epoch += 1
    with lock:
        tally["ok"] += ok
        tally["errors"] += errors


lock = threading.Lock()


def load(url: str, key: str, clients: int, seconds: float) -> dict[str, float]:
    tally = {"ok": 0, "errors": 0}
    stop = threading.Event()
    threads = [
        threading.Thread(target=session_loop, args=(url, key, stop, tally)) for _ in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    spent = time.perf_counter() - started
    total = tally["ok"] + tally["errors"]
    return {"requests": total, "errors": tally["errors"], "rps": round(total / spent, 1)}


def silent_sockets(url: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    held = []
    for i in range(2 * count):
        try:
            sock = socket.create_connection((host, int(port)), timeout=2)
        except OSError:
            break
        if i % 2:
            sock.sendall(b"POST /v1/auth HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        held.append(sock)
    return held


def peak_rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


def keyless(url: str, pid: int) -> dict[str, Any]:
    before = peak_rss_kib(pid)
    out: dict[str, Any] = {}
    big = b'{"a": "' + b"x" * (16 << 20) + b'"}'
    try:
        got = requests.post(f"{url}/v1/models", data=big, timeout=60)
        out["json_16mib_status"] = got.status_code
    except requests.RequestException as error:
        out["json_16mib_status"] = type(error).__name__
    try:
        files = {"last.pt": ("last.pt", io.BytesIO(b"\0" * (64 << 20)))}
        got = requests.post(
            f"{url}/v1/models/abcdefghij0123456789/upload",
            files=files,
            data={"epoch": "1", "type": "epoch"},
            timeout=60,
        )
        out["upload_64mib_status"] = got.status_code
    except requests.RequestException as error:
        out["upload_64mib_status"] = type(error).__name__
    out["server_peak_rss_growth_mib"] = round((peak_rss_kib(pid) - before) / 1024, 1)
    return out


def run(
    *, clients: int = 8, seconds: float = 8.0, silent: int = 32, quick: bool = False
) -> dict[str, Any]:
    """Every scenario, each against a fresh hub; a quick run plays each for less time."""
    benchkit.setup()
    if quick:
        seconds = min(seconds, QUICK_SECONDS)
    results: dict[str, Any] = {"clients": clients, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="hub-load-") as tmp:
        with served(Path(tmp) / "plain") as (url, key, _):
            results["plain"] = load(url, key, clients, seconds)
        with served(Path(tmp) / "silent") as (url, key, _):
            held = silent_sockets(url, silent)
            results["silent"] = {"held_sockets": len(held), **load(url, key, clients, seconds)}
            for sock in held:
                sock.close()
        with served(Path(tmp) / "keyless") as (url, key, pid):
            results["keyless"] = keyless(url, pid)
    return results


def render(result: dict[str, Any]) -> list[str]:
    """The results as a Markdown table and a note."""
    rows = []
    for name, label in (("plain", "sessions only"), ("silent", "sessions + silent sockets")):
        row = result[name]
        rows.append(
            [
                label,
                row.get("held_sockets", 0),
                f"{row['requests']:,}",
                row["errors"],
                benchkit.fmt(row["rps"], 1),
            ]
        )
    keyless = result["keyless"]
    return [
        *benchkit.table(["scenario", "silent sockets", "requests", "errors", "requests/s"], rows),
        "",
        f"{result['clients']} client threads, {result['seconds']:g} s per scenario, against "
        "`hubfsm hub serve` in a subprocess. Without a key, a 16 MiB JSON body was answered "
        f"{keyless['json_16mib_status']} and a 64 MiB upload "
        f"{keyless['upload_64mib_status']}; the server's peak RSS grew by "
        f"{keyless['server_peak_rss_growth_mib']} MiB.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--silent", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="shorter scenarios")
    return benchkit.script_main(
        parser,
        argv,
        run=lambda a: run(clients=a.clients, seconds=a.seconds, silent=a.silent, quick=a.quick),
        render=render,
    )


if __name__ == "__main__":
    raise SystemExit(main())
