"""hubfsm's Platform callbacks for ultralytics 8.4, on a stand-in trainer and a fake Platform."""

import sys
import types
from pathlib import Path

import pytest
import structlog

from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from hubfsm.integrations.ultralytics import install, installed, uninstall
from hubfsm.integrations.ultralytics_platform import RECORD, PlatformCallbacks, official_names
from tests.platform_fake import PLATFORM_KEY, FakePlatform
from transports.memory import HandlerTransport

FAST = CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001)


class Trainer:
    """The attributes of an ultralytics 8.4 trainer the Platform callbacks read."""

    def __init__(self, save_dir: Path, *, project="owner/My Proj", name="exp 1", resume=False):
        self.args = types.SimpleNamespace(
            project=project, name=name, resume=resume, epochs=3, data="coco8.yaml"
        )
        self.save_dir = save_dir
        self.tloss = 0.5
        self.metrics = {}
        self.optimizer = types.SimpleNamespace(param_groups=[{"lr": 0.01}])
        self.fitness = None
        self.best_fitness = None
        self.epoch = 0
        self.stop = False
        weights = save_dir / "weights"
        weights.mkdir(parents=True, exist_ok=True)
        self.best = weights / "best.pt"
        self.last = weights / "last.pt"

    def label_loss_items(self, loss, prefix="train"):
        return {f"{prefix}/box_loss": loss}

    def train(self, callbacks, epochs=3):
        """Fire the callbacks in the order ultralytics' trainer does."""
        callbacks["on_pretrain_routine_start"](self)
        callbacks["on_pretrain_routine_end"](self)
        for epoch in range(epochs):
            if self.stop:
                break
            self.epoch = epoch
            self.metrics = {"metrics/mAP50-95(B)": 0.1 * (epoch + 1)}
            self.fitness = self.best_fitness = 0.1 * (epoch + 1)
            self.last.write_bytes(b"last %d" % epoch)
            self.best.write_bytes(b"best %d" % epoch)
            callbacks["on_model_save"](self)
            callbacks["on_fit_epoch_end"](self)
        callbacks["on_train_end"](self)
        callbacks["teardown"](self)


def callbacks(fake, tmp_path):
    return PlatformCallbacks(
        api_key=PLATFORM_KEY,
        transport=HandlerTransport(fake),
        config=FAST,
        outbox_dir=tmp_path / "outbox",
        model_info=lambda trainer: {"model/parameters": 7, "model/GFLOPs": 1.5},
    )


def test_the_official_names_are_kept():
    assert official_names("owner/My Proj/sub", "Exp 1") == ("owner/my-proj-sub", "exp-1")
    assert official_names("My Proj", None) == ("my-proj", "train")


def test_a_run_reports_every_epoch_and_the_final_weights(tmp_path):
    fake = FakePlatform()
    trainer = Trainer(tmp_path / "run")
    trainer.train(callbacks(fake, tmp_path).callbacks())
    model = fake.only_model()
    assert (model.project, model.name) == ("owner/my-proj", "exp-1")
    run = model.runs[1]
    assert run.epochs == [0, 1, 2]
    assert run.metrics[0] == {"train/box_loss": 0.5, "metrics/mAP50-95(B)": 0.1, "lr": 0.01}
    assert run.events[-1] == "training_complete"
    assert fake.storage[run.promoted[-1]] == b"best 2"
    assert run.complete["results"]["metrics"] == {"metrics/mAP50-95(B)": pytest.approx(0.3)}
    assert (trainer.save_dir / RECORD).read_text() == model.id
    assert fake.foreign == []


def test_the_console_shows_the_official_lines_with_the_model_url(tmp_path, caplog):
    # The official callbacks print where the model is as training starts and ends; the
    # ones install() puts in their place must too, on the same (ultralytics') logger.
    caplog.set_level("INFO", logger="ultralytics")
    fake = FakePlatform()
    Trainer(tmp_path / "run").train(callbacks(fake, tmp_path).callbacks())
    said = [r.getMessage() for r in caplog.records if r.name == "ultralytics"]
    url = "https://platform.test/owner/my-proj/exp-1"
    assert said == [
        "Platform: Streaming training metrics to Platform",
        f"Platform: View model at {url}",
        f"Platform: View results at {url}",
    ]


def test_an_untracked_run_says_nothing_on_the_console(tmp_path, caplog):
    caplog.set_level("INFO", logger="ultralytics")
    Trainer(tmp_path / "a", project=None).train(callbacks(FakePlatform(), tmp_path).callbacks())
    assert [r for r in caplog.records if r.name == "ultralytics"] == []


