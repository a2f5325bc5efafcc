"""What another program on the hub's machine may try on its pages: guess keys, frame them.

Each test runs a real hub on 127.0.0.1 and asks it over HTTP, as such a program would.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import urllib.parse
from pathlib import Path

from hubfsm.hub.admin import add
from hubfsm.hub.server import LocalHub

#: A key of the right shape that the hub never made.
WRONG = "x" * 42
CREATE = json.dumps({"lineage": {"architecture": {"name": "yolov8n"}}}).encode()


def _ask(
    local: LocalHub,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One request from the loopback address ``source`` (any of 127.0.0.0/8 reaches the hub)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", local.port, timeout=10, source_address=(source, 0)
    )
    try:
        sent = {"Host": f"127.0.0.1:{local.port}", "Origin": local.url, **(headers or {})}
        conn.request(method, path, body=body, headers=sent)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def _sign_in(
    local: LocalHub, key: str, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    form = urllib.parse.urlencode({"key": key}).encode()
    kind = {"Content-Type": "application/x-www-form-urlencoded"}
    return _ask(local, "POST", "/signin", headers=kind, body=form, source=source)


def test_wrong_sign_ins_spend_the_rate_limit_of_wrong_api_keys(tmp_path: Path) -> None:
    # A token each 5 s, a burst of 1: the second guess within 5 s is over the limit.
    with LocalHub(tmp_path / "hub", sign_in=True, rate_limit=0.2) as local:
        alice = add(tmp_path / "hub", "alice", out=io.StringIO())
        status, _, page = _sign_in(local, WRONG)
        assert status == 401 and b"not valid" in page
        status, headers, page = _sign_in(local, WRONG)
        assert status == 429, page
        assert 1 <= int(headers["retry-after"]) <= 5
        assert b'name="key"' in page and b"try again in" in page
        assert "set-cookie" not in headers
        # One bucket for the address, whichever door the guesses knock on.
        assert _ask(local, "POST", "/v1/auth", headers={"x-api-key": WRONG})[0] == 429
        # Another address has a bucket of its own; a known key, too.
        assert _sign_in(local, WRONG, source="127.0.0.2")[0] == 401
        status, headers, _ = _sign_in(local, alice)
        assert status == 303 and "hubfsm_session=" in headers["set-cookie"]


def test_wrong_keys_on_page_actions_spend_it_too(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "hub", rate_limit=0.2) as local:
        bob = add(tmp_path / "hub", "bob", out=io.StringIO())
        kind = {"Content-Type": "application/json"}
        status, _, made = _ask(
            local, "POST", "/v1/models", headers={"x-api-key": local.api_key, **kind}, body=CREATE
        )
        assert status == 200, made
        path = f"/models/{json.loads(made)['data']['id']}/annotate"
        body = json.dumps({"notes": "guessed"}).encode()
        guess = {"x-api-key": WRONG, **kind}
        assert _ask(local, "POST", path, headers=guess, body=body)[0] == 401
        status, headers, text = _ask(local, "POST", path, headers=guess, body=body)
        assert status == 429 and re.match(rb"too many requests: retry in \d s", text), text
        assert 1 <= int(headers["retry-after"]) <= 5
        # Bob's key has its own bucket: his request is answered (not his model: 404).
        assert _ask(local, "POST", path, headers={"x-api-key": bob, **kind}, body=body)[0] == 404
        assert local.hub.record(json.loads(made)["data"]["id"])["notes"] is None


def _framing_refused(headers: dict[str, str]) -> bool:
    policy = [part.strip() for part in headers.get("content-security-policy", "").split(";")]
    return headers.get("x-frame-options") == "DENY" and "frame-ancestors 'none'" in policy


def test_no_other_site_may_frame_any_page_or_asset(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "hub") as local:
        key = {"x-api-key": local.api_key, "Content-Type": "application/json"}
        made = json.loads(_ask(local, "POST", "/v1/models", headers=key, body=CREATE)[2])
        run = f"/models/{made['data']['id']}"
        paths = [
            "/",
            "/runs.json",
            "/favicon.ico",
            run,
            f"{run}/data.json",
            f"{run}/metrics.csv",
            f"{run}/weights/best.pt",
            "/models/none",
            "/no/page",
        ]
        paths += [f"/static/{name}" for name in ("hub.js", "hub.css", "uplot.iife.min.js",
                                                 "uplot.min.css", "uplot.LICENSE")]  # fmt: skip
        for path in paths:
            for method in ("GET", "HEAD"):
                status, headers, _ = _ask(local, method, path)
                assert status < 500 and _framing_refused(headers), (method, path, status)
        # Refusals too: a Host that is not this machine, a wrong method.
        for method, path, sent in (("GET", "/", {"Host": "evil.example"}), ("PUT", "/", {})):
            status, headers, _ = _ask(local, method, path, headers=sent)
            assert status in (403, 405) and _framing_refused(headers), (method, path)
    with LocalHub(tmp_path / "hub", sign_in=True) as local:
        for path in ("/signin", "/", "/runs.json"):
            status, headers, _ = _ask(local, "GET", path)
            assert status in (200, 303, 401) and _framing_refused(headers), path


def test_a_sign_in_form_is_small(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "hub", sign_in=True) as local:
        alice = add(tmp_path / "hub", "alice", out=io.StringIO())
        padded = urllib.parse.urlencode({"key": alice, "pad": "p" * 5000}).encode()
        kind = {"Content-Type": "application/x-www-form-urlencoded"}
        status, headers, _ = _ask(local, "POST", "/signin", headers=kind, body=padded)
        assert status == 413 and headers.get("connection") == "close"
        assert _sign_in(local, alice)[0] == 303
