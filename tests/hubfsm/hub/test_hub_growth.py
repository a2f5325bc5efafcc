"""What keeps a served hub's memory and pages flat as runs pile up: pages, no audit notes."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hubfsm.hub import web
from hubfsm.hub.admin import add
from hubfsm.hub.server import LocalHub

CREATE = {"lineage": {"architecture": {"name": "yolov8n"}}}
TIMEOUT = 10


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def _create(local: LocalHub, key: str) -> str:
    answer = requests.post(
        f"{local.url}/v1/models", json=CREATE, headers={"x-api-key": key}, timeout=TIMEOUT
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"]["id"])


def test_runs_come_in_pages_with_a_link_to_the_next(
    local: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "PAGE_SIZE", 2)
    made = [_create(local, local.api_key) for _ in range(5)]
    seen: list[str] = []
    path: str | None = "/runs.json"
    while path is not None:
        assert len(seen) < 10, seen  # bounded: a wrong cursor would loop
        data = requests.get(f"{local.url}{path}", timeout=TIMEOUT).json()
        assert len(data["runs"]) <= 2
        seen += [run["record"]["id"] for run in data["runs"]]
        path = data["next"]
    assert seen == list(reversed(made))
    # The page itself: its rows and a link to the older ones, until the last page.
    first = requests.get(f"{local.url}/", timeout=TIMEOUT).text
    assert made[4] in first and made[2] not in first
    link = re.search(r'<a rel="next" href="(/\?after=\w+)"', first)
    assert link is not None
    second = requests.get(f"{local.url}{link.group(1)}", timeout=TIMEOUT).text
    assert made[2] in second and made[1] in second and made[4] not in second
    last = requests.get(f"{local.url}/?after={made[1]}", timeout=TIMEOUT).text
    assert made[0] in last and 'rel="next"' not in last
    # A cursor that names no model starts again from the newest.
    data = requests.get(f"{local.url}/runs.json?after={'z' * 20}", timeout=TIMEOUT).json()
    assert [run["record"]["id"] for run in data["runs"]] == [made[4], made[3]]


def test_a_members_pages_count_only_the_members_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "PAGE_SIZE", 2)
    data = tmp_path / "hub"
    with LocalHub(data, sign_in=True) as local:
        alice = add(data, "alice", out=io.StringIO())
        hers = []
        for n in range(6):
            made = _create(local, alice if n % 2 else local.api_key)
            if n % 2:
                hers.append(made)
        session = requests.Session()
        origin = {"Origin": local.url}
        answer = session.post(
            f"{local.url}/signin", data={"key": alice}, headers=origin, timeout=TIMEOUT
        )
        assert answer.status_code == 200  # followed the redirect to the first page
        seen: list[str] = []
        path: str | None = "/runs.json"
        while path is not None:
            assert len(seen) < 10, seen
            page = session.get(f"{local.url}{path}", timeout=TIMEOUT).json()
            seen += [run["record"]["id"] for run in page["runs"]]
            path = page["next"]
        assert seen == list(reversed(hers))


def test_a_served_hub_keeps_no_audit_notes(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "hub", audit=False) as local:
        key = {"x-api-key": local.api_key}
        model = _create(local, local.api_key)
        root = f"{local.url}/v1/models/{model}"
        metrics = {"metrics": {"0": json.dumps({"loss": 1.0})}, "type": "metrics"}
        assert requests.post(root, json=metrics, headers=key, timeout=TIMEOUT).ok
        beat = requests.post(
            f"{local.url}/v1/agent/heartbeat/models/{model}",
            json={"agent": "trainer"},
            headers=key,
            timeout=TIMEOUT,
        )
        assert beat.ok, beat.text
        upload = requests.post(
            f"{root}/upload",
            headers=key,
            data={"epoch": "0", "type": "epoch", "isBest": "false"},
            files={"last.pt": ("last.pt", b"weights")},
            timeout=TIMEOUT,
        )
        assert upload.ok, upload.text
        audit = local.hub.audit()
        assert audit.requests["upload_metrics"] == 1  # counts per endpoint stay
        assert not audit.metrics_applied and not audit.uploads and not audit.heartbeats
        # What was applied is in the store all the same.
        assert [epoch for epoch, _ in local.hub.store.get_metrics(model)] == [0]


def test_hub_serve_runs_its_hub_without_audit_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from hubfsm.hub import foreground

    made: list[LocalHub] = []

    class Recorded(LocalHub):
        def start(self) -> LocalHub:
            made.append(self)
            return super().start()

    monkeypatch.setattr(foreground, "LocalHub", Recorded)
    stop = threading.Event()
    out = io.StringIO()
    kwargs = {"port": 0, "out": out, "stop": stop}
    thread = threading.Thread(target=foreground.serve, args=(tmp_path / "hub",), kwargs=kwargs)
    thread.start()
    try:
        for _ in range(200):  # bounded: the banner comes once the hub listens
            if "serving at" in out.getvalue():
                break
            thread.join(0.05)
        assert made and "serving at" in out.getvalue(), out.getvalue()
        local = made[0]
        model = _create(local, local.api_key)
        metrics = {"metrics": {"0": json.dumps({"loss": 1.0})}, "type": "metrics"}
        answer = requests.post(
            f"{local.url}/v1/models/{model}",
            json=metrics,
            headers={"x-api-key": local.api_key},
            timeout=TIMEOUT,
        )
        assert answer.ok, answer.text
        audit = local.hub.audit()
        assert audit.requests["upload_metrics"] == 1
        assert not audit.metrics_applied  # what `hub serve` applies is in its store alone
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
