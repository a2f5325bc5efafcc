import os
import socket
import subprocess
import sys
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
    # Open against the live hub, then lose it: the session's requests go to a port that
    # nobody listens on. Retries come every few milliseconds, so only the exit deadline
    # stops them; each request at exit costs COST seconds on the session's clock, so a
    # deadline of 1 s allows at most 4 of them whatever the machine's load.
    script = (
        "import atexit, os, sys, time\n"
        "import hubfsm\n"
        "from hubfsm.core.config import CoreConfig, Limits\n"
        "from hubfsm.core.config import ChannelPolicies, RetryPolicy\n"
        "from hubfsm.runtime.factory import build\n"
        "from hubfsm.runtime.settings import Settings\n"
        "from transports.http import RequestsTransport\n"
        "COST = 0.3\n"
        "class Clock:\n"
        "    extra = 0.0\n"
        "    def __call__(self): return time.monotonic() + self.extra\n"
        "    def sleep(self, seconds): time.sleep(max(0.0, seconds))\n"
        "    def sleep_until(self, when): self.sleep(when - self())\n"
        "clock = Clock()\n"
        "class Link:\n"
        "    exiting, at_exit = False, 0\n"
        "    def send(self, request):\n"
        "        if self.exiting:\n"
        "            self.at_exit += 1\n"
        "            clock.extra += COST\n"
        "        return self.to.send(request)\n"
        "link = Link()\n"
        f"link.to = RequestsTransport(os.environ['HUB_API_KEY'], api_root={local.url!r})\n"
        "fast = RetryPolicy(base=0.005, cap=0.01, max_attempts=10_000, deadline=1e6)\n"
        "config = CoreConfig(limits=Limits(metrics=0.01),\n"
        "    policies=ChannelPolicies(metrics=fast))\n"
        f"settings = Settings.resolve({model_id!r}, exit_timeout=1.0, config=config)\n"
        "atexit.register(lambda: print('requests at exit:', link.at_exit))\n"
        "s = hubfsm.Session.compose(build(settings, transport=link, clock=clock))\n"
        "s.start()\n"
        "dead = 'http://127.0.0.1:%d' % int(sys.argv[1])\n"
        "link.to = RequestsTransport(os.environ['HUB_API_KEY'], api_root=dead)\n"
        "for e in range(4): s.log_metrics({'loss': 1.0}, epoch=e)\n"
        # Registered after the session's own exit hook, so it runs before it.
        "atexit.register(lambda: setattr(link, 'exiting', True))\n"
    )
    # Bound, never listening, for as long as the script runs: connections are refused,
    # and no other process can start listening there meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
        done = subprocess.run([sys.executable, "-c", script, str(dead_port)],
                              capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("hubfsm: model")]
    assert len(lines) == 1 and "4 epochs of metrics not on the hub yet" in lines[0]
    assert "hubfsm sync" in lines[0]
    # The exit kept trying, and stopped once the deadline had passed on its clock.
    sent = int(done.stdout.split("requests at exit:")[1])
    assert 1 <= sent <= 4, done.stdout


def test_an_ignored_signal_stays_ignored():
    # SIGINT of a job started in the background is ignored: the process goes on after it.
    # Before, the hooks took it anyway and closed the session there, and every later
    # epoch was refused ("not allowed in state 'resumable'").
    import signal

    from hubfsm.runtime.exits import ExitHooks

    closed = []
    term = signal.getsignal(signal.SIGTERM)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        hooks = ExitHooks(closed.append, signals=True)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) != term  # SIGTERM still taken
        hooks.remove()
        assert signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, before)
    assert closed == []
