"""What a person reads on standard error while a custom trainer runs: one line per event.

Each test runs ``console_trainer.py`` as a child process against a real local hub and
reads its standard error as a terminal would show it.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import queue
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import hubfsm
from hubfsm.core.machine import TRAITS
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.console import LOST_AFTER, Console, duration
from hubfsm.transport import Response, TransportError
from tests.services import restore_sigint
from tests.support import FAST, KEY

TRAINER = Path(__file__).parent / "console_trainer.py"
ROOT = Path(__file__).parents[3]
#: Seconds any one expected line may take (a bound, not a measurement).
PATIENCE = 60.0


class Trainer:
    """The trainer as a child process; its output read line by line as it comes."""

    def __init__(self, local: LocalHub, work: Path, epochs: int) -> None:
        env = dict(os.environ)
        env.update(
            ULTRALYTICS_HUB_API=local.url,
            ULTRALYTICS_HUB_WEB=local.url,
            HUB_API_KEY=local.api_key,
            HUBFSM_OUTBOX=str(work / "outbox"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        self.process = subprocess.Popen(
            [sys.executable, str(TRAINER), str(epochs)],
            cwd=work,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=restore_sigint,  # noqa: PLW1509 - only resets one signal
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out, None)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err, self.stderr)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: queue.Queue[str], keep: list[str] | None) -> None:
        for line in stream:  # type: ignore[attr-defined]
            if keep is not None:
                keep.append(line.rstrip("\n"))
            into.put(line.rstrip("\n"))

    def expect(self, line: str) -> None:
        """Wait for ``line`` on stdout (bounded)."""
        try:
            got = self.out.get(timeout=PATIENCE)
        except queue.Empty:
            raise AssertionError(f"no {line!r} on stdout; stderr: {self.stderr}") from None
        assert got == line, f"expected {line!r} on stdout, got {got!r}; stderr: {self.stderr}"

    def said(self) -> str:
        """The next line on stderr (bounded)."""
        return self.err.get(timeout=PATIENCE)

    def go_on(self) -> None:
        """Let the trainer go on to its next epoch."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def end(self) -> int:
        """Wait for the trainer to exit; its exit status."""
        code = self.process.wait(timeout=PATIENCE)
        for reader in self._readers:
            reader.join(PATIENCE)
        return code


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    hub = LocalHub(tmp_path / "hub").start()
    try:
        yield hub
    finally:
        hub.stop()


def run_through(trainer: Trainer, epochs: int) -> None:
    for epoch in range(epochs):
        trainer.expect(f"epoch {epoch}")
        trainer.go_on()
    trainer.expect("finishing")


def test_a_clean_run_prints_nothing_on_stderr(local: LocalHub, tmp_path: Path) -> None:
    trainer = Trainer(local, tmp_path, epochs=3)
    run_through(trainer, 3)
    trainer.expect("done")
    assert trainer.end() == 0
    assert trainer.stderr == []


def on_the_hub(local: LocalHub, epoch: int) -> None:
    """Wait (bounded) until the hub holds ``epoch``'s metrics and checkpoint."""
    for _ in range(int(PATIENCE / 0.01)):
        models = local.hub.store.list_models()
        if models:
            record = local.hub.record(models[0].id) or {}
            epochs = [int(row["epoch"]) for row in local.hub.metrics(models[0].id)]
            if epoch in epochs and record.get("checkpoint_epoch") == epoch:
                return
        time.sleep(0.01)
    raise AssertionError(f"epoch {epoch} not on the hub within {PATIENCE} s")


