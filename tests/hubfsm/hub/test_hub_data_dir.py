"""A local hub's data directory as operators treat it: a full disk when the hub first
starts."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubfsm.cli.main import main
from hubfsm.hub import keys
from hubfsm.hub.server import LocalHub
from tests.services import tmpfs_refusal

ROOT = Path(__file__).parents[3]


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    # A full disk may refuse a file's bytes only when they are flushed.
    def refuse(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keys.os, "fsync", refuse)


def test_a_key_file_the_disk_refuses_is_not_left_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    with monkeypatch.context() as patch:
        _full_disk(patch)
        assert main(["hub", "keys", "add", "--data", str(data)]) == 1
    # One line naming the file. Before, it named none, and an empty api_key (or
    # url_secret) stayed behind that every later start refused as not holding a key.
    err = capsys.readouterr().err
    assert err == f"error: No space left on device: {data / 'api_key'}\n"
    assert not [p.name for p in data.iterdir() if "api_key" in p.name]
    (data / "api_key").write_text("k" * 42 + "\n")
    with monkeypatch.context() as patch:
        _full_disk(patch)
        with pytest.raises(OSError, match="No space left") as refused:
            LocalHub(data)
    assert refused.value.filename == str(data / "url_secret")
    assert not [p.name for p in data.iterdir() if "url_secret" in p.name]
    # Once the disk has room, the hub starts, with the key it had.
    with LocalHub(data) as local:
        assert local.api_key == "k" * 42
        assert len(bytes.fromhex((data / "url_secret").read_text())) == 32
        assert (data / "url_secret").stat().st_mode & 0o777 == 0o600


def test_a_database_the_hub_cannot_open_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    assert main(["hub", "keys", "add", "--data", str(data)]) == 0
    (data / "hub.sqlite3").write_bytes(b"not a database, " * 512)
    for leftover in ("hub.sqlite3-wal", "hub.sqlite3-shm"):
        (data / leftover).unlink(missing_ok=True)
    capsys.readouterr()
    # Before, a traceback ending in sqlite3.DatabaseError (or, on a full disk, in
    # "database or disk is full").
    assert main(["hub", "keys", "list", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    path = data / "hub.sqlite3"
    assert err == f"error: cannot open the hub's database {path}: file is not a database\n"


def test_a_key_file_made_by_another_start_meanwhile_is_the_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "api_key"

    def made_meanwhile() -> str:
        # Another hub starting on the same directory writes its key first.
        path.write_text("a" * 42 + "\n")
        return "b" * 42

    assert keys._kept(path, made_meanwhile) == ("a" * 42, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api_key"]


@pytest.mark.slow
def test_hub_serve_on_a_full_disk_says_which_file_and_starts_once_it_has_room(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    refusal = tmpfs_refusal(tmp_path / "probe")
    if refusal is not None:
        pytest.skip(refusal)
    serve = f"timeout 20 {sys.executable} -m hubfsm hub serve --data {disk}/hub --port 0"
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {disk} && "
        f"head -c 1048576 /dev/zero > {disk}/filler 2>/dev/null; "
        f"{serve} </dev/null >/dev/null; echo rc=$?; rm {disk}/filler; "
        f"{serve} --seed 1 </dev/null & sleep 8; kill -INT $!; wait; "
        f"wc -c < {disk}/hub/url_secret"
    )
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
        timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert "rc=1" in done.stdout, done
    assert f"error: No space left on device: {disk}/hub/" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # The second start served, and wrote a whole secret.
    assert "Local hub serving at" in done.stdout, done
    assert done.stdout.split()[-1] == "65", done.stdout
