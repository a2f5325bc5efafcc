"""hubfsm is a library: it prints nothing, and its logs go through ``logging``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hubfsm.hub.domain import Hub
from hubfsm.hub.server import LocalHub
from tests.support import FAST, KEY

SCRIPT = """
import pathlib, sys
import hubfsm
{setup}
with hubfsm.Session("tiny.yaml", train_args={{"data": "toy.yaml", "epochs": 2}}) as session:
    print("user line")
    for epoch in range(2):
        weights = pathlib.Path(f"epoch{{epoch}}.pt")
        weights.write_bytes(b"weights %d" % epoch)
        session.log_metrics({{"train/loss": 1 / (epoch + 1)}})
        session.save_checkpoint(weights, epoch=epoch, is_best=True)
    session.finish(weights, map50_95=0.4)
    print("state", session.state)
"""


@pytest.fixture
def local(tmp_path: Path):
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def run(local: LocalHub, tmp_path: Path, setup: str = "") -> subprocess.CompletedProcess[str]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    script = work / "first.py"
    script.write_text(SCRIPT.format(setup=textwrap.dedent(setup)))
    env = dict(
        os.environ,
        ULTRALYTICS_HUB_API=local.url,
        ULTRALYTICS_HUB_WEB=local.url,
        HUB_API_KEY=local.api_key,
        HUBFSM_OUTBOX=str(tmp_path / "outbox"),
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert local.api_key not in done.stdout + done.stderr
    return done


def test_a_session_prints_only_what_the_user_prints(local: LocalHub, tmp_path: Path) -> None:
    done = run(local, tmp_path)
    assert done.stdout.splitlines() == ["user line", "state done"]
    # No logging set up: the last-resort handler would show warnings; a clean run has none.
    assert done.stderr == ""


def test_an_application_sees_the_events_through_logging(
    local: LocalHub, tmp_path: Path
) -> None:
    setup = """
        import logging
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(message)s")
    """
    done = run(local, tmp_path, setup)
    assert done.stdout.splitlines() == ["user line", "state done"]
    lines = done.stderr.splitlines()
    assert any(line.startswith("hubfsm ") and "session.transition" in line for line in lines)
    assert any(line.startswith("hubfsm.http ") and "http.response" in line for line in lines)
    assert "dest='done'" in done.stderr


def test_an_application_that_configured_structlog_keeps_its_set_up(
    local: LocalHub, tmp_path: Path
) -> None:
    setup = """
        import structlog
        def mine(logger, method, event_dict):
            sys.stderr.write("mine " + event_dict["event"] + "\\n")
            raise structlog.DropEvent
        structlog.configure(processors=[mine])
    """
    done = run(local, tmp_path, setup)
    assert done.stdout.splitlines() == ["user line", "state done"]
    assert "mine session.opened" in done.stderr.splitlines()


def test_a_set_up_reset_before_the_session_leaves_no_print_behind(
    local: LocalHub, tmp_path: Path
) -> None:
    # An application's tests that configure structlog for a while and reset it after
    # (capture_logs, then reset_defaults): structlog's defaults print to standard output,
    # so hubfsm hands its events to logging again once nobody configures structlog.
    setup = """
        import structlog
        from hubfsm.logs import get_logger
        with structlog.testing.capture_logs():
            get_logger("hubfsm").info("before.session")
        structlog.reset_defaults()
    """
    done = run(local, tmp_path, setup)
    assert done.stdout.splitlines() == ["user line", "state done"]
    assert done.stderr == ""


def test_a_long_retry_wait_is_logged_at_info_when_it_begins(
    monkeypatch: pytest.MonkeyPatch, hub: Hub
) -> None:
    import random

    import structlog

    import hubfsm
    import hubfsm.runtime.driver as driver
    from transports.faults import FaultInjectingTransport, FaultMix
    from transports.memory import InMemoryTransport

    down = FaultInjectingTransport(
        InMemoryTransport(hub, KEY), random.Random(0), FaultMix(connection_error=1.0)
    )
    # On a clock 1000 times as fast, the 60 s rest after a round of retries is 60 ms:
    # announce waits from 50 ms on, which only that rest reaches.
    monkeypatch.setattr(driver, "LONG_WAIT", 0.05)
    with structlog.testing.capture_logs() as logs, pytest.raises(hubfsm.HubUnavailableError):
        hubfsm.Session(
            "yolov8n.yaml", transport=down, config=FAST, open_timeout=0.5
        )
    waits = [e for e in logs if e["event"] == "request.waiting"]
    # Detail for -v: a person hears of the outage from the session's console instead.
    assert waits and all(e["log_level"] == "info" for e in waits)
    assert all(e["seconds"] >= 0.05 and e["channel"] == "control" for e in waits)
