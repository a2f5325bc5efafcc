"""Kill a real trainer inside ``finish()`` (SIGKILL, SIGTERM); ``hubfsm sync`` alone delivers.

The final weights handed to ``finish`` must survive a kill at any point of it: while the
worker is still inside another request (the call is only journaled), while the final
upload itself is stalled, or anywhere else in between. ``hubfsm status`` then shows the
pending final, and ``hubfsm sync``, with no new session first, leaves the model trained
on the hub with the sha256 of the file handed to ``finish``.
"""

import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hubfsm.core.values import FinishRequested
from hubfsm.durable.journal_scan import events
from hubfsm.hub.server import LocalHub
from tests.support import new_model, relay

pytestmark = pytest.mark.slow  # kill loops: trainer processes killed inside finish()

HERE = Path(__file__).parent
TRAINER = HERE / "crash_trainer.py"
EPOCHS = 4
FINAL_FIELD = re.compile(rb'name="type"\r\n\r\nfinal\r\n')


def is_metrics(body):
    try:
        return json.loads(body).get("type") == "metrics"
    except ValueError:
        return False


def best_sha():
    block = hashlib.sha256(b"best").digest() * 1024
    return hashlib.sha256(block * 256).hexdigest()  # crash_trainer.best_bytes()


class HoldingProxy:
    """A real HTTP proxy on 127.0.0.1 that never answers one kind of request.

    ``hold`` is ``heartbeat`` or ``final`` (the final weights' upload), held unforwarded,
    or ``metrics``, forwarded and applied by the hub with its answer held back. The first
    such request creates ``marker`` and is held until the proxy stops; every other
    request is forwarded to ``upstream`` unchanged.
    """

    def __init__(self, upstream, hold, marker):
        port = int(upstream.rsplit(":", 1)[1])
        self.release = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if hold == "heartbeat":
                    held = "/heartbeat/" in self.path
                elif hold == "metrics":
                    held = is_metrics(body) and not marker.exists()
                else:
                    held = self.path.endswith("/upload") and FINAL_FIELD.search(body) is not None
                if held:
                    if hold == "metrics":
                        applied(self, port, body)
                    marker.touch()
                    proxy.release.wait(60)
                    self.close_connection = True
                    return
                relay(self, "127.0.0.1", port, body or None)

            do_GET = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def applied(handler, port, body):
    """Send the request ``handler`` read to the hub and drop its answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
    conn.request(handler.command, handler.path, body=body, headers=headers)
    conn.getresponse().read()
    conn.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub")) as hub:
        yield hub


def env_for(local, **extra):
    env = dict(os.environ, HUB_API_KEY=local.api_key, PYTHONUNBUFFERED="1", **extra)
    env.pop("HUBFSM_OFFLINE", None)
    return env


def start_trainer(api, local, model_id, outbox, work, start=0, **extra):
    return subprocess.Popen(
        [sys.executable, str(TRAINER), api, model_id, str(outbox), str(EPOCHS), str(start),
         str(work)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env_for(local, **extra),
    )


def finish_journaled(outbox, model_id):
    journal = outbox / model_id / "journal"
    return any(isinstance(e, FinishRequested) for _, e in events(journal, after=0))


def wait_until(condition, what, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the trainer ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def kill(proc, sig):
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err


def status_of(outbox):
    return subprocess.run(
        [sys.executable, "-m", "hubfsm", "status", "--json", str(outbox)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )


def sync(local, outbox):
    return subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync", str(outbox), "--hub", local.url,
         "--timeout", "30"],
        capture_output=True, text=True, env=env_for(local), timeout=90,
    )


def pending_of(shown, model_id):
    """The metrics, checkpoint and final columns of a model's row in ``hubfsm status``."""
    assert shown.returncode == 0, shown.stdout + shown.stderr
    (row,) = (r for r in json.loads(shown.stdout)["outboxes"] if r["model_id"] == model_id)
    pending = row["pending"]
    return pending["metrics"], pending["checkpoint"], pending["final"]


def check_delivered_by_sync_alone(local, model_id, outbox, shown=None):
    """Status shows the final pending; sync alone leaves the model trained, every epoch in.

    Every epoch the hub lacks is pending. So may be epochs it has: a kill after the hub
    applied a request and before the trainer recorded its answer keeps them, and sync
    sends them again under their key, which the hub answers from memory.
    """
    shown = shown or status_of(outbox)
    metrics, _, final = pending_of(shown, model_id)
    assert final == 1, shown.stdout
    missing = EPOCHS - len(local.hub.metrics(model_id))
    assert missing <= metrics <= EPOCHS, shown.stdout
    replayed = local.hub.audit().replayed.get("upload_metrics", 0)
    done = sync(local, outbox)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"model {model_id}: all sent" in done.stdout, done.stdout
    hub = local.hub
    assert hub.record(model_id)["status"] == "trained"
    assert [row["epoch"] for row in hub.metrics(model_id)] == list(range(EPOCHS))
    if metrics > missing:
        assert hub.audit().replayed.get("upload_metrics", 0) > replayed
    finals = [u for u in hub.audit().uploads if u.model_id == model_id and u.type == "final"]
    assert [u.sha256 for u in finals] == [best_sha()]
    assert local.api_key not in shown.stdout + shown.stderr + done.stdout + done.stderr
    # Nothing is left behind: the outbox of a delivered model is gone, held links too.
    assert not (outbox / model_id).exists() or not list((outbox / model_id).rglob(".held-*"))


