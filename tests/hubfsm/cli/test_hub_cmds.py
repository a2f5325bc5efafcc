"""``hubfsm hub serve`` on a data directory this user may not write."""

from __future__ import annotations

import os

from tests.support import hubfsm_bound_by_modes


def test_serving_from_a_directory_without_write_is_one_line_naming_it(tmp_path):
    data = tmp_path / "hub"
    data.mkdir()
    data.chmod(0o500)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HUBFSM_"))}
    try:
        done = hubfsm_bound_by_modes("hub", "serve", "--data", str(data), "--port", "0", env=env)
    finally:
        data.chmod(0o700)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and "Permission denied" in line and str(data) in line
    assert done.stdout == ""
