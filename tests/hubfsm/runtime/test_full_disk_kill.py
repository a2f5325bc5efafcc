"""A trainer killed inside finish() on a real full disk; sync once the disk is freed.

The scenario runs in a mount namespace of its own with a small tmpfs for the outbox
(see ``full_disk_kill.py``); the local hub runs in that process, on the ordinary disk.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import tmpfs_refusal

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


@pytest.mark.slow
def test_sync_after_a_kill_on_a_full_disk_delivers_everything_once_the_disk_is_freed(tmp_path):
    disk, work = tmp_path / "disk", tmp_path / "work"
    refusal = tmpfs_refusal(tmp_path / "probe")
    if refusal is not None:
        pytest.skip(refusal)
    disk.mkdir()
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    command = (
        f"mount -t tmpfs -o size=8m,mode=0700 tmpfs {disk} && "
        f"exec {sys.executable} {HERE / 'full_disk_kill.py'} {disk} {work}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", command],
        capture_output=True, text=True, env=env, timeout=240, cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["trainer_rc"] == -9, result["trainer_err"]
    # Before, the dead trainer's unrecorded copies held the freed disk, the journal's
    # final weights found no room, and sync said the outbox "cannot be opened".
    assert result["sync_rc"] == 0, result["sync_out"]
    assert "Traceback" not in result["sync_out"]
    assert result["status"] == "trained"
    assert result["applied"] == {"0": 1, "1": 1, "2": 1, "3": 1}
    assert result["finals"] == [result["expected_final"]]
