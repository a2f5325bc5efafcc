"""Kill a real trainer with SIGKILL at seeded moments; resume or sync; nothing lost or doubled."""

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubfsm.hub.server import LocalHub
from tests.support import new_model, relay

pytestmark = pytest.mark.slow  # kill loops: trainer processes killed and restarted

HERE = Path(__file__).parent
TRAINER = HERE / "crash_trainer.py"
EPOCHS = 6
KILL_POINTS = 20

spec = {"module": None}


def trainer_module():
    if spec["module"] is None:
        import importlib.util

        s = importlib.util.spec_from_file_location("crash_trainer", TRAINER)
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)
        spec["module"] = module
    return spec["module"]


def env_for(local):
    env = dict(os.environ, HUB_API_KEY=local.api_key, PYTHONUNBUFFERED="1")
    env.pop("HUBFSM_OFFLINE", None)
    return env


def run_trainer(local, model_id, outbox, start, work, *, kill_after=None, delay=0.0, seed=0):
    """Run the trainer; with ``kill_after``, SIGKILL it ``delay`` s after that line."""
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER), local.url, model_id, str(outbox), str(EPOCHS),
         str(start), str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(local),
    )
    lines = []
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if kill_after is not None and line.strip() == kill_after:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "trainer took too long"
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines += [x for x in (rest or "").splitlines() if x]
    return lines, proc.returncode, err


def last_logged(lines):
    logged = [int(x.split()[1]) for x in lines if x.startswith("logged ")]
    return logged[-1] if logged else -1


def has_final(local, model_id):
    return any(u.model_id == model_id and u.type == "final" for u in local.hub.audit().uploads)


def sync(local, outbox):
    return subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync", str(outbox), "--hub", local.url,
         "--timeout", "30"],
        capture_output=True, text=True, env=env_for(local), timeout=90,
    )


def kill_points():
    rng = random.Random(20261125)
    points = []
    for i in range(KILL_POINTS):
        if i % 4 == 3:
            target = "finishing"  # during the final upload
        else:
            target = f"logged {rng.randrange(EPOCHS)}"
        points.append((i, target, round(rng.uniform(0.0, 0.06), 4)))
    return points


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub")) as hub:
        yield hub


@pytest.mark.parametrize("point,target,delay", kill_points())
def test_sigkill_then_resume_or_sync_loses_nothing(local, tmp_path, point, target, delay):
    model_id = new_model(local.hub, local.api_key)
    outbox, work = tmp_path / "outbox", tmp_path / "work"
    lines, code, err = run_trainer(local, model_id, outbox, 0, work, kill_after=target,
                                   delay=delay)
    assert local.api_key not in err + "\n".join(lines)
    logged = last_logged(lines)
    if "done" not in lines:
        if point % 2 == 0:
            done = sync(local, outbox)
            # Whatever the kill left, sync delivers it: a sync that sat out its timeout
            # with something held (exit 1) once passed here, slowly (42 s instead of 1).
            assert done.returncode == 0, done.stdout + done.stderr
            assert local.api_key not in done.stdout + done.stderr
        # "finishing" is printed just before finish(), so the kill may come before
        # finish() recorded the final weights: then only the trainer can send them.
        if not has_final(local, model_id):
            start = EPOCHS if "finishing" in lines else logged + 1
            lines2, code2, err2 = run_trainer(local, model_id, outbox, start, work)
            assert code2 == 0, err2
            assert local.api_key not in err2
    # every epoch arrived; those logged once were applied once
    hub = local.hub
    on_hub = [row["epoch"] for row in hub.metrics(model_id)]
    assert on_hub == list(range(EPOCHS)), (target, delay, lines)
    applied = {e: n for (m, e), n in hub.audit().metrics_applied.items() if m == model_id}
    for epoch in range(EPOCHS):
        # the epoch being logged at the kill may have been logged twice by the trainer
        limit = 2 if epoch == logged + 1 and "finishing" not in lines else 1
        assert 1 <= applied[epoch] <= limit, (epoch, applied, target, delay)
    finals = [u for u in hub.audit().uploads if u.model_id == model_id and u.type == "final"]
    assert len(finals) == 1, finals
    assert finals[0].sha256 == hashlib.sha256(trainer_module().best_bytes()).hexdigest()
    assert hub.record(model_id)["status"] == "trained"


# -- a kill while the worker is stuck in a request ------------------------------------


