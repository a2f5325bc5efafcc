"""A team's hub on a real PostgreSQL and a real S3 server (SeaweedFS), in several processes.

Skipped, with the reason, where neither can be started (see ``tests/services.py``).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubfsm.hub.domain import Hub
from hubfsm.hub.server import LocalHub
from tests.services import free_ports, served_at

pytestmark = pytest.mark.slow  # real PostgreSQL and S3 servers, hub processes


def _request(
    url: str,
    method: str = "GET",
    key: str | None = None,
    body: object = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = dict(headers or {})
    data = None
    if key is not None:
        sent["x-api-key"] = key
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    if raw is not None:
        data = raw
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def _create(root: str, key: str, idempotency: str | None = None) -> dict[str, object]:
    headers = {"Idempotency-Key": idempotency} if idempotency else {}
    body = {"lineage": {"architecture": {"name": "yolov8n"}}}
    status, _, raw = _request(f"{root}/v1/models", "POST", key, body, headers)
    assert status == 200, raw
    return json.loads(raw)  # type: ignore[no-any-return]


def _upload(root: str, key: str, model_id: str, data: bytes) -> dict[str, object]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (("type", "epoch"), ("epoch", "1"), ("isBest", "true")):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    head = "".join(parts) + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="last.pt"; '
        'filename="last.pt"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    parsed = urllib.parse.urlsplit(root)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        conn.request(
            "POST",
            f"/v1/models/{model_id}/upload",
            body=body,
            headers={
                "x-api-key": key,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
        answer = conn.getresponse()
        raw = answer.read()
    finally:
        conn.close()
    assert answer.status == 200, raw
    return json.loads(raw)  # type: ignore[no-any-return]


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - loopback
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def team_hub(team: tuple[str, str], tmp_path: Path) -> Iterator[LocalHub]:
    database, objects = team
    with LocalHub(tmp_path / "hub", database=database, objects=objects) as local:
        yield local


def test_weights_go_to_the_store_and_come_back_by_presigned_url(team_hub: LocalHub) -> None:
    root, key = team_hub.url, team_hub.api_key
    model_id = str(_create(root, key)["data"]["id"])  # type: ignore[index]
    data = os.urandom(9 * (1 << 20) + 5)  # two parts of a multipart upload
    saved = _upload(root, key, model_id, data)
    assert saved["data"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    _, _, raw = _request(f"{root}/v1/models/{model_id}", key=key)
    signed = json.loads(raw)["data"]["resume"]
    status, headers, _ = _request(signed)
    assert status == 302
    assert headers["x-checksum-sha256"] == hashlib.sha256(data).hexdigest()
    link = headers["location"]
    assert not link.startswith(root)  # straight from the store, not through the hub
    assert _fetch(link) == (200, data)
    # With a key, the API streams the file from the store through the hub.
    status, headers, body = _request(f"{root}/v1/models/{model_id}/weights/last", key=key)
    assert (status, body) == (200, data)
    assert headers["x-checksum-sha256"] == hashlib.sha256(data).hexdigest()

    # The S3 server checks the signature: a changed one, or a changed key, is refused.
    tampered = link.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert _fetch(tampered)[0] == 403
    other = link.replace("/weights/", "/weights/x")
    assert _fetch(other)[0] == 403


def test_an_expired_presigned_url_is_refused_by_the_store(team_hub: LocalHub) -> None:
    from hubfsm.hub.store_postgres import PostgresStore

    store = team_hub.hub.store
    assert isinstance(store, PostgresStore)
    staged = store.stage_weights(b"weights")
    store.commit_weights("m" * 20, "best", staged)
    found = store.weights_link("m" * 20, "best", 1, "best.pt")
    assert found is not None
    info, link = found
    assert _fetch(link) == (200, b"weights")
    time.sleep(2.5)  # past the link's one second (S3 counts whole seconds)
    assert _fetch(link)[0] == 403
    assert info.sha256 == hashlib.sha256(b"weights").hexdigest()


def test_replacing_weights_swaps_the_pointer_and_deletes_the_old_object(
    team_hub: LocalHub,
) -> None:
    from hubfsm.hub.store_postgres import PostgresStore

    store = team_hub.hub.store
    assert isinstance(store, PostgresStore)
    store.commit_weights("m" * 20, "last", store.stage_weights(b"one"))
    store.commit_weights("m" * 20, "last", store.stage_weights(io.BytesIO(b"two")))
    # Only the current object is left: the replaced one went once the swap committed.
    assert len(store.objects.listing()) == 1
    content = store.open_weights("m" * 20, "last")
    assert content is not None and not isinstance(content, bytes)
    with content:
        assert content.read() == b"two"
    # An upload cut short (in no record) is swept once old enough; a fresh one is kept.
    orphan = store.stage_weights(b"orphan")
    assert store.sweep_objects(older_than=3600) == 0
    assert store.sweep_objects(older_than=-60) == 1
    assert orphan.handle not in [key for key, _ in store.objects.listing()]
    assert len(store.objects.listing()) == 1


def test_replies_expire_after_the_retention(team: tuple[str, str]) -> None:
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.stored import StoredReply
    from hubfsm.hub.team import S3Objects

    now = [1000.0]
    store = PostgresStore(team[0], S3Objects(team[1]), reply_retention=60, clock=lambda: now[0])
    try:
        store.put_reply("s", StoredReply(200, {"success": True}, "ab"))
        now[0] += 59
        assert store.get_reply("s") == StoredReply(200, {"success": True}, "ab")
        now[0] += 2
        assert store.get_reply("s") is None
        assert store.prune_replies() == 1
    finally:
        store.close()


def test_a_database_restart_costs_no_request_an_error(team: tuple[str, str]) -> None:
    import psycopg

    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

    store = PostgresStore(team[0], S3Objects(team[1]), pool_size=2)
    try:
        assert store.get_model("m" * 20) is None  # the pool's connection is made and idle
        # What a restart of PostgreSQL does to the connections a pool holds.
        with psycopg.connect(team[0], autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        assert ended and all(row[0] for row in ended)
        for _ in range(3):  # each connection the pool held is found dead and replaced
            assert store.get_model("m" * 20) is None
    finally:
        store.close()


# -- several processes -------------------------------------------------------------


def _serve(
    data: Path, database: str, objects: str, port: int = 0, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """A hub process serving, and its URL (on a port it picks itself unless ``port``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", str(data),
         "--database", database, "--objects", objects, "--port", str(port),
         "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        return proc, served_at(proc)
    except BaseException:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[bytes]) -> int:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def two_hubs(team: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """Two hub processes on one database and bucket: their roots and the shared key."""
    database, objects = team
    first, first_url = _serve(tmp_path / "hub", database, objects)
    try:
        second, second_url = _serve(tmp_path / "hub", database, objects)
        try:
            key = (tmp_path / "hub" / "api_key").read_text().strip()
            yield first_url, second_url, key
        finally:
            assert _stop(second) == 0
    finally:
        assert _stop(first) == 0


def test_racing_duplicates_on_two_processes_create_one_model(
    two_hubs: tuple[str, str, str], team: tuple[str, str]
) -> None:
    import psycopg

    first, second, key = two_hubs
    pairs = 40
    answers: dict[tuple[int, int], object] = {}

    def send(index: int, side: int) -> None:
        barrier.wait(10)
        root = first if side == 0 else second
        answers[(index, side)] = _create(root, key, f"race-{index}")["data"]

    for index in range(pairs):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=send, args=(index, side)) for side in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert answers[(index, 0)] == answers[(index, 1)]
    with psycopg.connect(team[0]) as conn:
        row = conn.execute("SELECT count(*) FROM models").fetchone()
    assert row is not None and row[0] == pairs


