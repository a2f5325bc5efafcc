"""Fixtures for tests over real loopback sockets: hubs, subprocesses, and a key-leak guard.

Every test in this directory gets the ``leaks`` guard (autouse). Each test registers the
API keys it handles with ``leaks.watch(key)``; at teardown the guard fails the test if a
key shows up in a structlog event, a stdlib log record, captured stdout/stderr (file
descriptor level, so subprocesses that inherit them count too), or any text the test
handed to ``leaks.check``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests
import structlog

import hubfsm
from hubfsm.core.config import ChannelPolicies, CoreConfig, Limits, RetryPolicy
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.factory import Parts, build
from hubfsm.runtime.settings import Settings

#: Retries in milliseconds, limits far below the hub's, so a session takes a second or two.
#: Not ``tests.support.FAST`` (the shipped behaviour scaled): set for real loopback sockets.
FAST_POLICY = RetryPolicy(base=0.02, cap=0.1, max_attempts=6, deadline=5.0)
FAST = CoreConfig(
    limits=Limits(
        metrics=0.02, checkpoint=0.05, heartbeat=0.3, park=0.05, checkpoint_grace=0.01
    ),
    policies=ChannelPolicies(FAST_POLICY, FAST_POLICY, FAST_POLICY, FAST_POLICY, FAST_POLICY),
)

#: Bound of any single HTTP call a test makes itself.
HTTP_TIMEOUT = 10.0

ARCHITECTURE = "# a two-layer toy network\nnc: 2\nlayers: [[-1, 1, Linear, [2, 1]]]\n"


# -- the key-leak guard -------------------------------------------------------------------


class LeakGuard:
    """Collects everything a test printed or logged, and checks it for API keys."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._texts: list[tuple[str, str]] = []

    def watch(self, secret: str) -> str:
        """Check for ``secret`` at teardown; returns it for convenience."""
        assert secret, "an empty secret would match everything"
        if secret not in self.secrets:
            self.secrets.append(secret)
        return secret

    def check(self, text: object, where: str = "text") -> None:
        """Keep ``text`` (or an exception's message, repr and traceback) for the check."""
        if isinstance(text, BaseException):
            rendered = "".join(traceback.format_exception(text))
            self._texts.append((where, f"{text}\n{text!r}\n{rendered}"))
        else:
            self._texts.append((where, str(text)))
        self.assert_clean()

    def assert_clean(self, extra: Sequence[tuple[str, str]] = ()) -> None:
        """Fail if any watched secret is in what was collected so far."""
        sources = [("structlog event", repr(event)) for event in self.events]
        sources += self._texts + list(extra)
        for secret in self.secrets:
            for where, text in sources:
                assert secret not in text, f"an API key leaked into a {where}: {text[:300]!r}"

    def of(self, event: str) -> list[dict[str, Any]]:
        """The captured structlog events named ``event``."""
        return [e for e in list(self.events) if e.get("event") == event]


@pytest.fixture(autouse=True)
def leaks(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[LeakGuard]:
    guard = LeakGuard()
    caplog.set_level(logging.DEBUG)
    stamp = structlog.processors.TimeStamper(fmt=None, key="t", utc=True)
    # A test elsewhere may have left a level filter configured (the CLI sets one when run
    # in-process), which would hide info and debug events from the capture below.
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with structlog.testing.capture_logs(processors=[stamp]) as events:
            guard.events = events
            yield guard
    finally:
        structlog.configure(**saved)
    out, err = capfd.readouterr()
    # Echo what was captured, so a failing test still shows it.
    sys.stdout.write(out)
    sys.stderr.write(err)
    records = []
    every = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    for record in every:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(record.exc_info[1]))
        records.append(("log record", text))
    assert guard.secrets, "the test registered no key with leaks.watch(), so checked nothing"
    guard.assert_clean(records + [("captured stdout", out), ("captured stderr", err)])


# -- hubs -----------------------------------------------------------------------------------


@pytest.fixture
def hubs(leaks: LeakGuard) -> Iterator[Callable[..., LocalHub]]:
    """Start local hubs (``hubs(data_dir, **options)``); all are stopped at the end."""
    started: list[LocalHub] = []

    def start(data_dir: Path, **options: Any) -> LocalHub:
        local = LocalHub(data_dir, **options).start()
        leaks.watch(local.api_key)
        started.append(local)
        return local

    yield start
    for local in started:
        local.stop()


@pytest.fixture
def hub(hubs: Callable[..., LocalHub], tmp_path: Path) -> LocalHub:
    """A local hub on a free loopback port with a fresh data directory."""
    return hubs(tmp_path / "hub")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- subprocesses ---------------------------------------------------------------------------


def hubfsm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hubfsm", *args]


