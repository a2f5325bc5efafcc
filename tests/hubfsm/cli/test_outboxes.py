"""``hubfsm status``, ``sync`` and ``discard`` on outbox roots a user got wrong.

A root that is a file, or one this user may not read, is an error that names it; an
empty root is named too, so a user who set ``HUBFSM_OUTBOX`` in another shell sees
where the command looked; an outbox this user may not read is named, never a
traceback. Permissions are real: the commands run in a child that file modes bind.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from hubfsm.cli.main import main
from hubfsm.core.values import MetricsQueued
from hubfsm.durable.outbox import Outbox
from tests.support import hubfsm_bound_by_modes

MODEL = "AbCdEfGhIjKlMnOpQrSt"
OTHER = "ZyXwVuTsRqPoNmLkJiHg"


def _hubfsm(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    """``hubfsm *args`` on the outbox root ``root``, bound by file modes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HUBFSM_"))}
    env["HUBFSM_OUTBOX"] = str(root)
    result: subprocess.CompletedProcess[str] = hubfsm_bound_by_modes(*args, env=env)
    return result


def _outbox(root: Path, model_id: str) -> Path:
    """An outbox holding one epoch of metrics, as a killed trainer leaves it."""
    outbox = Outbox(root / model_id, model_id, root=root)
    try:
        outbox.apply([MetricsQueued(0, '{"train/loss": 1.0}')])
    finally:
        outbox.close()
    return root / model_id


@pytest.mark.parametrize("command", ["status", "sync"])
def test_a_root_from_the_environment_that_is_a_file_is_an_error(
    command, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "outbox"
    root.write_text("not a directory")
    monkeypatch.setenv("HUBFSM_OUTBOX", str(root))
    monkeypatch.setenv("HUB_API_KEY", "k" * 42)

    assert main([command]) == 2

    captured = capsys.readouterr()
    assert f"error: the outbox root {root} (HUBFSM_OUTBOX) is not a directory" in captured.err
    assert "no outboxes" not in captured.out and "nothing to send" not in captured.out


@pytest.mark.parametrize(
    ("command", "said"), [("status", "no outboxes"), ("sync", "nothing to send")]
)
def test_an_empty_root_is_named(command, said, tmp_path, monkeypatch, capsys):
    root = tmp_path / "elsewhere"
    monkeypatch.setenv("HUBFSM_OUTBOX", str(root))

    assert main([command]) == 0

    assert capsys.readouterr().out == f"{said} in {root}\n"


def test_an_unreadable_root_is_an_error_that_names_it(tmp_path):
    root = tmp_path / "outbox"
    _outbox(root, MODEL)
    root.chmod(0)
    try:
        for command in ("status", "sync"):
            done = _hubfsm(command, root=root)
            assert done.returncode == 2, done.stderr
            assert "Traceback" not in done.stderr
            assert f"error: cannot read the outbox root {root}: Permission denied" in done.stderr
    finally:
        root.chmod(0o700)


def test_an_unreadable_outbox_is_reported_and_the_others_are_listed(tmp_path):
    root = tmp_path / "outbox"
    _outbox(root, MODEL)
    locked = _outbox(root, OTHER)
    locked.chmod(0)
    try:
        done = _hubfsm("status", root=root)
    finally:
        locked.chmod(0o700)

    assert "Traceback" not in done.stderr
    assert done.returncode == 1
    assert f"{MODEL}        1" in done.stdout
    assert str(locked) in done.stdout + done.stderr
    assert "Permission denied" in done.stdout + done.stderr


def test_discarding_an_unreadable_outbox_is_an_error_that_names_it(tmp_path):
    root = tmp_path / "outbox"
    locked = _outbox(root, MODEL)
    locked.chmod(0)
    try:
        done = _hubfsm("discard", MODEL, "--yes", root=root)
    finally:
        locked.chmod(0o700)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "Permission denied" in done.stderr
    assert str(locked) in done.stderr
    assert (locked / "outbox.sqlite3").exists()


def test_sync_help_names_each_dialects_default_key(capsys):
    # Before, --key said "(default: HUB_API_KEY)" only: a Platform user after a kill read
    # that sync would send HUB_API_KEY, though it sends their ULTRALYTICS_API_KEY.
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: HUB_API_KEY for HUB outboxes, ULTRALYTICS_API_KEY for Platform ones" in text
    assert "ULTRALYTICS_API_KEY=... hubfsm sync --protocol platform" in text


@pytest.mark.parametrize("command", ["status", "sync"])
def test_status_and_sync_help_say_where_they_look_without_a_directory(command, capsys):
    # Before, `status --help` named no default: a user could not tell it reads the same
    # root that sync sends from (HUBFSM_OUTBOX, else the user data directory).
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: HUBFSM_OUTBOX, else the user data directory)" in text