@pytest.mark.parametrize(
    "sig,handlers",
    [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["sigkill", "sigterm", "sigterm-with-handlers"],
)
def test_a_kill_while_finish_waits_behind_a_stalled_request(local, tmp_path, sig, handlers):
    # The worker is inside a heartbeat the proxy never answers: finish() has only the
    # journal's record of the call when the process dies.
    model_id = new_model(local.hub, local.api_key)
    outbox, work, marker = tmp_path / "outbox", tmp_path / "work", tmp_path / "stalled"
    extra = {"WAIT_FOR": str(marker), **({"HANDLE_SIGNALS": "1"} if handlers else {})}
    with HoldingProxy(local.url, "heartbeat", marker) as proxy:
        proc = start_trainer(proxy.url, local, model_id, outbox, work, **extra)
        wait_until(lambda: finish_journaled(outbox, model_id), "finish() is journaled", proc)
        out, err = kill(proc, sig)
    assert "done" not in out.split()
    assert proc.returncode == -sig, err
    assert local.hub.metrics(model_id) == []  # nothing got past the stalled heartbeat
    if handlers:
        # The handler's close names the final weights it leaves, though the worker
        # never took them in.
        assert f"model {model_id}: {EPOCHS} epochs of metrics, final weights not on" in err
    check_delivered_by_sync_alone(local, model_id, outbox)


@pytest.mark.parametrize(
    "sig,handlers",
    [(signal.SIGKILL, False), (signal.SIGTERM, True)],
    ids=["sigkill", "sigterm-with-handlers"],
)
def test_a_kill_while_the_final_upload_stalls(local, tmp_path, sig, handlers):
    model_id = new_model(local.hub, local.api_key)
    outbox, work, marker = tmp_path / "outbox", tmp_path / "work", tmp_path / "stalled"
    extra = {"HANDLE_SIGNALS": "1"} if handlers else {}
    with HoldingProxy(local.url, "final", marker) as proxy:
        proc = start_trainer(proxy.url, local, model_id, outbox, work, **extra)
        wait_until(marker.exists, "the final upload is under way", proc)
        out, err = kill(proc, sig)
    assert proc.returncode == -sig, err
    assert local.hub.record(model_id)["status"] != "trained"
    check_delivered_by_sync_alone(local, model_id, outbox)


def test_a_kill_after_the_hub_applied_metrics_whose_answer_never_came(local, tmp_path):
    # The hub has the first metrics; the trainer never heard so: they are still pending,
    # and sync's resend under the same key is answered from memory, not applied twice.
    model_id = new_model(local.hub, local.api_key)
    outbox, work, marker = tmp_path / "outbox", tmp_path / "work", tmp_path / "applied"
    with HoldingProxy(local.url, "metrics", marker) as proxy:
        proc = start_trainer(proxy.url, local, model_id, outbox, work)
        wait_until(lambda: finish_journaled(outbox, model_id), "finish() is journaled", proc)
        wait_until(marker.exists, "the hub applied metrics", proc)
        kill(proc, signal.SIGKILL)
    shown = status_of(outbox)
    metrics, _, _ = pending_of(shown, model_id)
    assert local.hub.metrics(model_id) and metrics == EPOCHS, shown.stdout
    check_delivered_by_sync_alone(local, model_id, outbox, shown)
    assert local.hub.audit().replayed.get("upload_metrics", 0) >= 1


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.08, 0.15])
def test_a_kill_anywhere_in_finish(local, tmp_path, delay):
    # No stall: the kill lands somewhere in finish() (the snapshot of 8 MiB, the metrics
    # flush, the final upload) or just after; either the trainer got to the end, or sync
    # alone delivers.
    model_id = new_model(local.hub, local.api_key)
    outbox, work = tmp_path / "outbox", tmp_path / "work"
    proc = start_trainer(local.url, local, model_id, outbox, work)
    try:
        for line in proc.stdout:  # bounded: the trainer ends and closes stdout
            if line.strip() == "finishing":
                break
        time.sleep(delay)
        out, err = kill(proc, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Read before status folds the journal in and it starts over.
    journaled = finish_journaled(outbox, model_id)
    if "done" in out.split():
        assert local.hub.record(model_id)["status"] == "trained"
    elif local.hub.record(model_id)["status"] != "trained":
        shown = status_of(outbox)
        if not journaled and pending_of(shown, model_id)[2] == 0:
            # Killed between the trainer's "finishing" and its call to finish(): no
            # weights were handed over, so only the trainer can send them.
            proc = start_trainer(local.url, local, model_id, outbox, work, start=EPOCHS)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        else:
            check_delivered_by_sync_alone(local, model_id, outbox, shown)
    finals = [u for u in local.hub.audit().uploads if u.model_id == model_id and u.type == "final"]
    assert [u.sha256 for u in finals] == [best_sha()]
    assert [row["epoch"] for row in local.hub.metrics(model_id)] == list(range(EPOCHS))
