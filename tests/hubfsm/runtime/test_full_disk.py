"""A real full disk: a trainer whose outbox lies on a 2 MiB tmpfs, in its own mount namespace.

Each run is a child process (``unshare --mount``, then a tmpfs mounted only for it), so
a SIGBUS or a crash is seen as the exit status it is, and nothing outside is touched.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import tmpfs_refusal

HERE = Path(__file__).parent
TRAINER = HERE / "full_disk_trainer.py"
ROOT = HERE.parents[2]
SIZE = "2m"


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """Runs the trainer scenario on a fresh small tmpfs; returns its exit code, result, log."""
    base = tmp_path_factory.mktemp("fulldisk")
    refusal = tmpfs_refusal(base / "probe")
    if refusal is not None:
        pytest.skip(refusal)

    def run(scenario):
        disk = base / f"{scenario}-disk"
        work = base / f"{scenario}-work"  # on the ordinary file system, not the tmpfs
        disk.mkdir()
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        command = (
            f"mount -t tmpfs -o size={SIZE},mode=0700 tmpfs {disk} && "
            f"exec {sys.executable} {TRAINER} {scenario} {disk} {work}"
        )
        proc = subprocess.run(
            ["unshare", "--mount", "sh", "-c", command],
            capture_output=True, text=True, env=env, timeout=240, cwd=ROOT,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else None
        return proc.returncode, result, proc.stderr

    return run


def check_common(code, result, log):
    # A signal shows as a negative code (or 128+N through the shell): SIGBUS above all.
    assert code == 0, f"exit {code} (SIGBUS is {signal.SIGBUS}):\n{log[-3000:]}"
    assert result is not None, log[-3000:]
    assert result["incoming"] == [], "a partial copy was left on the disk"
    assert result["held"] == [], "a held link was left on the disk"
    missing = set(result["logged"]) - set(result["hub"]) - set(result["outbox"])
    assert not missing, f"epochs neither on the hub nor in the outbox: {sorted(missing)}"
    assert "Traceback" not in log


def test_a_checkpoint_larger_than_the_free_space_is_said_once_and_training_goes_on(small_disk):
    code, result, log = small_disk("big")
    check_common(code, result, log)
    assert result["state"] == "done"
    assert result["hub"] == list(range(6))
    # One line for the stretch of checkpoints that could not be kept, not one for each
    # (before, a line per epoch the disk stayed full); the final weights went from the
    # trainer's own file.
    assert log.count("checkpoint.not_kept") == 1
    assert "checkpoint.kept_again" not in log
    assert log.count("final.not_kept") == 1
    assert result["weights"] == {"best": result["expected"]["final"]}


def test_a_checkpoint_with_no_room_for_a_copy_is_uploaded_from_its_held_link(small_disk):
    code, result, log = small_disk("held")
    check_common(code, result, log)
    assert result["state"] == "done"
    assert "snapshot.held_kept" in log and "checkpoint.not_kept" not in log
    assert result["weights"]["last"] == result["expected"]["checkpoint"]
    assert result["weights"]["best"] == result["expected"]["final"]


def test_a_disk_that_fills_up_mid_run_costs_no_epoch_and_no_sigbus(small_disk):
    code, result, log = small_disk("fill")
    check_common(code, result, log)
    assert len(result["logged"]) == 710
    # The run really met the full disk: the outbox write failed, and the journal could
    # not grow and fell back to memory (said once).
    assert log.count("outbox.write_failed") >= 1
    assert log.count("journal.unavailable") == 1


def test_a_moment_of_full_disk_offline_loses_no_epoch_from_the_outbox(small_disk):
    code, result, log = small_disk("blip")
    check_common(code, result, log)
    assert result["hub"] == []  # offline: the outbox is the only place they can be
    assert result["outbox"] == list(range(40))
    # Said when writes were refused, and again when they went in.
    assert log.count("outbox.write_failed") >= 1
    assert log.rindex("outbox.write_recovered") > log.rindex("outbox.write_failed")


def test_a_disk_full_when_a_new_model_opens_fails_before_the_hub_makes_the_model(small_disk):
    code, result, log = small_disk("open")
    assert code == 0 and result is not None, log[-3000:]
    # Before, the hub made the model, then the outbox failed: an empty model on the hub
    # at each retry, and a bare "[Errno 28] No space left on device".
    assert result["models"] == 0
    assert "takes no write (No space left on device)" in result["error"]
    assert "nothing was created on the hub" in result["error"]
    assert "HUBFSM_OUTBOX" in result["error"]
