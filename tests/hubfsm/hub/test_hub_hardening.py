"""What a careless or hostile client sends: the hub answers 4xx, never 500, and stays up.

Raw sockets stand in for clients that lie about their bodies or say nothing: each test
waits for an answer with a bounded socket timeout, never on a clock of its own.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hubfsm.hub.bodies import BodyLimits
from hubfsm.hub.domain import Hub
from hubfsm.hub.server import LocalHub
from tests.support import KEY

TIMEOUT = 10
CREATE = {"lineage": {"architecture": {"name": "yolov8n"}}, "meta": {"name": "hardened"}}


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub", limits=BodyLimits(json=64 << 10, upload=1 << 20)) as hub:
        yield hub


def raw(local: LocalHub, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request head (and part of a body), read the answer: (status, whole reply)."""
    with socket.create_connection(("127.0.0.1", local.port), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_a_keyless_body_is_answered_before_it_is_sent(local: LocalHub) -> None:
    # 200 MB announced, 10 bytes sent: the 401 comes back without the hub waiting for
    # (or storing) the rest. A hub that read the body first would never answer here.
    head = (
        "POST /v1/models/abcdefghij0123456789/upload HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 200000000"
    )
    status, reply = raw(local, head, b"--b\r\nxxxxx")
    assert status == 401
    assert b"Connection: close" in reply
    head = "POST /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: nope\r\nContent-Length: 16777216"
    assert raw(local, head, b"{")[0] == 401
    staging = local.data_dir / "weights" / ".staging"
    assert list(staging.iterdir()) == []


def test_bodies_over_their_cap_get_413_unread(local: LocalHub) -> None:
    key = local.api_key
    head = f"POST /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 65537"
    status, reply = raw(local, head, b"{")
    assert status == 413 and b"Connection: close" in reply
    head = (
        f"POST /v1/models/abcdefghij0123456789/upload HTTP/1.1\r\nHost: x\r\nx-api-key: {key}"
        "\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000"
    )
    assert raw(local, head, b"--b")[0] == 413
    # A body without a Content-Length is cut at the cap too.
    big = json.dumps({"meta": {"name": "x" * (70 << 10)}}).encode()
    chunked = requests.post(
        f"{local.url}/v1/models",
        data=iter([big]),
        headers={"x-api-key": key, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert chunked.status_code == 413
    assert requests.post(f"{local.url}/v1/auth", headers={"x-api-key": key}).status_code == 200


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nested deeper"),
        (b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "nested deeper"),
        (b'{"meta": {"name": NaN}, "lineage": {"architecture": {"name": "y"}}}', "NaN"),
        (b'{"meta": {"name": 1}, "x": Infinity}', "Infinity"),
        (b'{"meta": {"name": "\\ud800"}, "lineage": {"architecture": {"name": "y"}}}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b"\xff\xfe not utf-8", "not valid JSON"),
    ],
)
def test_bad_json_is_a_400(local: LocalHub, body: bytes, why: str) -> None:
    reply = requests.post(
        f"{local.url}/v1/models", data=body, headers={"x-api-key": local.api_key}, timeout=TIMEOUT
    )
    assert reply.status_code == 400, reply.text
    assert why in reply.json()["message"]


def test_bad_metrics_are_a_400_and_nan_metrics_are_kept_as_null(local: LocalHub) -> None:
    key = {"x-api-key": local.api_key}
    model_id = requests.post(
        f"{local.url}/v1/models", json=CREATE, headers=key, timeout=TIMEOUT
    ).json()["data"]["id"]
    url = f"{local.url}/v1/models/{model_id}"
    surrogate = {"type": "metrics", "metrics": {"0": '{"\\ud800loss": 1.0}'}}
    reply = requests.post(url, json=surrogate, headers=key, timeout=TIMEOUT)
    assert reply.status_code == 400 and "surrogate" in reply.json()["message"]
    deep = {"type": "metrics", "metrics": {"0": '{"a": ' + "[" * 5000 + "]" * 5000 + "}"}}
    assert requests.post(url, json=deep, headers=key, timeout=TIMEOUT).status_code == 400
    # A diverged loss is NaN in ultralytics' JSON: the epoch is kept, as strict JSON.
    nan = {"type": "metrics", "metrics": {"0": '{"train/box_loss": NaN, "lr/pg0": 0.01}'}}
    assert requests.post(url, json=nan, headers=key, timeout=TIMEOUT).status_code == 200
    listed = requests.get(f"{url}/metrics", headers=key, timeout=TIMEOUT)
    assert listed.status_code == 200
    assert "NaN" not in listed.text
    assert listed.json()["data"][0]["metrics"] == {"train/box_loss": None, "lr/pg0": 0.01}
    assert requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT).status_code == 200


def test_a_lone_surrogate_stored_earlier_does_not_break_the_pages(local: LocalHub) -> None:
    # Data written by an older hub may hold one; the pages show it escaped.
    key = {"x-api-key": local.api_key}
    model_id = requests.post(
        f"{local.url}/v1/models", json=CREATE, headers=key, timeout=TIMEOUT
    ).json()["data"]["id"]
    store = local.hub.store
    record = store.get_model(model_id)
    assert record is not None
    import attrs

    store.put_model(attrs.evolve(record, name="bad \ud800 name"))
    store.put_metrics(model_id, {0: json.dumps({"odd\ud800key": 1.0})})
    for path in ("/", f"/models/{model_id}", f"/models/{model_id}/data.json", "/runs.json"):
        assert requests.get(f"{local.url}{path}", timeout=TIMEOUT).status_code == 200, path
    got = requests.get(f"{local.url}/v1/models/{model_id}", headers=key, timeout=TIMEOUT)
    assert got.status_code == 200


def test_header_and_form_oddities_are_4xx(local: LocalHub) -> None:
    key = local.api_key
    head = "GET /v1/models/abcdefghij0123456789 HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe"
    status, _ = raw(local, head.encode("latin-1").decode("latin-1"))
    assert status == 401
    broken = requests.post(
        f"{local.url}/v1/models/abcdefghij0123456789/upload",
        data=b"--b\r\nnot a part",
        headers={"x-api-key": key, "Content-Type": "multipart/form-data; boundary=b"},
        timeout=TIMEOUT,
    )
    assert 400 <= broken.status_code < 500
    idem = requests.post(
        f"{local.url}/v1/models",
        json=CREATE,
        headers={
            "x-api-key": key,
            "Idempotency-Key": "\udc80".encode("utf-8", "surrogateescape").decode("latin-1"),
        },
        timeout=TIMEOUT,
    )
    assert idem.status_code == 200


def test_silent_connections_are_closed_and_do_not_block_others(tmp_path: Path) -> None:
    # Idle connections wait in a selector and are closed after `timeout`; a request head
    # that stalls holds a worker only for `head_timeout`. Two workers, nine stalled sockets.
    # (The server counts `timeout` in whole seconds, at least one.)
    with LocalHub(tmp_path / "hub", timeout=1, head_timeout=0.3, threads=2) as local:
        silent = [socket.create_connection(("127.0.0.1", local.port)) for _ in range(6)]
        slow = [socket.create_connection(("127.0.0.1", local.port)) for _ in range(3)]
        try:
            for sock in slow:
                sock.sendall(b"POST /v1/auth HTTP/1.1\r\nHost: x\r\n")  # and then nothing
            # More stalled connections than worker threads, yet requests get through.
            for _ in range(3):
                reply = requests.post(
                    f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=TIMEOUT
                )
                assert reply.status_code == 200
            for sock in silent + slow:
                sock.settimeout(TIMEOUT)
                # The hub closes each of them (recv sees the end, perhaps after a 408, or a
                # 503 for a stalled head past the one thread of two that such heads may hold).
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                assert data == b"" or data.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503"))
        finally:
            for sock in silent + slow:
                sock.close()


def test_a_request_head_that_stalls_is_cut_at_the_head_timeout(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "hub", timeout=60, head_timeout=0.3, threads=1) as local:
        with socket.create_connection(("127.0.0.1", local.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /v1/auth HTTP/1.1\r\n")
            # Closed long before the 60 s idle timeout (the recv would time out first).
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data == b"" or data.startswith(b"HTTP/1.1 408")
        reply = requests.post(
            f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=TIMEOUT
        )
        assert reply.status_code == 200


def test_an_upload_is_received_into_place_not_copied(
    local: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import os

    from hubfsm.hub import store_sqlite

    def no_copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("the upload was copied to a second temporary file")

    # The store's copying path makes its temporary file with mkstemp; it must not be taken.
    monkeypatch.setattr(store_sqlite.tempfile, "mkstemp", no_copy)
    key = {"x-api-key": local.api_key}
    model_id = requests.post(
        f"{local.url}/v1/models", json=CREATE, headers=key, timeout=TIMEOUT
    ).json()["data"]["id"]
    data = os.urandom(300_000)
    reply = requests.post(
        f"{local.url}/v1/models/{model_id}/upload",
        headers=key,
        data={"epoch": "2", "type": "epoch"},
        files={"last.pt": ("last.pt", data)},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"]["sha256"] == hashlib.sha256(data).hexdigest()
    stored = local.data_dir / "weights" / model_id / "last.pt"
    assert stored.read_bytes() == data
    assert list((local.data_dir / "weights" / ".staging").iterdir()) == []
    # A refused upload leaves nothing behind either.
    refused = requests.post(
        f"{local.url}/v1/models/abcdefghij0123456789/upload",
        headers=key,
        data={"epoch": "2", "type": "epoch"},
        files={"last.pt": ("last.pt", data)},
        timeout=TIMEOUT,
    )
    assert refused.status_code == 404
    assert list((local.data_dir / "weights" / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    "head_and_body",
    [
        b"Content-Length: -5\r\n\r\n{}",
        b"Content-Length: 1e3\r\n\r\n{}",
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ],
)
@pytest.mark.parametrize("keyed", [True, False])
def test_bodies_that_cannot_be_framed_are_4xx(
    local: LocalHub, head_and_body: bytes, keyed: bool
) -> None:
    key = f"x-api-key: {local.api_key}\r\n" if keyed else ""
    with socket.create_connection(("127.0.0.1", local.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"POST /v1/models HTTP/1.1\r\nHost: x\r\n{key}".encode() + head_and_body)
        status = int(sock.recv(4096).split(b" ", 2)[1])
    assert 400 <= status < 500
    assert requests.post(
        f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=TIMEOUT
    ).ok


def _json_values() -> object:
    from hypothesis import strategies as st

    text = st.text(st.characters(min_codepoint=0, max_codepoint=0xDFFF), max_size=8)
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4)
        ),
        max_leaves=20,
    )


def test_no_body_makes_the_domain_fail(hub: Hub) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from hubfsm.hub.calls import HubCall

    model_id = hub.handle(HubCall("POST", "/v1/models", KEY, CREATE)).body["data"]["id"]
    paths = [
        ("POST", "/v1/models"),
        ("POST", f"/v1/models/{model_id}"),
        ("POST", f"/v1/agent/heartbeat/models/{model_id}"),
    ]

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from(paths), _json_values(), st.booleans())
    def check(where: tuple[str, str], body: object, wrap: bool) -> None:
        if wrap:  # inside the shapes the endpoints expect, so the checks get deeper
            body = {
                "type": "metrics",
                "metrics": {"0": json.dumps(body)},
                "config": body,
                "lineage": {"architecture": {"name": "yolov8n"}},
                "agent": body,
            }
        reply = hub.handle(HubCall(where[0], where[1], KEY, body))
        assert reply.status < 500
        json.dumps(reply.body)  # the answer itself is always JSON

    check()
    # Whatever was accepted, the pages' data still renders.
    from hubfsm.hub import page, web

    for record in hub.models():
        data = web.model_data(hub, record["id"])
        assert data is not None
        page.render_model(data).encode("utf-8", "backslashreplace")
    page.render_index(web.runs(hub)[0], 0.0)


def _get(local: LocalHub, path: str, host: str, **headers: str) -> tuple[int, bytes]:
    """GET ``path`` from the hub where it listens, naming ``host`` in the Host header."""
    connection = http.client.HTTPConnection(local.host, local.port, timeout=TIMEOUT)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_pages_answer_only_a_host_naming_this_machine(local: LocalHub) -> None:
    key = {"x-api-key": local.api_key}
    created = requests.post(f"{local.url}/v1/models", json=CREATE, headers=key, timeout=TIMEOUT)
    model_id = created.json()["data"]["id"]
    upload = requests.post(
        f"{local.url}/v1/models/{model_id}/upload",
        headers=key,
        data={"epoch": "0", "type": "epoch", "isBest": "false"},
        files={"last.pt": ("last.pt", b"weights")},
        timeout=TIMEOUT,
    )
    assert upload.status_code == 200
    pages = [
        "/",
        "/runs.json",
        f"/models/{model_id}",
        f"/models/{model_id}/data.json",
        f"/models/{model_id}/weights/last.pt",
    ]
    port = local.port
    # A page of another site whose name now resolves to 127.0.0.1 (DNS rebinding) names
    # its own host: it reads nothing, neither the runs nor their signed weight URLs.
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}",
                 f"localhost.attacker.example:{port}", f"localhost@attacker.example:{port}"):
        for path in pages:
            status, body = _get(local, path, host)
            assert status == 403, (host, path)
            assert model_id.encode() not in body and b"signature" not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                 f"LOCALHOST.:{port + 1}"):
        for path in pages:
            status, body = _get(local, path, host)
            assert status == 200, (host, path)
    assert model_id.encode() in _get(local, "/runs.json", f"localhost:{port}")[1]
    # The API needs the key whatever the Host, and a signed URL is its own credential.
    status, body = _get(local, f"/v1/models/{model_id}", "attacker.example", **key)
    assert status == 200
    resume = json.loads(body)["data"]["resume"]
    signed = resume.removeprefix(local.url)
    assert _get(local, signed, "attacker.example")[0] == 200
    assert _get(local, f"/v1/models/{model_id}", "attacker.example")[0] == 401


def test_pages_answer_the_hubs_own_bound_address(tmp_path: Path) -> None:
    # Bound to another loopback address, the hub answers its own address too.
    with LocalHub(tmp_path / "hub", host="127.0.0.2") as local:
        assert _get(local, "/", f"127.0.0.2:{local.port}")[0] == 200
        assert _get(local, "/", f"localhost:{local.port}")[0] == 200
        assert _get(local, "/", f"127.0.0.3:{local.port}")[0] == 403
        assert _get(local, "/", f"attacker.example:{local.port}")[0] == 403
