"""API keys: each sees only its own models; ``hubfsm hub keys`` adds, lists and revokes,
also while the hub serves; a full key is printed once, when it is created."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import requests

from hubfsm.hub import admin
from hubfsm.hub.server import LocalHub

TIMEOUT = 10
CREATE = {"lineage": {"architecture": {"name": "yolov8n"}}, "dataset": {"name": "coco8.yaml"}}


def _create(url: str, key: str) -> str:
    reply = requests.post(f"{url}/v1/models", json=CREATE, headers={"x-api-key": key}, timeout=10)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["id"])


def test_each_key_sees_only_its_own_models(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    with LocalHub(data) as local:
        second = admin.add(data, "second", out=io.StringIO())
        first_model = _create(local.url, local.api_key)
        second_model = _create(local.url, second)
        mine = {"x-api-key": second}
        base = f"{local.url}/v1/models/{first_model}"
        # Reading, listing metrics, downloading, writing, heartbeating: all 404 for another key.
        assert requests.get(base, headers=mine, timeout=TIMEOUT).status_code == 404
        assert requests.get(f"{base}/metrics", headers=mine, timeout=TIMEOUT).status_code == 404
        metrics = {"type": "metrics", "metrics": {"0": '{"a": 1}'}}
        assert requests.post(base, json=metrics, headers=mine, timeout=TIMEOUT).status_code == 404
        beat = f"{local.url}/v1/agent/heartbeat/models/{first_model}"
        assert requests.post(beat, json={"agent": "x"}, headers=mine, timeout=10).status_code == 404
        upload = requests.post(
            f"{base}/upload",
            headers=mine,
            data={"epoch": "0", "type": "epoch"},
            files={"last.pt": ("last.pt", b"x")},
            timeout=TIMEOUT,
        )
        assert upload.status_code == 404
        assert (
            requests.get(f"{base}/weights/last", headers=mine, timeout=TIMEOUT).status_code == 404
        )
        assert local.hub.metrics(first_model) == []
        own = requests.get(f"{local.url}/v1/models/{second_model}", headers=mine, timeout=TIMEOUT)
        assert own.status_code == 200
        first = {"x-api-key": local.api_key}
        assert (
            requests.get(f"{local.url}/v1/models/{second_model}", headers=first, timeout=10)
        ).status_code == 404


def test_keys_add_list_revoke_while_serving(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    with LocalHub(data) as local:
        out = io.StringIO()
        key = admin.add(data, "laptop", out=out)
        assert out.getvalue().count(key) == 1
        assert requests.post(f"{local.url}/v1/auth", headers={"x-api-key": key}, timeout=TIMEOUT).ok
        _create(local.url, key)

        listed = io.StringIO()
        records = admin.listing(data, out=listed)
        text = listed.getvalue()
        assert key not in text and local.api_key not in text
        assert f"{key[:4]}…{key[-4:]}" in text
        assert "laptop" in text and "api_key file" in text
        laptop = next(r for r in records if r.label == "laptop")
        assert f"{laptop.id}  {key[:4]}" in text

        # Revoked from another process while the hub serves: the next request is a 401.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "hubfsm",
                "hub",
                "keys",
                "revoke",
                laptop.id[:6],
                "--data",
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert key not in done.stdout + done.stderr
        assert "Revoked key" in done.stdout
        refused = requests.post(f"{local.url}/v1/auth", headers={"x-api-key": key}, timeout=10)
        assert refused.status_code == 401
        assert requests.post(
            f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=TIMEOUT
        ).ok
        listed = io.StringIO()
        admin.listing(data, out=listed)
        assert "revoked" in listed.getvalue()

    # A revoked key stays revoked across a restart, even the one in the api_key file.
    assert admin.revoke(data, "zz") == 1
    first_id = next(r.id for r in admin.listing(data, out=io.StringIO()) if r.label != "laptop")
    assert admin.revoke(data, first_id, out=io.StringIO()) == 0
    with LocalHub(data) as again:
        reply = requests.post(
            f"{again.url}/v1/auth", headers={"x-api-key": again.api_key}, timeout=TIMEOUT
        )
        assert reply.status_code == 401


def test_keys_cli_add_prints_the_key_once(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hubfsm",
            "hub",
            "keys",
            "add",
            "--label",
            "ci",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1].strip()
    assert len(key) == 42 and key.isalnum()
    listed = subprocess.run(
        [sys.executable, "-m", "hubfsm", "hub", "keys", "list", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0
    assert key not in listed.stdout
    assert "ci" in listed.stdout and key[-4:] in listed.stdout


def test_keys_transfer_hands_a_revoked_keys_models_to_a_new_key_while_serving(
    tmp_path: Path,
) -> None:
    data = tmp_path / "hub"
    with LocalHub(data) as local:
        old = admin.add(data, "old", out=io.StringIO())
        model = _create(local.url, old)
        other = _create(local.url, local.api_key)  # another key's model stays where it is
        records = {r.label: r for r in admin.listing(data, out=io.StringIO())}
        assert admin.revoke(data, records["old"].id, out=io.StringIO()) == 0
        new = admin.add(data, "new", out=io.StringIO())
        url = f"{local.url}/v1/models/{model}"
        assert requests.get(url, headers={"x-api-key": new}, timeout=TIMEOUT).status_code == 404

        done = subprocess.run(
            [sys.executable, "-m", "hubfsm", "hub", "keys", "transfer",
             records["old"].id[:6], "new", "--data", str(data)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Handed 1 model(s)" in done.stdout
        assert old not in done.stdout + done.stderr and new not in done.stdout + done.stderr
        # The running hub sees it at the next request: the new key has the model.
        assert requests.get(url, headers={"x-api-key": new}, timeout=TIMEOUT).status_code == 200
        metrics = {"type": "metrics", "metrics": {"0": '{"a": 1}'}}
        assert requests.post(url, json=metrics, headers={"x-api-key": new}, timeout=10).ok
        mine = {"x-api-key": local.api_key}
        assert requests.get(f"{local.url}/v1/models/{other}", headers=mine, timeout=10).ok


def test_keys_transfer_refuses_an_unknown_or_revoked_target(tmp_path: Path, capsys) -> None:
    data = tmp_path / "hub"
    admin.add(data, "old", out=io.StringIO())
    admin.add(data, "gone", out=io.StringIO())
    gone = next(r for r in admin.listing(data, out=io.StringIO()) if r.label == "gone")
    admin.revoke(data, gone.id, out=io.StringIO())
    assert admin.transfer(data, "old", "nobody", out=io.StringIO()) == 1
    assert "no key with the label 'nobody'" in capsys.readouterr().err
    assert admin.transfer(data, "old", "gone", out=io.StringIO()) == 1
    assert "is revoked" in capsys.readouterr().err
    assert admin.transfer(data, "old", "old", out=io.StringIO()) == 1
    assert "the same key" in capsys.readouterr().err