def test_an_outage_prints_two_lines_lost_and_back(local: LocalHub, tmp_path: Path) -> None:
    trainer = Trainer(local, tmp_path, epochs=3)
    trainer.expect("epoch 0")
    # Epoch 0 delivered first, so the outage meets epoch 1's metrics and not epoch 0's
    # checkpoint still on its way (on a loaded machine it could be).
    on_the_hub(local, 0)
    port, url = local.port, local.url
    local.stop()
    trainer.go_on()  # epoch 1 is logged while nothing listens
    trainer.expect("epoch 1")
    lost = trainer.said()
    assert lost.startswith(f"hubfsm: lost the hub at {url} (")
    assert "refused the connection" in lost
    assert "what is queued waits until it is back: " in lost
    assert "1 epoch of metrics" in lost  # epoch 0 is on the hub
    restarted = LocalHub(local.data_dir, port=port).start()
    try:
        trainer.go_on()
        back = trainer.said()
        assert back.startswith(f"hubfsm: the hub at {url} is back after ")
        run_through_rest(trainer)
        assert trainer.end() == 0
        model = restarted.hub.store.list_models()[0]
        assert len(restarted.hub.metrics(model.id)) == 3
    finally:
        restarted.stop()
    assert trainer.stderr == [lost, back]


def run_through_rest(trainer: Trainer) -> None:
    trainer.expect("epoch 2")
    trainer.go_on()
    trainer.expect("finishing")
    trainer.expect("done")


def test_a_refusal_prints_one_line(local: LocalHub, tmp_path: Path) -> None:
    trainer = Trainer(local, tmp_path, epochs=2)
    trainer.expect("epoch 0")
    local.hub.revoke(local.hub.list_keys()[0].id)
    trainer.go_on()
    trainer.expect("epoch 1")
    trainer.go_on()
    trainer.expect("finishing")
    trainer.expect("refused: AuthError")
    assert trainer.end() == 3
    assert len(trainer.stderr) == 1, trainer.stderr
    (line,) = trainer.stderr
    assert line.startswith("hubfsm: model ")
    assert "the hub refused the API key (401)" in line
    # The command works as printed: the new key from the environment, this hub named.
    assert f"`HUB_API_KEY=... hubfsm sync --hub {local.url} " in line


