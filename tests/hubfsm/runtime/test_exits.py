import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubfsm.hub.server import LocalHub

from tests.support import new_model

SCRIPT = Path(__file__).parent / "exit_script.py"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub")) as hub:
        yield hub


def run(api, model_id, how, key, outbox):
    env = dict(os.environ, HUB_API_KEY=key, HUBFSM_OUTBOX=str(outbox))
    return subprocess.run([sys.executable, str(SCRIPT), api, model_id, how],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("how", ["exit", "signal"])
def test_exit_and_sigterm_flush_what_is_pending(local, tmp_path, how):
    model_id = new_model(local.hub, local.api_key)
    done = run(local.url, model_id, how, local.api_key, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not reached" not in done.stdout
    if how == "signal":
        assert "user handler ran" in done.stdout  # chained to the application's handler
    assert [r["epoch"] for r in local.hub.metrics(model_id)] == [0, 1, 2]
    assert local.api_key not in done.stdout + done.stderr
    # The hub heard why the run stopped, after its last epoch.
    said = "SIGTERM" if how == "signal" else "the process exited before finish"
    assert local.hub.record(model_id)["interrupted_by"] == said


def test_a_dead_hub_at_exit_costs_the_deadline_and_one_line(local, tmp_path):
    model_id = new_model(local.hub, local.api_key)
    env = dict(os.environ, HUB_API_KEY=local.api_key, HUBFSM_OUTBOX=str(tmp_path))
    # open against the live hub, then lose it: the session's requests go to a port
    # that nobody listens on
    script = (
        "import hubfsm, os, sys\n"
        "from hubfsm.core.engine import CoreConfig, Limits\n"
        "from transports.http import RequestsTransport\n"
        "class Link:\n"
        "    def send(self, request): return self.to.send(request)\n"
        "link = Link()\n"
        f"link.to = RequestsTransport(os.environ['HUB_API_KEY'], api_root={local.url!r})\n"
        f"s = hubfsm.Session({model_id!r}, transport=link, exit_timeout=1.0,\n"
        "    config=CoreConfig(limits=Limits(metrics=0.01)))\n"
        "s.start()\n"
        "dead = 'http://127.0.0.1:%d' % int(sys.argv[1])\n"
        "link.to = RequestsTransport(os.environ['HUB_API_KEY'], api_root=dead)\n"
        "for e in range(4): s.log_metrics({'loss': 1.0}, epoch=e)\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, str(dead_port)], capture_output=True,
                          text=True, env=env, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("hubfsm: model")]
    assert len(lines) == 1 and "4 epochs of metrics not on the hub yet" in lines[0]
    assert "hubfsm sync" in lines[0]
    assert elapsed < 30