def test_a_run_the_platform_refuses_says_so_once_on_the_console_and_trains_on(
    tmp_path, caplog, capsys
):
    # The official callbacks say "Training will not be tracked on Platform"; before, these
    # said only a log event on stderr: "hubfsm: platform.untracked error='AuthError: ...'".
    caplog.set_level("INFO", logger="ultralytics")
    fake = FakePlatform()
    fake.revoked = True
    trainer = Trainer(tmp_path / "run")
    with structlog.testing.capture_logs() as logs:
        trainer.train(callbacks(fake, tmp_path).callbacks())
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "ultralytics"]
    assert said[0] == ("INFO", "Platform: Streaming training metrics to Platform")
    ((level, line),) = said[1:]
    assert level == "WARNING"
    assert line.startswith("Platform: Training will not be tracked on Platform: the hub ")
    assert "refused the API key (401)" in line and PLATFORM_KEY not in line
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []
    assert [e["event"] for e in logs if e["event"] == "platform.untracked"] == [
        "platform.untracked"
    ]  # still logged, for -v and logging set-ups
    assert capsys.readouterr().err == ""
    assert trainer.epoch == 2 and not (trainer.save_dir / RECORD).exists()


def test_a_platform_url_hubfsm_will_not_send_the_key_to_trains_on_untracked(tmp_path, caplog):
    # Plain http:// to another machine is refused (the key would go in clear text). Before,
    # that ValueError escaped the callback and ended the training with a traceback; the
    # official callbacks train on untracked.
    caplog.set_level("INFO", logger="ultralytics")
    hooks = PlatformCallbacks(
        api_key=PLATFORM_KEY, api_root="http://192.0.2.1:8000", outbox_dir=tmp_path / "outbox"
    )
    trainer = Trainer(tmp_path / "run")
    trainer.train(hooks.callbacks())
    assert trainer.epoch == 2 and not (trainer.save_dir / RECORD).exists()
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and said[0].startswith("Platform: Training will not be tracked")
    assert "refusing plain http:// to 192.0.2.1" in said[0]


def test_an_outbox_that_cannot_be_written_trains_on_untracked_and_names_the_fix(
    tmp_path, caplog, capsys
):
    # A home that is full or read-only: before, the OSError of opening the outbox escaped
    # the callback and ended the training with a traceback before its first epoch.
    caplog.set_level("INFO", logger="ultralytics")
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    hooks = PlatformCallbacks(
        api_key=PLATFORM_KEY,
        transport=HandlerTransport(FakePlatform()),
        config=FAST,
        outbox_dir=blocked / "outbox",
    )
    trainer = Trainer(tmp_path / "run")
    trainer.train(hooks.callbacks())
    assert trainer.epoch == 2
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1, said
    assert said[0].startswith("Platform: Training will not be tracked on Platform: ")
    assert str(blocked / "outbox") in said[0] and "HUBFSM_OUTBOX" in said[0]
    assert "Traceback" not in capsys.readouterr().err


def test_a_cancel_on_the_platform_stops_the_trainer(tmp_path):
    fake = FakePlatform()
    trainer = Trainer(tmp_path / "run")
    hooks = callbacks(fake, tmp_path)
    calls = hooks.callbacks()
    epoch_end = calls["on_fit_epoch_end"]

    def cancel_after_the_first(trainer):
        epoch_end(trainer)
        hooks.session_of(trainer).flush(timeout=10.0)
        fake.cancel = True
        hooks.session_of(trainer).flush(timeout=10.0)

    calls["on_fit_epoch_end"] = cancel_after_the_first
    trainer.train(calls, epochs=10)
    assert trainer.stop
    run = fake.only_model().runs[1]
    assert len(run.epochs) < 10 and run.complete is not None  # partial results still go up


def test_a_key_revoked_mid_run_is_one_line_on_stderr_not_one_more_at_the_end(
    tmp_path, capsys
):
    fake = FakePlatform()
    trainer = Trainer(tmp_path / "run")
    hooks = callbacks(fake, tmp_path)
    calls = hooks.callbacks()
    epoch_end = calls["on_fit_epoch_end"]

    def revoke_after_the_first(trainer):
        epoch_end(trainer)
        hooks.session_of(trainer).flush(timeout=10.0)
        fake.revoked = True

    calls["on_fit_epoch_end"] = revoke_after_the_first
    with structlog.testing.capture_logs() as logs:
        trainer.train(calls, epochs=3)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "(401)" in said[0] and "hubfsm sync" in said[0]
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []


def test_resume_continues_the_model_the_run_directory_names(tmp_path):
    fake = FakePlatform()
    Trainer(tmp_path / "run").train(callbacks(fake, tmp_path).callbacks())
    Trainer(tmp_path / "run", resume=True).train(callbacks(fake, tmp_path).callbacks())
    model = fake.only_model()
    assert sorted(model.runs) == [1, 2]