def _restore_sigint() -> None:
    # A shell that started us in the background may have left SIGINT ignored; the child
    # would inherit that, and Ctrl-C could not stop it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Spawned:
    """A running ``hubfsm`` subprocess whose output is read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_restore_sigint,  # noqa: PLW1509 - only resets one signal
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out, True)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _read(self, stream: Any, into: list[str], lines: bool) -> None:
        for line in stream:
            into.append(line)
            if lines:
                self._lines.put(line)

    def wait_for_line(self, needle: str, timeout: float) -> str:
        """Block until stdout has a line containing ``needle``; return all stdout so far."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None and self._lines.empty():
                raise AssertionError(
                    f"no {needle!r} within {timeout} s; stdout: {''.join(self.out)!r}, "
                    f"stderr: {''.join(self.err)!r}"
                )
            try:
                line = self._lines.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if needle in line:
                return "".join(self.out)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig`` and wait; (exit status, seconds it took). Killed if it hangs."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
        finally:
            for reader in self._readers:
                reader.join(5)
        return code, time.monotonic() - started

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


@pytest.fixture
def cli(tmp_path: Path, leaks: LeakGuard) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``hubfsm *args`` to completion; its stdout and stderr go to the leak guard."""

    def run(
        *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            hubfsm_command(*args),
            cwd=tmp_path,
            env=env if env is not None else dict(os.environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        leaks.check(done.stdout, f"stdout of hubfsm {' '.join(args)[:60]}")
        leaks.check(done.stderr, f"stderr of hubfsm {' '.join(args)[:60]}")
        return done

    return run


@pytest.fixture
def spawn(tmp_path: Path, leaks: LeakGuard) -> Iterator[Callable[..., Spawned]]:
    """Start ``hubfsm`` subprocesses (``spawn(*args)``); any still running is killed at the end.

    Everything they printed goes to the leak guard.
    """
    running: list[Spawned] = []

    def start(*args: str) -> Spawned:
        spawned = Spawned(hubfsm_command(*args), cwd=tmp_path)
        running.append(spawned)
        return spawned

    yield start
    for spawned in running:
        if spawned.process.poll() is None:
            spawned.process.kill()
            spawned.process.wait(5)
        for reader in spawned._readers:
            reader.join(5)
        leaks.check(spawned.stdout, "stdout of a hubfsm subprocess")
        leaks.check(spawned.stderr, "stderr of a hubfsm subprocess")


@attrs.frozen
class Served:
    """A ``hubfsm hub serve`` subprocess and how to reach it."""

    spawned: Spawned
    url: str
    key: str
    key_file: Path
    banner: str


@pytest.fixture
def serve_hub(spawn: Callable[..., Spawned], leaks: LeakGuard) -> Callable[..., Served]:
    """Run ``hubfsm hub serve --port 0 --data DIR`` and wait for its banner."""

    def start(data_dir: Path, *extra: str) -> Served:
        spawned = spawn("hub", "serve", "--port", "0", "--data", str(data_dir), *extra)
        banner = spawned.wait_for_line("Press Ctrl-C", timeout=15.0)
        key_file = data_dir / "api_key"
        key = leaks.watch(key_file.read_text(encoding="ascii").strip())
        url = next(
            line.split("=", 1)[1].strip()
            for line in banner.splitlines()
            if "export ULTRALYTICS_HUB_API=" in line
        )
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), banner
        return Served(spawned, url, key, key_file, banner)

    return start


# -- one training run, and what the hub has afterwards -------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def epoch_metrics(epoch: int) -> dict[str, float]:
    return {"train/loss": round(1.0 / (epoch + 1), 6), "metrics/mAP50-95(B)": epoch / 100}


@attrs.define
class Run:
    """What a training run handed to its session."""

    session: hubfsm.Session
    model_id: str
    epochs: int
    checkpoints: dict[int, str]  # epoch -> sha256 of the file offered
    best_sha: str
    seconds: float
    #: The session's parts, when the test asked for them (``train(..., parts=True)``).
    parts: Parts | None = None


def train(
    api_root: str,
    key: str,
    workdir: Path,
    *,
    epochs: int = 6,
    config: CoreConfig = FAST,
    pause: float = 0.03,
    seed: int = 0,
    during: Callable[[int, hubfsm.Session], None] | None = None,
    open_timeout: float = 15.0,
    finish_timeout: float = 30.0,
    parts: bool = False,
) -> Run:
    """Create a model from a local .yaml, train ``epochs`` epochs with checkpoints, finish.

    ``during(epoch, session)`` runs before each epoch's metrics, to disturb the hub.
    With ``parts``, the session is composed from parts built first (what its constructor
    does), and the run keeps them, for tests that look at the driver or the core.
    """
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    arch = workdir / "tiny-net.yaml"
    arch.write_text(ARCHITECTURE)
    rng = random.Random(seed)
    checkpoints: dict[int, str] = {}
    train_args = {"data": "toy-set.yaml", "epochs": epochs, "batch": 4, "imgsz": 32}
    options: dict[str, Any] = {
        "api_key": key,
        "api_root": api_root,
        "web_root": api_root,
        "train_args": train_args,
        "config": config,
        "open_timeout": open_timeout,
        "seed": seed,
    }
    built = build(Settings.resolve(str(arch), **options)) if parts else None
    opened = hubfsm.Session.compose(built) if built else hubfsm.Session(str(arch), **options)
    with opened as session:
        assert session.state == "training"
        model_id = session.model_id
        assert model_id is not None
        for epoch in range(epochs):
            if during is not None:
                during(epoch, session)
            session.log_metrics(epoch_metrics(epoch), epoch=epoch)
            data = rng.randbytes(96 * 1024 + epoch)
            path = workdir / f"epoch{epoch}.pt"
            path.write_bytes(data)
            checkpoints[epoch] = sha256(data)
            session.save_checkpoint(path, epoch=epoch, is_best=epoch % 2 == 0)
            time.sleep(pause)
        best = rng.randbytes(512 * 1024)
        (workdir / "best.pt").write_bytes(best)
        session.finish(workdir / "best.pt", map50_95=0.61, timeout=finish_timeout)
        assert session.state == "done"
    seconds = time.monotonic() - started
    return Run(session, model_id, epochs, checkpoints, sha256(best), seconds, built)


def _get(url: str, key: str) -> requests.Response:
    """GET with the key, again and again while a hub with injected faults says no."""
    for _ in range(30):
        try:
            reply = requests.get(url, headers={"x-api-key": key}, timeout=HTTP_TIMEOUT)
        except requests.ConnectionError:
            continue
        if reply.status_code == 200:
            return reply
        assert reply.status_code in (429, 500, 502, 503, 504), (reply.status_code, reply.text)
    raise AssertionError(f"GET {url} kept failing")


def check_on_hub(api_root: str, key: str, run: Run) -> dict[str, Any]:
    """Read the model back over HTTP; every epoch and the final weights must be there."""
    base = f"{api_root}/v1/models/{run.model_id}"
    record = _get(base, key).json()["data"]
    assert record["status"] == "trained"
    assert record["has_best_weights"] is True
    assert record["cfg"] == "tiny-net.yaml"
    assert record["epochs"] == run.epochs
    assert record["train_args"]["data"] == "toy-set.yaml"
    assert record["map"] == pytest.approx(0.61)
    listed = _get(f"{base}/metrics", key).json()["data"]
    assert [row["epoch"] for row in listed] == list(range(run.epochs))
    for row in listed:
        assert row["metrics"] == epoch_metrics(row["epoch"])
    best = _get(f"{base}/weights/best", key)
    assert sha256(best.content) == run.best_sha
    assert best.headers["X-Checksum-Sha256"] == run.best_sha
    if record["has_last_weights"]:
        last = _get(f"{base}/weights/last", key)
        assert sha256(last.content) in run.checkpoints.values()
    return dict(record)


def check_applied_once(audits: list[Any], run: Run) -> None:
    """Across the audits of one or more hub lifetimes: each epoch and upload landed once."""
    applied: dict[tuple[str, int], int] = {}
    uploads = []
    for audit in audits:
        for key, count in audit.metrics_applied.items():
            applied[key] = applied.get(key, 0) + count
        uploads.extend(u for u in audit.uploads if u.model_id == run.model_id)
    assert applied == {(run.model_id, e): 1 for e in range(run.epochs)}
    finals = [u for u in uploads if u.type == "final"]
    assert [(u.sha256, u.size) for u in finals] == [(run.best_sha, 512 * 1024)]
    epochs = [u for u in uploads if u.type == "epoch"]
    assert len({u.epoch for u in epochs}) == len(epochs), "a checkpoint landed twice"
    for upload in epochs:
        assert upload.sha256 == run.checkpoints[upload.epoch]
        assert upload.is_best == (upload.epoch % 2 == 0)


def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("hubfsm")}


@pytest.fixture
def kit() -> Any:
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    import types

    return types.SimpleNamespace(
        FAST=FAST,
        FAST_POLICY=FAST_POLICY,
        HTTP_TIMEOUT=HTTP_TIMEOUT,
        Run=Run,
        train=train,
        check_on_hub=check_on_hub,
        check_applied_once=check_applied_once,
        eventually=eventually,
        worker_threads=worker_threads,
        free_port=free_port,
        sha256=sha256,
        epoch_metrics=epoch_metrics,
        hubfsm_command=hubfsm_command,
    )
