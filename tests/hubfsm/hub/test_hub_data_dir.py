"""A local hub's data directory as operators treat it: a full disk when the hub first
starts, ``hubfsm hub keys`` or a second hub opening it while an upload is received."""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from hubfsm.cli.main import main
from hubfsm.hub import admin, keys
from hubfsm.hub.server import LocalHub
from tests.services import tmpfs_refusal
from tests.support import hub_upload_body

ROOT = Path(__file__).parents[3]
TIMEOUT = 10
CREATE = {"lineage": {"architecture": {"name": "yolov8n"}}, "meta": {"name": "kept"}}


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


def test_a_key_file_of_other_bytes_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    (data / "api_key").write_bytes(b"\xff\xfe key")
    assert main(["hub", "keys", "add", "--data", str(data)]) == 2
    # Before: "error: 'ascii' codec can't decode byte 0xff in position 0: ...", no file.
    err = capsys.readouterr().err
    assert err == f"error: {data / 'api_key'} holds bytes no hub wrote (not ASCII text)\n"


def test_a_key_file_made_by_another_start_meanwhile_is_the_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "api_key"

    def made_meanwhile() -> str:
        # Another hub starting on the same directory writes its key first.
        path.write_text("a" * 42 + "\n")
        return "b" * 42

    assert keys._kept(path, made_meanwhile) == ("a" * 42, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api_key"]


def _upload_head(port: int, model_id: str, key: str, length: int) -> bytes:
    return (
        f"POST /v1/models/{model_id}/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"x-api-key: {key}\r\nIdempotency-Key: upload-1\r\n"
        "Content-Type: multipart/form-data; boundary=bnd\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_opening_the_data_directory_beside_the_hub_leaves_an_upload_being_received(
    tmp_path: Path,
) -> None:
    data = tmp_path / "hub"
    weights = os.urandom(1 << 20)
    body = hub_upload_body({"epoch": "1", "type": "epoch", "isBest": "False"}, "last.pt", weights)
    with LocalHub(data) as local:
        created = requests.post(
            f"{local.url}/v1/models", json=CREATE, headers={"x-api-key": local.api_key},
            timeout=TIMEOUT,
        )
        model_id = created.json()["data"]["id"]
        staging = data / "weights" / ".staging"
        with socket.create_connection(("127.0.0.1", local.port), timeout=TIMEOUT) as sock:
            sock.sendall(_upload_head(local.port, model_id, local.api_key, len(body)))
            sock.sendall(body[: len(body) // 2])
            for _ in range(200):  # the hub receives the first half into its staging folder
                if any(p.stat().st_size > 0 for p in staging.iterdir()):
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the hub received nothing of the upload")
            # The operator lists the keys, then a second hub starts on the same data.
            admin.listing(data, out=io.StringIO())
            with LocalHub(data):
                pass
            sock.sendall(body[len(body) // 2 :])
            reply = sock.recv(65536)
        # Before, either one cleared the staging folder: 500, and the upload sent again.
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        download = local.hub.weights(model_id, "last")
        assert download is not None
    again = LocalHub(data)
    (staging / "left-by-a-crash.part").write_bytes(b"partial")
    with again:
        # Alone with the directory, a start still clears what a crash left there.
        assert list(staging.iterdir()) == []


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
