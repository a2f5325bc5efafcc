"""Real ultralytics 8.4 training reporting to a Platform through hubfsm's callbacks.

Slow and optional, like ``test_ultralytics_real.py``: ``tools/test-ultralytics.sh 8.4.190``
runs it (marker ``ultralytics``); skipped, saying why, on an ultralytics that still has
``ultralytics.hub``. The trainer runs in its own process whose environment does not look
like pytest's, so ultralytics' own Platform callbacks would report if ``install()`` had
not replaced them; the fake Platform (``tests/platform_fake.py``) runs in another.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.hubfsm.integrations.test_ultralytics_real import _yolo_config, synthetic_dataset
from tests.platform_fake import PLATFORM_KEY

pytestmark = [pytest.mark.slow, pytest.mark.ultralytics]

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


@pytest.fixture(scope="module")
def platform_ultralytics() -> None:
    """A skip that says why, unless this ultralytics reports to Platform only."""
    try:
        import ultralytics
    except Exception as exc:
        pytest.skip(f"ultralytics does not import here: {type(exc).__name__}: {exc}")
    if importlib.util.find_spec("ultralytics.hub") is not None:
        pytest.skip(f"ultralytics {ultralytics.__version__} still has ultralytics.hub (HUB)")


@pytest.fixture
def platform(tmp_path):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    server = subprocess.Popen(
        [sys.executable, str(HERE.parent / "runtime" / "platform_server.py")],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = server.stdout.readline()
        assert line.startswith("port "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_a_real_8_4_training_reports_every_epoch_and_the_weights_through_hubfsm(
    platform_ultralytics, platform, tmp_path
):
    data = synthetic_dataset(tmp_path / "data")
    env = _env(tmp_path, platform)
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(HERE / "hubfsm_platform_worker.py"), str(data)],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = _state(platform)
    [(model_id, model)] = state["models"].items()
    assert (model["project"], model["name"]) == ("owner/platform-test", "run1")
    run = model["runs"]["1"]
    # Two epochs, and the one more after the final validation, as ultralytics fires it.
    assert run["epochs"][:2] == [0, 1] and run["epochs"] == sorted(run["epochs"])
    assert run["events"][0] == "training_started" and run["events"][-1] == "training_complete"
    [best] = [Path(line[5:]) for line in done.stdout.splitlines() if line.startswith("best ")]
    final = run["complete"]["results"]["modelPath"]
    assert state["storage"][final] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert (best.parent.parent / "platform_model_id.txt").read_text() == model_id
    # Only hubfsm spoke: the official pool (httpx) sent nothing.
    agents = {h.get("user-agent", "").split("/")[0] for h in state["headers"]}
    assert agents == {"hubfsm"}, agents
    assert state["foreign"] == 0
    # The console says where the model is, as the official callbacks' lines do.
    url = "https://platform.test/owner/platform-test/run1"  # the fake Platform's modelUrl
    assert f"Platform: View model at {url}" in _plain(done.stdout), done.stdout[-3000:]
    assert f"Platform: View results at {url}" in _plain(done.stdout), done.stdout[-3000:]


def test_a_kill_9_then_sync_loses_nothing_and_resume_continues_the_model(
    platform_ultralytics, platform, tmp_path
):
    data, work, env = _kill_9_while_held(tmp_path, platform)
    [(model_id, model)] = _state(platform)["models"].items()
    assert model["runs"]["1"]["epochs"] == [0]  # epoch 1 came while Platform was down
    _control(platform, down=False)
    synced = subprocess.run(
        [sys.executable, "-m", "hubfsm", "sync", "--protocol", "platform", "--timeout", "60"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stdout + synced.stderr
    run = _state(platform)["models"][model_id]["runs"]["1"]
    assert run["epochs"] == [0, 1] and run["promoted"]
    [last] = list(work.rglob("last.pt"))
    _resume(data, last, work, env)
    state = _state(platform)
    assert list(state["models"]) == [model_id]  # the same model, in a new run
    again = state["models"][model_id]["runs"]["2"]
    assert again["epochs"][0] == 2 and again["events"][-1] == "training_complete"


def test_a_kill_9_then_resume_without_sync_goes_on_with_the_run_and_names_its_page(
    platform_ultralytics, platform, tmp_path
):
    data, work, env = _kill_9_while_held(tmp_path, platform)
    [model_id] = _state(platform)["models"]
    _control(platform, down=False)
    [last] = list(work.rglob("last.pt"))
    # No sync: the resumed trainer sends what the outbox kept, on the run it belongs to.
    done = _resume(data, last, work, env)
    model = _state(platform)["models"][model_id]
    assert list(model["runs"]) == ["1"]
    run = model["runs"]["1"]
    assert run["epochs"][:3] == [0, 1, 2] and run["events"][-1] == "training_complete"
    # No answer named the page on this run's way back: the outbox kept it.
    url = "https://platform.test/owner/platform-test/run1"
    assert f"Platform: View model at {url}" in _plain(done.stdout), done.stdout[-3000:]
    assert f"Platform: View results at {url}" in _plain(done.stdout), done.stdout[-3000:]


def _env(tmp_path: Path, platform: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HUB_", "HUBFSM_", "YOLO_", "PYTEST"))}  # fmt: skip
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        YOLO_OFFLINE="true",
        YOLO_CONFIG_DIR=str(_yolo_config(tmp_path)),
        ULTRALYTICS_PLATFORM_URL=platform,
        ULTRALYTICS_API_KEY=PLATFORM_KEY,
        HUBFSM_OUTBOX=str(tmp_path / "outbox"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _plain(text: str) -> str:
    """``text`` without the terminal's colour codes (ultralytics colours its prefixes)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _state(platform: str) -> dict:
    with urllib.request.urlopen(f"{platform}/_state", timeout=10) as answer:
        return json.load(answer)


def _control(platform: str, **values: object) -> None:
    request = urllib.request.Request(
        f"{platform}/_control", data=json.dumps(values).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _kill_9_while_held(tmp_path, platform):
    """Train until the worker script holds (Platform down, epoch 1 unsent), then SIGKILL it.

    Returns the dataset, the working directory and the environment, to resume with.
    """
    data = synthetic_dataset(tmp_path / "data")
    env = _env(tmp_path, platform)
    work = tmp_path / "work"
    work.mkdir()
    trainer = subprocess.Popen(
        [sys.executable, str(HERE / "hubfsm_platform_worker.py"), str(data), "--hold"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in trainer.stdout:
            if line == "held\n":
                break
        else:
            pytest.fail("the trainer ended before it was held")
    finally:
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=30)
    return data, work, env


def _resume(data, last, work, env):
    """Train again from ``last`` with ``resume=True``; it must end well."""
    done = subprocess.run(
        [sys.executable, str(HERE / "hubfsm_platform_worker.py"), str(data), "--resume", str(last)],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done

