"""``hubfsm hub serve`` on a data directory this user may not write, and the demo's
training loop as the session sees it."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

from hubfsm.cli import hub_cmds
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


class Recorder:
    """Stands in for the session: records each file offered, as it was when offered."""

    def __init__(self) -> None:
        self.offered: list[tuple[Path, bytes]] = []

    def log_metrics(self, metrics: Any, *, epoch: int) -> None:
        pass

    def save_checkpoint(self, path: Path, *, epoch: int, is_best: bool = False) -> None:
        self.offered.append((Path(path), Path(path).read_bytes()))

    def finish(self, path: Path, **kwargs: Any) -> None:
        self.offered.append((Path(path), Path(path).read_bytes()))


def test_the_demo_never_changes_a_checkpoint_it_offered(tmp_path: Path, monkeypatch: Any) -> None:
    # Without --data the demo keeps no outbox, so an upload (or its retry on a flaky hub)
    # reads the very file offered: replacing it would fail the upload as a changed file.
    monkeypatch.setattr(hub_cmds, "PAUSE", 0.0)
    session = Recorder()
    hub_cmds._train(session, tmp_path, 3, random.Random(0), io.StringIO())  # type: ignore[arg-type]
    assert len(session.offered) == 4
    for path, content in session.offered:
        assert path.read_bytes() == content, f"{path.name} changed after it was offered"
