"""SIGTERM while a trainer rewrites its checkpoint in place: what it says is kept is kept."""

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hubfsm.hub.server import LocalHub
from tests.support import relay

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


@pytest.mark.slow
def test_sigterm_mid_save_says_only_what_sync_can_deliver(tmp_path):
    local = LocalHub(tmp_path / "hub").start()
    held = tmp_path / "held"
    frozen = threading.Event()
    released = threading.Event()

    class Proxy(http.server.BaseHTTPRequestHandler):
        def _relay(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if frozen.is_set():  # the hub stops answering: the worker waits in a request
                held.touch()
                released.wait(30)
                return
            relay(self, "127.0.0.1", local.port, body)

        do_GET = do_POST = _relay

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), ULTRALYTICS_HUB_API=url,
               ULTRALYTICS_HUB_WEB=url, HUB_API_KEY=local.api_key,
               HUBFSM_OUTBOX=str(tmp_path / "outbox"), HELD=str(held))
    work = tmp_path / "work"
    work.mkdir()
    try:
        trainer = subprocess.Popen(
            [sys.executable, str(HERE / "sigterm_trainer.py")], cwd=work, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        first = trainer.stdout.readline()
        assert first.startswith("epoch 0"), trainer.stderr.read()
        model_id = first.split()[2]
        # Epoch 0 goes up at once, its checkpoint too, before the hub stops answering.
        deadline = time.monotonic() + 30
        while not (
            local.hub.metrics(model_id)
            and local.hub.record(model_id).get("checkpoint_epoch") == 0
        ):
            assert trainer.poll() is None, trainer.communicate()
            assert time.monotonic() < deadline, "epoch 0 did not reach the hub"
            time.sleep(0.02)
        frozen.set()
        trainer.stdin.write("\n")
        trainer.stdin.flush()
        _, err = trainer.communicate(timeout=60)
        assert trainer.returncode == -15, err
        # Epoch 1's checkpoint was never copied (the worker waited on the hub) and its
        # file was cut short since: nothing can send it, so nothing says it is kept.
        (line,) = [x for x in err.splitlines() if "not on the hub yet" in x]
        assert "epoch of metrics not on the hub yet" in line and "checkpoint" not in line, err
        released.set()
        frozen.clear()
        sync = subprocess.run([sys.executable, "-m", "hubfsm", "sync"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert [m["epoch"] for m in local.hub.metrics(model_id)] == [0, 1]
    finally:
        released.set()
        proxy.shutdown()
        local.stop()