class StallingProxy:
    """A real HTTP proxy on 127.0.0.1 in front of the local hub that holds heartbeats.

    While ``holding`` is set, a heartbeat is never answered: the proxy creates the file
    ``marker`` (the trainer waits for it) and keeps the connection open until released.
    Everything else is forwarded unchanged.
    """

    def __init__(self, upstream, marker, *, hold=True):
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.holding = threading.Event()
        if hold:
            self.holding.set()
        self.release = threading.Event()
        #: While set, every metrics or weights upload is answered with a redirect.
        self.redirecting = threading.Event()
        target = urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if (self.command == "POST" and "/heartbeat/" not in self.path
                        and proxy.redirecting.is_set()):
                    self.send_response(307)
                    self.send_header("Location", "http://127.0.0.2:9/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if "/heartbeat/" in self.path and proxy.holding.is_set():
                    marker.touch()
                    proxy.release.wait(30)
                    self.close_connection = True
                    return
                relay(self, str(target.hostname), int(target.port or 80), body)

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


def status_of(outbox):
    return subprocess.run(
        [sys.executable, "-m", "hubfsm", "status", str(outbox)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )


def test_a_kill_while_the_worker_is_stuck_in_a_request_is_delivered_by_sync_alone(
    local, tmp_path
):
    model_id = new_model(local.hub, local.api_key)
    outbox, work, marker = tmp_path / "outbox", tmp_path / "work", tmp_path / "stalled"
    with StallingProxy(local.url, marker) as proxy:
        env = dict(env_for(local), WAIT_FOR=str(marker), PARK_AFTER="3")
        proc = subprocess.Popen(
            [sys.executable, str(TRAINER), proxy.url, model_id, str(outbox), str(EPOCHS),
             "0", str(work)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env,
        )
        try:
            lines = []
            for line in proc.stdout:  # bounded: the trainer parks, or ends and closes stdout
                lines.append(line.strip())
                if line.strip() == "parked":
                    break
            assert "parked" in lines, (lines, proc.stderr.read() if proc.poll() else "")
            # The worker is inside the heartbeat the proxy holds; epochs 0-3 are journaled.
            assert marker.exists()
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
            proc.stdout.close()
            proc.stderr.close()
    assert local.hub.metrics(model_id) == []
    # Status folds the journal in without the network, and shows what sync will send.
    shown = status_of(outbox)
    assert shown.returncode == 0, shown.stderr
    row = rf"^{model_id} +4 +1 +0 +0 +- +\d+ (s|min) ago "  # not in use: written lately
    assert re.search(row, shown.stdout, re.M), shown.stdout
    # No new session first: sync alone delivers every epoch.
    done = sync(local, outbox)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["epoch"] for row in local.hub.metrics(model_id)] == [0, 1, 2, 3]
    assert any(u.model_id == model_id and u.type == "epoch" and u.epoch == 3
               for u in local.hub.audit().uploads)
    assert local.api_key not in done.stdout + done.stderr + shown.stdout


def test_a_key_revoked_mid_run_keeps_every_epoch_for_sync_with_the_key_option(local, tmp_path):
    model_id = new_model(local.hub, local.api_key)
    outbox, work, go = tmp_path / "outbox", tmp_path / "work", tmp_path / "go"
    env = dict(env_for(local), WAIT_FOR=str(go))
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER), local.url, model_id, str(outbox), str(EPOCHS), "0",
         str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        head = []
        for line in proc.stdout:  # bounded: the trainer waits for the go file
            head.append(line)
            if line.strip() == "started":
                break
        assert head[-1].strip() == "started", head
        local.hub.revoke_key(local.api_key)  # while the trainer runs
        go.touch()
        out, err = proc.communicate(timeout=60)
        out = "".join(head) + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Training ran to its end; finish() raised the refusal, naming it and the way out.
    lines = [line.strip() for line in out.splitlines()]
    assert "finishing" in lines and "done" not in lines
    assert proc.returncode == 1
    assert "AuthError: the hub refused the API key (401)" in err
    # The way out works as printed: the hub it was made for, the key from the environment.
    assert f"HUB_API_KEY=... hubfsm sync --hub {local.url} {outbox}" in err
    assert "--key " not in err
    assert err.count("hubfsm: model") == 1  # the one notice
    assert local.api_key not in out + err
    assert local.hub.metrics(model_id) == []
    shown = status_of(outbox)
    row = rf"^{model_id} +{EPOCHS} +0 +1 +0 +held +\d+ (s|min) ago "
    assert re.search(row, shown.stdout, re.M), (
        shown.stdout
    )
    # The key is valid again (the local hub gives each key its own models): sync with it.
    local.hub.add_key(local.api_key)
    env = dict(env_for(local))
    env.pop("HUB_API_KEY")
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync", str(outbox), "--hub", local.url,
         "--key", local.api_key, "--timeout", "30"],
        capture_output=True, text=True, env=env, timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["epoch"] for row in local.hub.metrics(model_id)] == list(range(EPOCHS))
    finals = [u for u in local.hub.audit().uploads if u.model_id == model_id and u.type == "final"]
    assert [u.sha256 for u in finals] == [
        hashlib.sha256(trainer_module().best_bytes()).hexdigest()
    ]
    assert local.api_key not in done.stdout + done.stderr


def test_a_redirect_mid_run_over_http_stops_sending_keeps_recording_and_sync_delivers(
    local, tmp_path, capsys
):
    import hubfsm

    model_id = new_model(local.hub, local.api_key)
    outbox = tmp_path / "outbox"
    with StallingProxy(local.url, tmp_path / "unused", hold=False) as proxy:
        s = hubfsm.Session(model_id, api_key=local.api_key, api_root=proxy.url,
                           outbox_dir=outbox, config=trainer_module().CONFIG)
        s.start()
        s.log_metrics({"loss": 1.0}, epoch=0)
        assert s.flush(timeout=10)
        proxy.redirecting.set()  # the API root "moved"
        for epoch in range(1, 5):
            s.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
        assert not s.flush(timeout=10) and s.state == "refused"
        best = tmp_path / "best.pt"
        best.write_bytes(b"best weights")
        with pytest.raises(hubfsm.HubError, match=r"redirect.*307.*check the API root") as info:
            s.finish(best, map50_95=0.5)
        s.close()
    assert local.api_key not in str(info.value)
    assert "127.0.0.2" in str(info.value)  # where it pointed, said, not followed
    assert [row["epoch"] for row in local.hub.metrics(model_id)] == [0]
    assert capsys.readouterr().err.count("hubfsm: model") == 1
    done = sync(local, outbox)  # to the right root
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["epoch"] for row in local.hub.metrics(model_id)] == [0, 1, 2, 3, 4]
    assert local.hub.record(model_id)["status"] == "trained"