# -- what status says of each outbox ------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (-3, "0 s ago"),  # a clock set back: never a negative age
        (0, "0 s ago"),
        (59.9, "59 s ago"),
        (60, "1 min ago"),
        (3599, "59 min ago"),
        (3600, "1 h ago"),
        (86399, "23 h ago"),
        (2 * 86400 + 5, "2 d ago"),
    ],
)
def test_an_age_reads_as_a_person_says_it(seconds, said):
    from hubfsm.cli.outboxes import _ago

    assert _ago(seconds) == said


def _aged(directory: Path, seconds: float) -> None:
    """Make every file of an outbox as old as ``seconds``."""
    when = time.time() - seconds
    for path in directory.iterdir():
        os.utime(path, (when, when))


def test_status_says_when_each_outbox_was_written_and_which_run_it_holds(tmp_path, capsys):
    root = tmp_path / "outbox"
    _aged(_outbox(root, MODEL), 2 * 3600 + 60)
    platform = Outbox(root / OTHER, OTHER, root=root)
    try:
        platform.apply([MetricsQueued(0, '{"train/loss": 1.0}')])
        # A run page from a hostile hub: a control character never reaches the terminal.
        platform.db.set_run("platform", 3, "http://127.0.0.1:8000/alice/birds/run\x1b1")
    finally:
        platform.close()
    _aged(root / OTHER, 90)

    assert main(["status", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["model", "metrics", "ckpt", "final", "rejected", "refusal",
                                "written", "hub"]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert "  2 h ago  " in rows[MODEL]
    assert rows[OTHER].startswith(f"{OTHER} (platform)")
    assert "  1 min ago  " in rows[OTHER]
    # The run's page, under the table: which training this was.
    page = f"model {OTHER}: the run's page is http://127.0.0.1:8000/alice/birds/run?1"
    assert lines[4] == page
    assert all(len(line) <= 100 for line in lines[1:4])  # the table fits a terminal

    held = Outbox(root / MODEL, MODEL, root=root)  # as a running session holds it
    try:
        assert main(["status", str(root)]) == 0
    finally:
        held.close()
    assert "  in use  " in capsys.readouterr().out.splitlines()[2]

    assert main(["status", "--json", str(root)]) == 0
    shown = {o["model_id"]: o for o in json.loads(capsys.readouterr().out)["outboxes"]}
    assert shown[OTHER]["page"] == "http://127.0.0.1:8000/alice/birds/run\x1b1"
    assert shown[MODEL]["page"] is None  # no hub recorded: no page to name
    assert abs(shown[MODEL]["written_at"] - (time.time() - 2 * 3600 - 60)) < 60


def test_help_tells_a_platform_user_the_tool_is_for_them(capsys):
    # Before, `hubfsm --help` named only "model hubs", and `sync --help` gave only HUB's
    # variable for where an outbox goes: a Platform user could not tell it was for them.
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert "Ultralytics Platform" in top and "install()" in top
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    sync = " ".join(capsys.readouterr().out.split())
    hub = sync.split("--hub URL send", 1)[1].split("--key KEY", 1)[0]
    assert "ULTRALYTICS_PLATFORM_URL" in hub, hub


def test_an_outbox_with_nothing_to_send_says_why_it_is_there_and_how_to_drop_it(
    tmp_path, capsys
):
    # A Platform trainer killed before its first epoch arrived leaves an outbox that holds
    # only its run. Before, status listed a row of zeros and said nothing more, sync
    # passed it by, and it stayed listed for good.
    root = tmp_path / "outbox"
    outbox = Outbox(root / MODEL, MODEL, root=root)
    try:
        outbox.db.set_run("platform", 1, "https://platform.test/owner/proj/run1")
    finally:
        outbox.close()
    assert main(["status", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    [said] = [line for line in lines if "nothing to send" in line]
    assert said.startswith(f"model {MODEL}: ")
    assert "resume=True" in said and f"`hubfsm discard {MODEL}`" in said
