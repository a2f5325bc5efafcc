"""Signing in to the hub's pages with an API key: sessions, ownership, forged posts, TLS."""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubfsm.hub.access import COOKIE, Sessions
from hubfsm.hub.admin import add, listing, revoke
from hubfsm.hub.foreground import serve
from hubfsm.hub.server import LocalHub, reachable_address

CREATE = {"lineage": {"architecture": {"name": "yolov8n"}}}


def _ask(
    local: LocalHub,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    sent = {"Host": f"127.0.0.1:{local.port}", **(headers or {})}
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", local.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=sent)
        answer = conn.getresponse()
        got = {k.lower(): v for k, v in answer.getheaders()}
        return answer.status, got, answer.read()
    finally:
        conn.close()


def _origin(local: LocalHub) -> dict[str, str]:
    scheme = "https" if local.tls else "http"
    return {"Origin": f"{scheme}://127.0.0.1:{local.port}"}


def _sign_in(local: LocalHub, key: str, context: ssl.SSLContext | None = None) -> str:
    status, headers, body = _ask(
        local, "POST", "/signin", headers=_origin(local), form={"key": key}, context=context
    )
    assert status == 303, body
    assert headers["location"] == "/"
    cookie = headers["set-cookie"]
    found = re.match(rf"{COOKIE}=([^;]+);", cookie)
    assert found is not None, cookie
    return found.group(1)


def _cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={value}"}


def _create(local: LocalHub, key: str) -> str:
    status, _, body = _ask(
        local,
        "POST",
        "/v1/models",
        headers={"x-api-key": key, "Content-Type": "application/json"},
        body=json.dumps(CREATE).encode(),
    )
    assert status == 200, body
    return str(json.loads(body)["data"]["id"])


def _csrf(page: bytes) -> str:
    found = re.search(rb'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page[:300]
    return found.group(1).decode()


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[LocalHub, str, str]]:
    """A hub whose pages need a sign-in, and two members' keys (not admins)."""
    data = tmp_path / "hub"
    with LocalHub(data, sign_in=True) as local:
        alice = add(data, "alice", out=io.StringIO())
        bob = add(data, "bob", out=io.StringIO())
        yield local, alice, bob


def test_pages_ask_for_a_sign_in_and_show_the_keys_own_models(
    team: tuple[LocalHub, str, str],
) -> None:
    local, alice, bob = team
    mine, theirs = _create(local, alice), _create(local, bob)
    for path in ("/", f"/models/{mine}"):
        status, headers, _ = _ask(local, "GET", path)
        assert status == 303 and headers["location"] == "/signin"
    for path in ("/runs.json", f"/models/{mine}/data.json"):
        assert _ask(local, "GET", path)[0] == 401
    status, _, page = _ask(local, "GET", "/signin")
    assert status == 200 and b'name="key"' in page and b'type="password"' in page
    session = _sign_in(local, alice)
    status, _, runs = _ask(local, "GET", "/runs.json", headers=_cookie(session))
    assert status == 200
    assert [run["record"]["id"] for run in json.loads(runs)["runs"]] == [mine]
    status, _, page = _ask(local, "GET", "/", headers=_cookie(session))
    assert status == 200 and mine.encode() in page and theirs.encode() not in page
    assert b"Signed in as alice" in page
    assert _ask(local, "GET", f"/models/{mine}", headers=_cookie(session))[0] == 200
    # Another key's model is as missing as one that never was, page, data and files.
    for path in (
        f"/models/{theirs}",
        f"/models/{theirs}/data.json",
        f"/models/{theirs}/metrics.csv",
    ):
        status, _, body = _ask(local, "GET", path, headers=_cookie(session))
        assert status == 404 and b"bob" not in body


def test_an_admin_key_sees_every_model(team: tuple[LocalHub, str, str]) -> None:
    local, alice, bob = team
    made = {_create(local, alice), _create(local, bob)}
    session = _sign_in(local, local.api_key)  # the hub's own key file's key is an admin
    status, _, runs = _ask(local, "GET", "/runs.json", headers=_cookie(session))
    assert {run["record"]["id"] for run in json.loads(runs)["runs"]} == made
    status, _, page = _ask(local, "GET", "/", headers=_cookie(session))
    assert b"admin: all models" in page
    # So does a key added as an admin; listed as one.
    lead = add(local.data_dir, "lead", out=io.StringIO(), admin=True)
    session = _sign_in(local, lead)
    status, _, runs = _ask(local, "GET", "/runs.json", headers=_cookie(session))
    assert {run["record"]["id"] for run in json.loads(runs)["runs"]} == made
    listed = io.StringIO()
    listing(local.data_dir, out=listed)
    assert [line for line in listed.getvalue().splitlines() if "admin" in line][1].startswith(
        next(k.id for k in local.hub.list_keys() if k.label == "lead")
    )


def test_a_wrong_key_is_refused_and_a_revoked_keys_session_ends(
    team: tuple[LocalHub, str, str],
) -> None:
    local, alice, _ = team
    # Its last character changed; "x" alone would be no change for a key ending in "x".
    wrong = alice[:-1] + ("y" if alice.endswith("x") else "x")
    status, headers, page = _ask(
        local, "POST", "/signin", headers=_origin(local), form={"key": wrong}
    )
    assert status == 401 and "set-cookie" not in headers and b"not valid" in page
    session = _sign_in(local, alice)
    assert _ask(local, "GET", "/", headers=_cookie(session))[0] == 200
    key_id = next(k.id for k in local.hub.list_keys() if k.label == "alice")
    assert revoke(local.data_dir, key_id, out=io.StringIO()) == 0
    status, headers, _ = _ask(local, "GET", "/", headers=_cookie(session))
    assert status == 303 and headers["location"] == "/signin"


def test_the_session_cookie_is_httponly_strict_and_unforgeable(
    team: tuple[LocalHub, str, str],
) -> None:
    local, alice, bob = team
    _create(local, bob)
    status, headers, _ = _ask(local, "POST", "/signin", headers=_origin(local), form={"key": alice})
    flags = [part.strip().lower() for part in headers["set-cookie"].split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # plain HTTP on loopback: a Secure cookie would be lost
    assert alice not in headers["set-cookie"]
    session = re.match(rf"{COOKIE}=([^;]+);", headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    # Bob's key id under Alice's signature, or a signature of another secret: signed out.
    bob_id = next(k.id for k in local.hub.list_keys() if k.label == "bob")
    _, expires, mac = session.split(".")
    other = Sessions(b"another secret of 32 bytes......").issue(bob_id)
    for forged in (f"{bob_id}.{expires}.{mac}", other, session + "0"):
        status, headers, _ = _ask(local, "GET", "/runs.json", headers=_cookie(forged))
        assert status == 401, forged


def test_a_post_without_the_pages_origin_or_csrf_token_is_refused(
    team: tuple[LocalHub, str, str],
) -> None:
    local, alice, _ = team
    # Signing in from another site's page (login CSRF), or from no page at all.
    for headers in ({"Origin": "http://attacker.example"}, {}, {"Origin": "null"}):
        status, got, _ = _ask(local, "POST", "/signin", headers=headers, form={"key": alice})
        assert status == 403 and "set-cookie" not in got
    session = _sign_in(local, alice)
    status, _, page = _ask(local, "GET", "/", headers=_cookie(session))
    token = _csrf(page)
    # Signing out takes the session's token, from the hub's own origin.
    for headers, form in (
        ({**_cookie(session), **_origin(local)}, {}),
        ({**_cookie(session), **_origin(local)}, {"csrf": "0" * 32}),
        ({**_cookie(session), "Origin": "http://attacker.example"}, {"csrf": token}),
    ):
        assert _ask(local, "POST", "/signout", headers=headers, form=form)[0] == 403
    assert _ask(local, "GET", "/", headers=_cookie(session))[0] == 200
    status, headers, _ = _ask(
        local,
        "POST",
        "/signout",
        headers={**_cookie(session), **_origin(local)},
        form={"csrf": token},
    )
    assert status == 303 and headers["location"] == "/signin"
    assert re.search(rf"{COOKIE}=;|{COOKIE}=\"\";", headers["set-cookie"])
    assert "max-age=0" in headers["set-cookie"].lower()
    # Other posts to the pages stay refused, signed in or not.
    assert _ask(local, "POST", "/", headers={**_cookie(session), **_origin(local)})[0] == 405


def test_loopback_pages_need_no_sign_in_by_default(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "hub") as local:
        assert not local.sign_in
        made = _create(local, local.api_key)
        status, _, runs = _ask(local, "GET", "/runs.json")
        assert status == 200 and made.encode() in runs
        status, _, page = _ask(local, "GET", "/")
        assert status == 200 and b"Sign out" not in page
        status, headers, _ = _ask(local, "GET", "/signin")
        assert status == 303 and headers["location"] == "/"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl program is not installed: no certificate to serve TLS with")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_the_hub_serves_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    with LocalHub(tmp_path / "hub", sign_in=True, tls_cert=cert, tls_key=key) as local:
        assert local.url.startswith("https://127.0.0.1:")
        status, _, body = _ask(
            local, "POST", "/v1/auth", headers={"x-api-key": local.api_key}, context=context
        )
        assert status == 200, body
        status, headers, _ = _ask(
            local,
            "POST",
            "/signin",
            headers=_origin(local),
            form={"key": local.api_key},
            context=context,
        )
        assert status == 303
        assert "secure" in [p.strip().lower() for p in headers["set-cookie"].split(";")]
        # Model records name their weights under the https root.
        made = _create_tls(local, context)
        status, _, body = _ask(
            local,
            "GET",
            f"/v1/models/{made}",
            headers={"x-api-key": local.api_key},
            context=context,
        )
        assert status == 200 and json.loads(body)["data"]["id"] == made
        # Plain HTTP to the TLS port is not answered as the API (the key went nowhere).
        try:
            status = _ask(local, "POST", "/v1/auth", headers={"x-api-key": local.api_key})[0]
        except (http.client.HTTPException, OSError):
            status = None
        assert status != 200


def _create_tls(local: LocalHub, context: ssl.SSLContext) -> str:
    status, _, body = _ask(
        local,
        "POST",
        "/v1/models",
        headers={"x-api-key": local.api_key, "Content-Type": "application/json"},
        body=json.dumps(CREATE).encode(),
        context=context,
    )
    assert status == 200, body
    return str(json.loads(body)["data"]["id"])


def _banner(tmp_path: Path, **options: object) -> str:
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(tmp_path / "hub",),
        kwargs={"port": 0, "out": out, "stop": stop, **options},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in out.getvalue() and thread.is_alive():
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    return out.getvalue()


def test_serving_to_the_network_prints_a_usable_address_and_warns_of_plain_http(
    tmp_path: Path,
) -> None:
    text = _banner(tmp_path, host="0.0.0.0")  # noqa: S104 - the case under test
    serving = re.search(r"serving at (\S+)", text)
    assert serving is not None, text
    address = urllib.parse.urlsplit(serving.group(1)).hostname
    assert address == reachable_address("0.0.0.0")  # noqa: S104
    assert address not in ("0.0.0.0", "", None)
    assert "sign in with an API key" in text
    assert "plain HTTP" in text and "--tls-cert" in text
    assert f"ULTRALYTICS_HUB_API={serving.group(1)}" in text


def test_a_loopback_or_tls_hub_prints_no_plain_http_warning(tmp_path: Path) -> None:
    text = _banner(tmp_path)
    assert "from this machine only" in text and "plain HTTP" not in text
    cert, key = _self_signed(tmp_path)
    text = _banner(tmp_path, sign_in=True, tls_cert=cert, tls_key=key)
    assert "serving at https://127.0.0.1:" in text and "plain HTTP" not in text
    assert "sign in with an API key" in text