def test_a_key_revoked_anywhere_is_refused_by_every_process(
    two_hubs: tuple[str, str, str], team: tuple[str, str]
) -> None:
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

    first, second, key = two_hubs
    admin = Hub(PostgresStore(team[0], S3Objects(team[1])))
    try:
        extra = "Zq" * 21
        admin.add_key(extra, label="teammate")
        assert _request(f"{first}/v1/auth", "POST", extra)[0] == 200
        assert _request(f"{second}/v1/auth", "POST", extra)[0] == 200
        admin.revoke_key(extra)
        assert _request(f"{first}/v1/auth", "POST", extra)[0] == 401
        assert _request(f"{second}/v1/auth", "POST", extra)[0] == 401
        assert _request(f"{second}/v1/auth", "POST", key)[0] == 200
    finally:
        admin.store.close()


def test_a_platform_upload_put_to_one_process_is_promoted_by_another(
    two_hubs: tuple[str, str, str], team: tuple[str, str]
) -> None:
    from hubfsm.hub.keys import new_platform_key
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

    first, second, _ = two_hubs
    admin = Hub(PostgresStore(team[0], S3Objects(team[1])))
    try:
        key = new_platform_key()
        admin.add_key(key, label="trainer")
        bearer = {"Authorization": f"Bearer {key}"}

        def call(root: str, path: str, body: object) -> dict[str, Any]:
            status, _, raw = _request(f"{root}{path}", "POST", body=body, headers=bearer)
            assert status == 200, raw
            return json.loads(raw)  # type: ignore[no-any-return]

        started = call(
            first,
            "/api/webhooks/training/metrics",
            {"project": "team/p", "name": "r", "event": "training_started", "data": {}},
        )
        model, run = started["modelId"], started["runId"]
        sent = []
        for index in range(2):
            # ultralytics sends each step on a connection of its own: behind one port or a
            # load balancer, the PUT and the event that promotes it reach different processes.
            where = call(
                first,
                "/api/webhooks/models/upload",
                {"filename": "last.pt", "modelId": model, "runId": run},
            )
            sent.append(os.urandom(1000 + index))
            link = urllib.parse.urlsplit(where["uploadUrl"])
            status, _, raw = _request(
                f"{first}{link.path}?{link.query}", "PUT", raw=sent[-1], headers=bearer
            )
            assert status == 200, raw
            if index == 1:
                # Waiting for its event, the file is no orphan to sweep, however old.
                assert admin.store.sweep_objects(older_than=-60) == 0  # type: ignore[attr-defined]
            event = {"modelPath": where["gcsPath"], "runId": run, "uploadPath": where["uploadPath"]}
            call(
                second,
                "/api/webhooks/training/metrics",
                {"modelId": model, "event": "checkpoint_saved", "data": event},
            )
            info = admin.store.weights_info(model, "last")
            assert info is not None and info.sha256 == hashlib.sha256(sent[-1]).hexdigest()
        # Promoted, the waiting file is gone: only the current checkpoint's object is left.
        store = admin.store
        assert isinstance(store, PostgresStore)
        assert len(store.objects.listing()) == 1
        assert store.uploads.of_model(model) == {}
        # A checkpoint the final weights overtook between its PUT and its event waits for
        # nothing once the model is trained: it goes with the training's end.
        where = call(
            first,
            "/api/webhooks/models/upload",
            {"filename": "last.pt", "modelId": model, "runId": run},
        )
        link = urllib.parse.urlsplit(where["uploadUrl"])
        status, _, raw = _request(
            f"{first}{link.path}?{link.query}", "PUT", raw=b"overtaken", headers=bearer
        )
        assert status == 200, raw
        assert len(store.uploads.of_model(model)) == 1
        promoted = "models/" + str(event["uploadPath"]).removeprefix("uploads/")
        results = {"metrics": {"metrics/mAP50-95(B)": 0.5}, "modelPath": promoted}
        call(
            second,
            "/api/webhooks/training/metrics",
            {"modelId": model, "event": "training_complete", "data": {"results": results}},
        )
        best = store.weights_info(model, "best")
        assert best is not None and best.sha256 == hashlib.sha256(sent[-1]).hexdigest()
        assert store.uploads.of_model(model) == {}
        assert len(store.objects.listing()) == 2  # last and best, nothing waiting
    finally:
        admin.store.close()


