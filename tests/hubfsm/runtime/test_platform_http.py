"""A Platform session over real HTTP on 127.0.0.1, against the fake Platform in a process."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import hubfsm
from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from tests.platform_fake import PLATFORM_KEY
from transports.platform import PlatformTransport

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
FAST = CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001)


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["ULTRALYTICS_API_KEY"] = PLATFORM_KEY
    return env


@pytest.fixture
def platform():
    """The fake Platform's root URL; the server runs in its own process."""
    server = subprocess.Popen(
        [sys.executable, str(HERE / "platform_server.py")],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("port "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def state(root):
    with urllib.request.urlopen(f"{root}/_state", timeout=10) as answer:
        return json.load(answer)


def control(root, **values):
    request = urllib.request.Request(
        f"{root}/_control", data=json.dumps(values).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_a_run_over_http_sends_the_key_only_to_the_api_and_bytes_raw_to_the_signed_url(
    platform, tmp_path, monkeypatch
):
    monkeypatch.setenv("ULTRALYTICS_API_KEY", PLATFORM_KEY)
    monkeypatch.setenv("ULTRALYTICS_PLATFORM_URL", platform)
    best = tmp_path / "best.pt"
    best.write_bytes(os.urandom(300_000))
    with hubfsm.Session("owner/http", config=FAST, train_args={"name": "run1"}) as s:
        assert s.protocol == "platform"
        assert isinstance(s._driver.transport, PlatformTransport)
        for epoch in range(4):
            s.log_metrics({"loss": 1.0 / (epoch + 1), "odd": float("inf")})
        s.finish(best, map50_95=0.3)
        assert s.state == "done"
        model_id = s.model_id
    seen = state(platform)
    run = seen["models"][model_id]["runs"]["1"]
    assert run["epochs"] == [0, 1, 2, 3]
    assert run["events"][-1] == "training_complete"
    assert seen["storage"][run["promoted"][0]] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert seen["foreign"] == 0
    posts = [h for h in seen["headers"] if h["method"] == "POST"]
    puts = [h for h in seen["headers"] if h["method"] == "PUT"]
    assert posts and all(h["authorization"] == f"Bearer {PLATFORM_KEY}" for h in posts)
    assert not any("x-api-key" in h or "idempotency-key" in h for h in seen["headers"])
    [put] = puts
    assert "authorization" not in put and put["content-type"] == "application/octet-stream"
    assert put["content-length"] == str(best.stat().st_size)
    assert PLATFORM_KEY not in json.dumps(puts)


@pytest.mark.slow  # a kill loop over real HTTP
def test_a_kill_9_mid_run_loses_no_epoch_and_sync_delivers_them_once_in_order(
    platform, tmp_path
):
    outbox = tmp_path / "outbox"
    trainer = subprocess.Popen(
        [sys.executable, str(HERE / "platform_trainer.py"), platform, str(outbox),
         str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )  # fmt: skip
    try:
        line = trainer.stdout.readline()
        assert line.startswith("model "), line
        model_id = line.split()[1]
        control(platform, down=True)  # the service goes away mid-run
        (tmp_path / "go").touch()
        assert trainer.stdout.readline() == "parked\n"
    finally:
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=10)
    assert state(platform)["models"][model_id]["runs"]["1"]["epochs"] == [0, 1, 2]
    control(platform, down=False)
    env = child_env()
    env["HUB_API_KEY"] = "h" * 42  # a HUB key must not go to the Platform root
    listed = subprocess.run(
        [sys.executable, "-m", "hubfsm", "status", str(outbox), "--protocol", "platform",
         "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    (row,) = json.loads(listed.stdout)["outboxes"]
    assert row["model_id"] == model_id and row["protocol"] == "platform", listed.stdout
    assert row["pending"]["metrics"] == 3 and row["pending"]["checkpoint"] == 1, listed.stdout
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync", str(outbox), "--protocol", "platform",
         "--hub", platform, "--timeout", "30"],
        capture_output=True, text=True, env=env, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert PLATFORM_KEY not in done.stdout + done.stderr
    assert "h" * 42 not in json.dumps(state(platform)["headers"])
    seen = state(platform)
    run = seen["models"][model_id]["runs"]["1"]
    assert run["epochs"] == [0, 1, 2, 3, 4, 5]
    assert len(seen["models"][model_id]["runs"]) == 1
    assert [p for p in seen["storage"]] == run["promoted"]
    assert seen["storage"][run["promoted"][0]] == hashlib.sha256(b"epoch five weights").hexdigest()