@pytest.mark.slow  # a trainer process waits out a dead hub
def test_finish_with_the_hub_down_says_what_it_waits_for_and_ctrl_c_keeps_it_for_sync(
    local: LocalHub, tmp_path: Path
) -> None:
    trainer = Trainer(local, tmp_path, epochs=1)
    trainer.expect("epoch 0")
    port = local.port
    local.stop()
    trainer.go_on()
    trainer.expect("finishing")
    lines = [trainer.said()]
    while "waiting up to" not in lines[-1]:
        lines.append(trainer.said())
    waiting = lines[-1]
    assert f"waiting up to {duration(3600)} for the hub at {local.url} to take " in waiting
    assert "final weights; Ctrl-C stops waiting and keeps it all in " in waiting
    trainer.process.send_signal(signal.SIGINT)
    trainer.expect("interrupted")
    assert trainer.end() == 130
    said = trainer.stderr
    assert len(said) == 3, said  # lost, waiting, and what Ctrl-C left where
    assert said[0].startswith("hubfsm: lost the hub at ")
    assert said[1] == waiting
    assert "not on the hub yet; kept in " in said[2]
    assert not any("session.closed_with_pending" in line for line in said)
    # The command works as printed, once the hub is back: it names the hub and the key's
    # variable, so it needs no ULTRALYTICS_HUB_API.
    command = shlex.split(waiting.rsplit("`", 2)[1])
    assert command[:5] == ["HUB_API_KEY=...", "hubfsm", "sync", "--hub", local.url]
    restarted = LocalHub(local.data_dir, port=port).start()
    try:
        env = dict(
            {k: v for k, v in os.environ.items() if k != "ULTRALYTICS_HUB_API"},
            HUB_API_KEY=restarted.api_key,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        done = subprocess.run(
            [sys.executable, "-m", "hubfsm", *command[2:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        model = restarted.hub.store.list_models()[0]
        assert restarted.hub.record(model.id)["has_best_weights"]
    finally:
        restarted.stop()


def test_the_upload_bar_shows_in_a_terminal_named_after_the_file_given(
    local: LocalHub, tmp_path: Path
) -> None:
    # The other tests read stderr through a pipe and see no bar at all; here stderr is a
    # terminal, and the bar names the trainer's last.pt, not the hub's field name best.pt.
    main, side = pty.openpty()
    # A terminal 120 columns wide (a new one has none, and tqdm would fit its bar to that).
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ)
    env.update(
        ULTRALYTICS_HUB_API=local.url,
        HUB_API_KEY=local.api_key,
        HUBFSM_OUTBOX=str(tmp_path / "outbox"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    process = subprocess.Popen(
        [sys.executable, str(TRAINER), "1"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=side,
        text=True,
    )
    os.close(side)
    try:
        out, _ = process.communicate("\n", timeout=PATIENCE)
    finally:
        shown = b""
        while select.select([main], [], [], 1.0)[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other end closed
                break
            if not chunk:
                break
            shown += chunk
        os.close(main)
    assert process.returncode == 0, shown
    assert out.splitlines()[-1] == "done"
    text = shown.decode(errors="replace")
    assert "Uploading last.pt" in text and "100%" in text, text
    assert "best.pt" not in text


def test_model_urls_name_the_hub_given_as_api_root(local: LocalHub, tmp_path: Path) -> None:
    # The README's example with api_root= and no environment: the model page printed must
    # be the local hub's, not the public hub's.
    script = (
        "import hubfsm\n"
        f"with hubfsm.Session('yolov8n.yaml', api_root={local.url!r}, "
        f"api_key={local.api_key!r}, train_args={{'data': 'coco8.yaml'}}) as s:\n"
        "    print(s.model_url)\n"
        "    s.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ULTRALYTICS_HUB")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=PATIENCE, check=False,
    )
    assert done.returncode == 0, done.stderr
    model = local.hub.store.list_models()[0]
    assert done.stdout == f"{local.url}/models/{model.id}\n"
    assert done.stderr == ""


def test_a_name_that_does_not_resolve_fails_at_first_contact_like_a_refused_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    def no_such_name(host: str, *args: object, **kwargs: object) -> object:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with structlog.testing.capture_logs() as logs, pytest.raises(
        hubfsm.HubUnavailableError
    ) as raised:
        # The README's example as a new user runs it: no API root anywhere.
        hubfsm.Session("yolov8n.yaml", api_key=KEY, config=FAST, open_timeout=600)
    attempts = [e for e in logs if e["event"] == "request.failed"]
    # The brief first-contact schedule, not the control channel's 600 s of patience.
    assert 1 <= len(attempts) <= 4
    assert all(e["kind"] == "dns" and e["log_level"] == "info" for e in attempts)
    message = str(raised.value)
    assert "does not resolve" in message
    assert "closed since 2026-07-31" in message
    assert "ULTRALYTICS_HUB_API" in message
    assert asked and set(asked) == {"api.ultralytics.com"}


def test_one_or_two_failed_attempts_in_a_row_print_nothing() -> None:
    # The everyday faults that retries absorb: nobody needs to read about them.
    core = types.SimpleNamespace(
        state="training",
        answered=True,
        machine=types.SimpleNamespace(failed=False, sends=True, traits=TRAITS["training"]),
        pending=lambda: {"metrics": 2, "checkpoint": 0, "final": 0},
    )
    out = io.StringIO()
    console = Console("the hub", stream=out)
    down = TransportError("timeout", "POST /v1/models/x: 127.0.0.1:1 made no progress")
    up = Response(200, {"success": True, "message": "", "data": {}})
    for now in range(5):
        for _ in range(LOST_AFTER - 1):
            console.outcome(core, "metrics", down, now=float(now))  # type: ignore[arg-type]
        console.outcome(core, "metrics", up, now=now + 0.5)  # type: ignore[arg-type]
    assert out.getvalue() == ""
    for _ in range(LOST_AFTER + 5):
        console.outcome(core, "metrics", down, now=10.0)  # type: ignore[arg-type]
    console.outcome(core, "heartbeat", up, now=70.0)  # type: ignore[arg-type]
    # The metrics go on failing while the rest is answered: old news, not a new outage.
    for _ in range(LOST_AFTER + 5):
        console.outcome(core, "metrics", down, now=80.0)  # type: ignore[arg-type]
        console.outcome(core, "heartbeat", up, now=80.0)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "hubfsm: lost the hub (127.0.0.1:1 made no progress); training goes on, and what "
        "is queued waits until it is back: 2 epochs of metrics",
        "hubfsm: the hub is back after 60 s",
    ]


def test_a_hub_lost_once_training_ended_does_not_say_training_goes_on() -> None:
    core = types.SimpleNamespace(
        state="final_uploading",
        answered=True,
        machine=types.SimpleNamespace(failed=False, sends=True, traits=TRAITS["final_uploading"]),
        pending=lambda: {"metrics": 1, "checkpoint": 0, "final": 1},
    )
    out = io.StringIO()
    console = Console("the hub", stream=out)
    down = TransportError("refused", "POST /v1/models/x/upload: 127.0.0.1:1 refused the connection")
    for _ in range(LOST_AFTER):
        console.outcome(core, "final", down, now=1.0)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "hubfsm: lost the hub (127.0.0.1:1 refused the connection); what is queued waits "
        "until it is back: 1 epoch of metrics, final weights",
    ]


def _opening_core() -> types.SimpleNamespace:
    """What the console reads of a core that is still opening its model."""
    return types.SimpleNamespace(
        state="resolved",
        answered=False,
        machine=types.SimpleNamespace(failed=False, sends=True, traits=TRAITS["resolved"]),
        pending=lambda: {"metrics": 0, "checkpoint": 0, "final": 0},
    )


def test_a_hub_that_does_not_answer_at_open_is_named_once_with_how_long() -> None:
    core = _opening_core()
    out = io.StringIO()
    console = Console("the hub at http://127.0.0.1:8000", open_timeout=120.0, stream=out)
    busy = Response(503, {"success": False, "message": "busy", "data": {}})
    for attempt in range(10):
        console.outcome(core, "control", busy, now=float(attempt))  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "hubfsm: no answer yet from the hub at http://127.0.0.1:8000 (503 busy); trying for "
        "up to 2 min to open the model"
    ]


def test_the_opening_line_is_said_once_and_the_hub_back_closes_it() -> None:
    core = _opening_core()
    out = io.StringIO()
    console = Console("the hub at http://127.0.0.1:8000", open_timeout=120.0, stream=out)
    console.still_opening(110.0, 10.0)
    busy = Response(503, {"success": False, "message": "busy", "data": {}})
    for attempt in range(5):  # the lost line would say the same again
        console.outcome(core, "control", busy, now=120.0 + attempt)  # type: ignore[arg-type]
    console.still_opening(130.0, 10.0)
    ok = Response(200, {"success": True, "message": "", "data": {}})
    console.outcome(core, "control", ok, now=160.0)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "hubfsm: no answer yet from the hub at http://127.0.0.1:8000 after 10 s; trying for "
        "up to 2 min to open the model",
        "hubfsm: the hub at http://127.0.0.1:8000 is back after 60 s",
    ]


def test_ctrl_c_in_finish_waiting_for_a_lost_hub_does_not_wait_again_as_it_closes(
    tmp_path: Path,
) -> None:
    # The line says "Ctrl-C stops waiting and keeps it all"; before, closing then waited
    # its whole exit_timeout (10 s) more, in silence, for the hub that was gone.
    import _thread

    best = tmp_path / "best.pt"
    best.write_bytes(b"the best weights")
    local = LocalHub(tmp_path / "hub").start()
    s = hubfsm.Session(
        "yolov8n.yaml",
        api_root=local.url,
        api_key=local.api_key,
        config=FAST,
        outbox_dir=tmp_path / "outbox",
        train_args={"data": "coco8.yaml"},
    )
    assert s.exit_timeout == 10.0  # the default the user has
    s.start()
    s.log_metrics({"train/loss": 1.0}, epoch=0)
    assert s.flush(timeout=10)
    local.stop()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, _thread.interrupt_main)  # Ctrl-C, a second into the wait
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            s.finish(best, map50_95=0.5)
        started = time.monotonic()
        s.close()
        took = time.monotonic() - started
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert took < 5.0, took
    assert s.pending()["final"] == 1  # kept for `hubfsm sync`