def test_runs_started_at_once_on_two_processes_get_one_slug_each(
    two_hubs: tuple[str, str, str], team: tuple[str, str]
) -> None:
    from hubfsm.hub.keys import new_platform_key
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

    first, second, _ = two_hubs
    admin = Hub(PostgresStore(team[0], S3Objects(team[1])))
    try:
        key = new_platform_key()
        admin.add_key(key, label="team")
    finally:
        admin.store.close()
    runs = 8
    slugs: list[str] = []
    barrier = threading.Barrier(runs)

    def start(index: int) -> None:
        # ultralytics' default name, on both processes at once (a body of its own each).
        body = {"project": "team/p", "name": "train", "event": "training_started",
                "data": {"trainArgs": {"seed": str(index)}}}
        barrier.wait(10)
        status, _, raw = _request(
            f"{(first, second)[index % 2]}/api/webhooks/training/metrics",
            "POST",
            body=body,
            headers={"Authorization": f"Bearer {key}"},
        )
        assert status == 200, raw
        slugs.append(json.loads(raw)["modelSlug"])

    threads = [threading.Thread(target=start, args=(index,)) for index in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(slugs) == sorted(["train", *(f"train-{n}" for n in range(2, runs + 1))])


def test_workers_share_one_port_and_stop_together(
    team: tuple[str, str], tmp_path: Path
) -> None:
    database, objects = team
    (tmp_path / "hub" / "spool").mkdir(parents=True)
    (tmp_path / "hub" / "spool" / "cut-short.part").write_bytes(b"partial")
    proc, root = _serve(tmp_path / "hub", database, objects, workers=2)
    assert list((tmp_path / "hub" / "spool").iterdir()) == []
    key = (tmp_path / "hub" / "api_key").read_text().strip()
    try:
        made = {str(_create(root, key)["data"]["id"]) for _ in range(20)}  # type: ignore[index]
        assert len(made) == 20
        status, _, raw = _request(f"{root}/runs.json")
        assert status == 200
        assert {run["record"]["id"] for run in json.loads(raw)["runs"]} == made
    finally:
        assert _stop(proc) == 0
    with pytest.raises(OSError):
        _request(f"{root}/runs.json")


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = entry.joinpath("stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_that_dies_is_replaced_and_one_that_cannot_start_stops_the_hub(
    team: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    from hubfsm.hub import foreground

    monkeypatch.setattr(foreground, "WORKER_SETTLE", 1.0)
    database, objects = team
    out, stop = io.StringIO(), threading.Event()
    result: list[int] = []
    options = {"port": 0, "out": out, "stop": stop, "database": database, "objects": objects,
               "workers": 2}
    thread = threading.Thread(
        target=lambda: result.append(foreground.serve(tmp_path / "hub", **options))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in out.getvalue():
            assert thread.is_alive() and time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
        root = out.getvalue().split("serving at ", 1)[1].split()[0]
        workers = [p for p in multiprocessing.active_children() if p.name.startswith("Spawn")]
        assert len(workers) == 2
        time.sleep(1.5)  # past the settling time
        os.kill(workers[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
        while "serves in its place" not in out.getvalue():
            assert thread.is_alive() and time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
        assert f"worker {workers[0].pid} exited (SIGKILL)" in out.getvalue()
        key = (tmp_path / "hub" / "api_key").read_text().strip()
        made = {str(_create(root, key)["data"]["id"]) for _ in range(10)}  # type: ignore[index]
        assert len(made) == 10
        # The replacement dies at once: something a restart will not fix, so the hub stops.
        # "At once" is a longer while from here on: the requests above took what time the
        # machine's load gave them, and must not make the replacement look settled.
        monkeypatch.setattr(foreground, "WORKER_SETTLE", 600.0)
        replaced = [p for p in multiprocessing.active_children() if p.name.startswith("Spawn")]
        fresh = [p for p in replaced if p.pid != workers[1].pid]
        assert len(fresh) == 1
        os.kill(fresh[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
        thread.join(60)
        assert result == [1]
        assert "within 600 s of its start" in out.getvalue()
    finally:
        stop.set()
        thread.join(30)


def test_workers_stop_when_their_hub_is_killed(team: tuple[str, str], tmp_path: Path) -> None:
    database, objects = team
    proc, _ = _serve(tmp_path / "hub", database, objects, workers=2)
    try:
        workers = _children(proc.pid)
        assert workers
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    # No worker stays behind to share the port with the hub started in its place.
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, [pid for pid in workers if _alive(pid)]
        time.sleep(0.1)


def test_workers_refuse_a_port_another_hub_serves(
    team: tuple[str, str], tmp_path: Path
) -> None:
    database, objects = team
    proc, root = _serve(tmp_path / "a", database, objects, workers=2)
    port = urllib.parse.urlsplit(root).port
    try:
        # A second hub (here on another bucket) must not quietly take half the requests.
        second = subprocess.Popen(
            [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", str(tmp_path / "b"),
             "--database", database, "--objects", f"{objects}-other", "--port", str(port),
             "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, said = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            assert _stop(second) == 0
            pytest.fail("a second hub served on the port of the first")
        assert second.returncode == 1
        assert "the port is in use" in said
    finally:
        assert _stop(proc) == 0


def test_keys_are_managed_in_the_database(team: tuple[str, str], tmp_path: Path) -> None:
    from hubfsm.hub import admin
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

    out = io.StringIO()
    key = admin.add(tmp_path, "teammate", out, database=team[0])
    assert key not in admin.listing(tmp_path, out, database=team[0])[-1].hint
    store = PostgresStore(team[0], S3Objects(team[1]))
    try:
        hub = Hub(store)
        assert hub.principal(key) is not None
        record = [r for r in hub.list_keys() if r.label == "teammate"][0]
        assert admin.revoke(tmp_path, record.id, out, database=team[0]) == 0
        assert hub.principal(key) is None
    finally:
        store.close()
    assert not (tmp_path / "hub.sqlite3").exists()  # nothing went to the data directory's SQLite


def test_managing_the_teams_keys_adds_no_key_of_the_machine(
    team: tuple[str, str], tmp_path: Path
) -> None:
    from hubfsm.hub import admin

    out = io.StringIO()
    laptop = tmp_path / "laptop"  # the data directory of the teammate's own local hub
    admin.add(laptop, "teammate", out, database=team[0])
    listed = admin.listing(laptop, out, database=team[0])
    # Only the key added: no admin key made from (or written to) the machine's key file.
    assert [(record.label, record.admin) for record in listed] == [("teammate", False)]
    assert not laptop.exists()


def test_the_banners_key_commands_reach_the_teams_keys(
    team: tuple[str, str], tmp_path: Path
) -> None:
    import shlex

    from hubfsm.hub.foreground import serve

    database, objects = team
    out, stop = io.StringIO(), threading.Event()
    options = {"port": 0, "out": out, "stop": stop, "database": database, "objects": objects}
    thread = threading.Thread(target=serve, args=(tmp_path / "hub",), kwargs=options)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in out.getvalue():
            assert thread.is_alive() and time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
        lines = out.getvalue().splitlines()
        assert "  sweeps:   every 24 h, objects no record names older than 24 h" in lines
        # Run the command the banner gives for a Platform key, as printed.
        command = lines[lines.index("For ultralytics 8.4 (the Platform API), make a key with") + 1]
        made = subprocess.run(
            [sys.executable, "-m", *shlex.split(command)],  # hubfsm hub keys add ...
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = made.stdout.split()[-1]
        root = out.getvalue().split("serving at ", 1)[1].split()[0]
        status, _, _ = _request(
            f"{root}/api/account/summary", headers={"Authorization": f"Bearer {key}"}
        )
        assert status == 200
    finally:
        stop.set()
        thread.join(30)


def test_a_platform_run_on_the_team_hub_is_cancelled_from_any_machine(
    team_hub: LocalHub, team: tuple[str, str], tmp_path: Path
) -> None:
    from hubfsm.hub.keys import new_platform_key

    key = new_platform_key()
    team_hub.hub.add_key(key, label="trainer")
    bearer = {"Authorization": f"Bearer {key}"}
    path = f"{team_hub.url}/api/webhooks/training/metrics"
    body = {"project": "team/p", "name": "r", "event": "training_started", "data": {}}
    status, _, raw = _request(path, "POST", body=body, headers=bearer)
    assert status == 200, raw
    model = json.loads(raw)["modelId"]
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "hub", "cancel", model, "--database", team[0]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    epoch = {"epoch": 0, "metrics": {"loss": 1.0}}
    body = {"modelId": model, "event": "epoch_end", "data": epoch}
    status, _, raw = _request(path, "POST", body=body, headers=bearer)
    assert status == 200 and json.loads(raw)["cancelled"] is True, raw


def test_serve_refuses_workers_without_a_database(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", str(tmp_path),
         "--workers", "2", "--port", "0"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert b"several workers need a shared database" in done.stderr


def test_an_unreachable_database_is_an_error_without_the_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="the team extra (psycopg) is not installed")
    (port,) = free_ports(1)
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", str(tmp_path), "--database",
         f"postgresql://hub:sekrit@127.0.0.1:{port}/hub", "--objects", "s3://b/p", "--port", "0"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert b"cannot use the database" in done.stderr
    assert b"sekrit" not in done.stderr + done.stdout


def test_an_object_store_that_refuses_the_hub_is_an_error_at_start(
    team: tuple[str, str], tmp_path: Path
) -> None:
    database, objects = team
    wrong = "w" * 40
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", str(tmp_path), "--database",
         database, "--objects", objects, "--port", "0"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "AWS_SECRET_ACCESS_KEY": wrong},
    )
    # Not a hub that starts and then fails every trainer's upload with a 500.
    assert done.returncode == 2, done.stdout[-300:]
    assert b"cannot use the object store" in done.stderr
    assert wrong.encode() not in done.stderr + done.stdout


def test_a_download_reads_digest_and_object_of_one_upload_while_another_replaces_it(
    team_hub: LocalHub,
) -> None:
    from hubfsm.hub.store_postgres import PostgresStore

    store = team_hub.hub.store
    assert isinstance(store, PostgresStore)
    model = "r" * 20
    store.commit_weights(model, "last", store.stage_weights(b"old weights"))
    objects = store.objects
    real_open = objects.open
    replaced: list[str] = []

    def open_after_a_replacement(key: str) -> object:
        # Another process's upload lands between the pointer's read and the object's
        # opening: the object read is deleted once that swap committed.
        if not replaced:
            replaced.append(key)
            store.commit_weights(model, "last", store.stage_weights(b"new weights"))
        return real_open(key)

    objects.open = open_after_a_replacement  # type: ignore[method-assign]
    try:
        found = team_hub.hub.weights(model, "last")
    finally:
        objects.open = real_open  # type: ignore[method-assign]
    assert found is not None and replaced
    info, content = found
    assert not isinstance(content, bytes)
    with content:
        data = content.read()
    assert data == b"new weights"
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)


def test_a_key_transfer_keeps_a_trainers_update_made_while_it_ran(
    team_hub: LocalHub, team: tuple[str, str]
) -> None:
    import psycopg

    hub = team_hub.hub
    old, new = hub.add_key("Ol" * 21, label="old"), hub.add_key("Nw" * 21, label="new")
    model = _create(team_hub.url, "Ol" * 21)["data"]["id"]
    assert isinstance(model, str)
    # A trainer's request holds the model's row and is about to write its progress.
    with psycopg.connect(team[0]) as trainer:
        (text,) = trainer.execute(
            "SELECT record FROM models WHERE id = %s FOR UPDATE", (model,)
        ).fetchone() or ("",)
        moved: list[int] = []
        thread = threading.Thread(target=lambda: moved.append(hub.transfer(old.id, new.id)))
        thread.start()
        # The transfer waits for the row (seen from the server: a backend waits on a lock).
        for _ in range(600):
            waiting = trainer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()
            if waiting is not None and waiting[0] > 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the transfer never waited for the model's row")
        record = json.loads(str(text))
        record["metrics_epoch"] = 7
        trainer.execute(
            "UPDATE models SET record = %s WHERE id = %s", (json.dumps(record), model)
        )
        trainer.commit()
        thread.join(30)
    assert moved == [1]
    stored = hub.store.get_model(model)
    assert stored is not None and stored.owner == new.id and stored.metrics_epoch == 7


def test_the_rate_limit_is_counted_in_the_database_across_processes(
    team: tuple[str, str], tmp_path: Path
) -> None:
    database, objects = team
    # One request per 100 s: a second one within the test is over the limit anywhere.
    options = {"database": database, "objects": objects, "rate_limit": 0.01}
    with (
        LocalHub(tmp_path / "a", **options) as first,  # type: ignore[arg-type]
        LocalHub(tmp_path / "b", **options) as second,  # type: ignore[arg-type]
    ):
        key = first.api_key
        status, headers, _ = _request(f"{first.url}/v1/auth", "POST", key)
        assert status == 200 and headers["x-ratelimit-remaining"] == "0"
        # The other process sees the bucket the first one spent.
        status, headers, _ = _request(f"{second.url}/v1/auth", "POST", key)
        assert status == 429 and int(headers["retry-after"]) > 1
        assert _request(f"{first.url}/v1/auth", "POST", key)[0] == 429
        # Another key has a bucket of its own.
        assert _request(f"{second.url}/v1/auth", "POST", second.api_key)[0] == 200


def _multipart(
    fields: list[tuple[str, str]], data: bytes, file_first: bool = False
) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    file_part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="last.pt"; '
            'filename="last.pt"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + b"\r\n"
    )
    body = [file_part, *parts] if file_first else [*parts, file_part]
    return b"".join(body) + f"--{boundary}--\r\n".encode(), boundary


def test_an_upload_streams_to_the_object_store_without_a_spool_file(
    team_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import PART_SIZE

    store = team_hub.hub.store
    assert isinstance(store, PostgresStore)
    key = team_hub.api_key
    model = _create(team_hub.url, key)["data"]["id"]
    # No folder for temporary files: an upload that passed through one would fail.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no such folder"))
    data = os.urandom(2 * PART_SIZE + 12345)  # three parts of a multipart upload
    fields = [("type", "epoch"), ("epoch", "1"), ("isBest", "false")]
    body, boundary = _multipart(fields, data)
    parsed = urllib.parse.urlsplit(team_hub.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        headers = {"x-api-key": key, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        conn.request("POST", f"/v1/models/{model}/upload", body=body, headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        assert answer.status == 200, raw
        assert json.loads(raw)["data"]["sha256"] == hashlib.sha256(data).hexdigest()
        # The connection serves the next request: the body was read to its end.
        conn.request("POST", "/v1/auth", headers={"x-api-key": key})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert not (team_hub.data_dir / "spool").exists()
    assert not (tmp_path / "no such folder").exists()
    info = store.weights_info(model, "last")
    assert info is not None and info.size == len(data)
    # Fields sent after the file part are not seen: refused before the file is read.
    body, boundary = _multipart(fields, b"weights", file_first=True)
    status, _, raw = _request(
        f"{team_hub.url}/v1/models/{model}/upload",
        "POST",
        key,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        raw=body,
    )
    assert status == 400, raw


def test_an_upload_cut_short_leaves_no_object(team_hub: LocalHub) -> None:
    import socket

    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import PART_SIZE

    store = team_hub.hub.store
    assert isinstance(store, PostgresStore)
    key = team_hub.api_key
    model = _create(team_hub.url, key)["data"]["id"]
    fields = [("type", "epoch"), ("epoch", "1"), ("isBest", "false")]
    body, boundary = _multipart(fields, os.urandom(PART_SIZE + 1000))
    head = (
        f"POST /v1/models/{model}/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    parsed = urllib.parse.urlsplit(team_hub.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=60) as sock:
        # More than a part (so the store began a multipart upload), then the client stops.
        sock.sendall(head + body[: PART_SIZE + 500])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    # Cut, not malformed: a status the client retries (see test_hub_stop).
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert store.weights_info(model, "last") is None
    assert store.objects.listing() == []
    client = store.objects._client
    uploads = client.list_multipart_uploads(Bucket=store.objects.bucket).get("Uploads", [])
    assert not [u for u in uploads if u["Key"].startswith(store.objects.prefix)]


def test_a_multipart_upload_whose_process_died_is_swept(team_hub: LocalHub) -> None:
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import PART_SIZE

    store = team_hub.hub.store
    assert isinstance(store, PostgresStore)
    client, bucket = store.objects._client, store.objects.bucket
    # What a hub process killed between two parts of an upload leaves in the store.
    key = store.objects.new_key()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * PART_SIZE
    )

    def unfinished() -> list[str]:
        found = client.list_multipart_uploads(Bucket=bucket, Prefix=store.objects.prefix)
        return [each["UploadId"] for each in found.get("Uploads", [])]

    assert store.sweep_objects(older_than=3600) == 0  # it may still be under way
    assert unfinished() == [upload]
    assert store.sweep_objects(older_than=-60) == 1
    assert unfinished() == []


def test_a_page_session_from_one_process_holds_on_another(
    team: tuple[str, str], tmp_path: Path
) -> None:
    database, objects = team
    options = {"database": database, "objects": objects, "sign_in": True}
    with (
        LocalHub(tmp_path / "a", **options) as first,  # type: ignore[arg-type]
        LocalHub(tmp_path / "b", **options) as second,  # type: ignore[arg-type]
    ):
        member = "Mb" * 21
        first.hub.add_key(member, label="member")
        made = _create(second.url, member)["data"]["id"]
        other = _create(second.url, second.api_key)["data"]["id"]
        form = urllib.parse.urlencode({"key": member}).encode()
        status, headers, _ = _request(
            f"{first.url}/signin",
            "POST",
            headers={
                "Origin": first.url,
                "Host": urllib.parse.urlsplit(first.url).netloc,
                "Content-Type": "application/x-www-form-urlencoded",
            },
            raw=form,
        )
        assert status == 303
        cookie = headers["set-cookie"].split(";")[0]
        status, _, body = _request(f"{second.url}/runs.json", headers={"Cookie": cookie})
        assert status == 200
        assert [run["record"]["id"] for run in json.loads(body)["runs"]] == [made]
        assert _request(f"{second.url}/models/{other}", headers={"Cookie": cookie})[0] == 404
        # Revoked through one process, the session ends on the other.
        first.hub.revoke_key(member)
        assert _request(f"{second.url}/runs.json", headers={"Cookie": cookie})[0] == 401


def test_the_sweep_command_deletes_what_no_record_names_and_keeps_the_rest(
    team: tuple[str, str], team_hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    from hubfsm.cli.main import main
    from hubfsm.hub.store_postgres import PostgresStore

    store = team_hub.hub.store
    assert isinstance(store, PostgresStore)
    kept = store.stage_weights(b"w" * 1000)
    model_id = str(_create(team_hub.url, team_hub.api_key)["data"]["id"])  # type: ignore[index]
    store.commit_weights(model_id, "last", kept)
    orphan = store.stage_weights(b"o" * 1000)  # an upload whose process died before its record
    args = ["hub", "sweep", "--database", team[0], "--objects", team[1]]
    assert main([*args]) == 0  # both are younger than a day
    assert {kept.handle, orphan.handle} <= {key for key, _ in store.objects.listing()}
    time.sleep(1.1)  # the store's times are whole seconds: the orphan is now older than 0 h
    assert main([*args, "--older-than-hours", "0"]) == 0
    names = {key for key, _ in store.objects.listing()}
    assert kept.handle in names and orphan.handle not in names
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "Swept 0 objects and unfinished uploads older than 24 h.",
        "Swept 1 objects and unfinished uploads older than 0 h.",
    ]


def test_one_process_of_the_team_claims_each_sweep(team: tuple[str, str]) -> None:
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

    now = [1_000_000.0]
    stores = [
        PostgresStore(team[0], S3Objects(team[1]), pool_size=1, clock=lambda: now[0])
        for _ in range(2)
    ]
    try:
        # Another test's hub may have swept this database (at the real time, far later).
        stores[0]._db.rows("DELETE FROM settings WHERE name = 'swept_at'")
        claims = []
        barrier = threading.Barrier(8)

        def claim(store: PostgresStore) -> None:
            barrier.wait(10)
            claims.append(store.claim_sweep(3600.0))

        racers = [threading.Thread(target=claim, args=(stores[i % 2],)) for i in range(8)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        assert sorted(claims) == [False] * 7 + [True]  # asked at once, one wins
        now[0] += 3599.0
        assert not stores[0].claim_sweep(3600.0) and not stores[1].claim_sweep(3600.0)
        now[0] += 1.0
        assert stores[1].claim_sweep(3600.0) and not stores[0].claim_sweep(3600.0)
    finally:
        for store in stores:
            store.close()


def test_a_served_team_hub_sweeps_by_itself(
    team: tuple[str, str], tmp_path: Path
) -> None:
    import structlog

    from hubfsm.hub.store_postgres import PostgresStore

    database, objects = team
    with LocalHub(tmp_path / "hub", database=database, objects=objects) as plain:
        store = plain.hub.store
        assert isinstance(store, PostgresStore)
        store._db.rows("DELETE FROM settings WHERE name = 'swept_at'")
        model_id = str(_create(plain.url, plain.api_key)["data"]["id"])  # type: ignore[index]
        kept = store.stage_weights(b"w" * 1000)
        store.commit_weights(model_id, "last", kept)
        orphan = store.stage_weights(b"o" * 1000)  # its process died before its record
    # Every second, leaving nothing for its age (the store's times are whole seconds).
    options = {"database": database, "objects": objects, "sweep_every": 1.0}
    with (
        structlog.testing.capture_logs() as logs,
        LocalHub(tmp_path / "hub", sweep_older_than=-60.0, **options) as swept,
    ):
        listing = swept.hub.store.objects.listing  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while orphan.handle in {key for key, _ in listing()}:
            assert time.monotonic() < deadline, "the orphan was never swept"
            time.sleep(0.1)
        assert kept.handle in {key for key, _ in listing()}
    assert any(e["event"] == "hub.swept" and e["objects"] >= 1 for e in logs), logs


def test_the_sweep_command_names_a_database_it_cannot_reach(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hubfsm.cli.main import main

    url = "postgresql://hub:s3cret-pw@127.0.0.1:1/hub"
    status = main(["hub", "sweep", "--database", url, "--objects", "s3://b/p"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: cannot use the database:")
    assert "s3cret-pw" not in err