def test_no_project_or_no_key_means_no_tracking(tmp_path, monkeypatch):
    fake = FakePlatform()
    Trainer(tmp_path / "a", project=None).train(callbacks(fake, tmp_path).callbacks())
    hooks = PlatformCallbacks(transport=HandlerTransport(fake), config=FAST)
    Trainer(tmp_path / "b").train(hooks.callbacks())
    assert fake.models == {} and fake.log == []


def test_install_replaces_the_platform_callbacks_where_ultralytics_has_no_hub(monkeypatch):
    official = {"on_fit_epoch_end": lambda trainer: None}
    names = ["ultralytics", "ultralytics.utils", "ultralytics.utils.callbacks"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    platform = types.ModuleType("ultralytics.utils.callbacks.platform")
    platform.callbacks = official
    monkeypatch.setitem(sys.modules, platform.__name__, platform)
    try:
        ours = install(api_root="http://127.0.0.1:9")
        assert isinstance(ours, PlatformCallbacks) and installed()
        assert set(platform.callbacks) == set(ours.callbacks())
        assert install() is ours  # twice is fine
    finally:
        uninstall()
    assert platform.callbacks is official and not installed()


def _signal_worker(tmp_path, *args, sigint):
    """Start platform_signal_worker.py on an outbox in tmp_path, SIGINT handled as given.

    SIGINT is set in the child, as a shell sets it: ignored for a job started with ``&``.
    """
    import os
    import signal
    import subprocess

    root = Path(__file__).parents[3]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    env.pop("ULTRALYTICS_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "platform_signal_worker.py"),
         str(tmp_path / "outbox"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_sigterm_mid_run_says_what_is_kept_and_the_sync_command(tmp_path, sigint):
    # A scheduler's stop, `timeout`, `docker stop`: SIGTERM. Before, the trainer died
    # without a word, and nothing told a person that epochs waited for `hubfsm sync`.
    # A trainer started in the background (`&`, nohup) has SIGINT ignored: that must
    # not keep SIGTERM from being taken, and SIGINT stays ignored.
    import os
    import signal

    sigint_handler = signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL
    worker = _signal_worker(tmp_path, sigint=sigint_handler)
    try:
        assert worker.stdout.readline() == "held\n", worker.stderr.read()
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGTERM
    assert "Traceback" not in err and PLATFORM_KEY not in err
    lines = err.splitlines()
    kept = [line for line in lines if "hubfsm sync" in line]
    assert len(kept) == 1 and str(tmp_path / "outbox") in kept[0], err
    assert len(lines) <= 2, err  # the lost service, then what is kept


def test_an_application_s_own_sigterm_handler_is_left_alone(tmp_path):
    # An application that catches SIGTERM to stop gracefully keeps training after it:
    # had hubfsm taken the signal too, it would close the session there, and every later
    # epoch would be lost ("epoch_end is not allowed in state 'resumable'").
    import os
    import signal

    caught = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        fake = FakePlatform()
        calls = callbacks(fake, tmp_path).callbacks()
        epoch_end = calls["on_fit_epoch_end"]

        def signal_at_the_first(trainer):
            epoch_end(trainer)
            if trainer.epoch == 0:
                os.kill(os.getpid(), signal.SIGTERM)

        calls["on_fit_epoch_end"] = signal_at_the_first
        Trainer(tmp_path / "run").train(calls, epochs=3)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught == [signal.SIGTERM]
    run = fake.only_model().runs[1]
    assert run.epochs == [0, 1, 2] and run.complete is not None


@pytest.mark.slow
def test_ctrl_c_while_the_end_waits_for_platform_stops_waiting_without_a_traceback(tmp_path):
    # The end of training says "Ctrl-C stops waiting and keeps it all ... for hubfsm sync".
    # Before, doing so printed that line and then a KeyboardInterrupt traceback, and
    # train() never returned to the user's script.
    import os
    import signal

    worker = _signal_worker(tmp_path, "--to-the-end", sigint=signal.SIG_DFL)
    said = []
    try:
        for line in worker.stderr:
            said.append(line)
            if "Ctrl-C stops waiting" in line:
                break
        else:
            pytest.fail("".join(said))
    finally:
        os.kill(worker.pid, signal.SIGINT)
        out, err = worker.communicate(timeout=60)
    err = "".join(said) + err
    assert worker.returncode == 0, err
    assert out.splitlines()[-1] == "returned"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and PLATFORM_KEY not in err
    assert len([line for line in err.splitlines() if "hubfsm sync" in line]) == 2, err
