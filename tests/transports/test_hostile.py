"""The HTTP transport against hostile servers on 127.0.0.1: nothing they send is trusted."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import logging
import os
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import hubfsm
from hubfsm.core import protocol
from hubfsm.errors import AuthError, HubError
from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore
from hubfsm.transport import Announced, Downloader, FilePart, TransportError
from transports.downloads import HttpDownloader
from transports.http import RequestsTransport
from transports.memory import InMemoryTransport
from transports.outcomes import MAX_RESPONSE_BYTES

# Its own key: mixed case with a self-similar head ("k3y" thrice), so masking any
# 8-character run in any case is tested on overlapping runs.
KEY = "k3yK3yk3yQ9zX8wV7uT6sR5pO4nM3lK2jI1hG0fE9d"[:42]
MODEL = "abcdefghij0123456789"

Handler = Callable[["_Handler"], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        self.server.seen.append({"method": self.command, "path": self.path,
                                 "headers": dict(self.headers)})
        self.server.handler(self)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, handler: Handler) -> None:
        super().__init__((host, 0), _Handler)
        self.handler = handler
        self.seen: list[dict[str, Any]] = []
        self.stop = threading.Event()


@contextlib.contextmanager
def serve(handler: Handler, host: str = "127.0.0.1") -> Iterator[_Server]:
    """A real HTTP server on ``host`` in a thread; stopped (and its handlers told to) after."""
    server = _Server(host, handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def root_of(server: _Server, host: str | None = None) -> str:
    return f"http://{host or server.server_address[0]}:{server.server_address[1]}"


def other_host() -> str:
    """A loopback address that is another host than 127.0.0.1 (and so another origin)."""
    with contextlib.suppress(OSError), socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    return "localhost"


def drain(h: _Handler) -> None:
    h.rfile.read(int(h.headers.get("Content-Length") or 0))


def reply(h: _Handler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    drain(h)
    h.send_response(status)
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def envelope(data: dict[str, Any] | None = None, message: str = "ok") -> bytes:
    return json.dumps({"success": True, "message": message, "data": data or {}}).encode()


def trickle(h: _Handler, data: bytes, every: float) -> None:
    """Send ``data`` a byte at a time; stop when the client hangs up or the test ends."""
    for byte in data:
        if h.server.stop.is_set():
            return
        try:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
        except OSError:
            return
        time.sleep(every)


def leaks(text: str) -> list[str]:
    """Every run of 8 characters of the key that ``text`` holds (any case)."""
    folded = text.lower()
    return [KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8].lower() in folded]


# --- 3. a trickled answer has a deadline; sizes are bounded ---------------------------


def test_a_trickled_body_fails_at_the_attempts_deadline() -> None:
    def handler(h: _Handler) -> None:
        drain(h)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        trickle(h, b" " * 1000, 0.05)  # 50 s in all, each byte well within the read timeout

    with serve(handler) as server:
        client = RequestsTransport(KEY, api_root=root_of(server), read_timeout=5,
                                   total_timeout=0.5)
        with pytest.raises(TransportError) as info:
            client.send(protocol.auth())
        client.close()
    assert info.value.kind == "timeout"
    assert "did not complete the exchange within 0.5 s" in str(info.value)


def test_trickled_headers_fail_at_the_attempts_deadline() -> None:
    def handler(h: _Handler) -> None:
        drain(h)
        h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        trickle(h, b"a" * 1000, 0.05)

    with serve(handler) as server:
        client = RequestsTransport(KEY, api_root=root_of(server), read_timeout=5,
                                   total_timeout=0.5)
        with pytest.raises(TransportError) as info:
            client.send(protocol.auth())
        client.close()
    assert info.value.kind == "timeout"


def test_an_uploads_deadline_grows_with_its_size(tmp_path: Path) -> None:
    # The answer takes about a second to trickle in: over a bare 0.2 s deadline, well
    # within 0.2 s plus one MiB at 1/30 MB/s (30 s).
    def handler(h: _Handler) -> None:
        drain(h)
        body = envelope({"ok": 1})
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        trickle(h, body, 1.0 / len(body))

    path = tmp_path / "last.pt"
    path.write_bytes(bytes(1 << 20))
    import hashlib

    file = FilePart("last.pt", str(path), 1 << 20, hashlib.sha256(path.read_bytes()).hexdigest())
    request = protocol.upload_checkpoint(MODEL, 1, file, is_best=False, key="k")
    with serve(handler) as server:
        strict = RequestsTransport(KEY, api_root=root_of(server), read_timeout=5,
                                   total_timeout=0.2, min_upload_rate=1e12)
        with pytest.raises(TransportError) as info:
            strict.send(request)
        strict.close()
        assert info.value.kind == "timeout"
        scaled = RequestsTransport(KEY, api_root=root_of(server), read_timeout=5,
                                   total_timeout=0.2, min_upload_rate=1e6 / 30)
        assert scaled.send(request).status == 200
        scaled.close()


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_limit_is_a_protocol_error(declared: bool) -> None:
    size = MAX_RESPONSE_BYTES + 1

    def handler(h: _Handler) -> None:
        drain(h)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if declared:
            h.send_header("Content-Length", str(size))
        h.end_headers()  # without a length, HTTP/1.0: the body runs until the close
        with contextlib.suppress(OSError):
            for _ in range(size // 65536 + 1):
                h.wfile.write(b" " * 65536)

    with serve(handler) as server:
        client = RequestsTransport(KEY, api_root=root_of(server))
        with pytest.raises(TransportError) as info:
            client.send(protocol.auth())
        client.close()
    assert info.value.kind == "protocol" and str(MAX_RESPONSE_BYTES) in str(info.value)


# --- 4. the key is masked in everything taken from an answer --------------------------


def echo_the_key(h: _Handler) -> None:
    """A hub that quotes the key back: in JSON, in headers, in a page."""
    quoted = f"bad key {KEY}; part {KEY[5:17]}; loud {KEY.upper()}"
    if h.path.startswith("/v1/models/"):
        body = json.dumps({"success": False, "message": quoted, "data": {"key": KEY}})
        reply(h, 401, body.encode(), {"X-Echo": KEY, "WWW-Authenticate": KEY})
    elif h.path == "/v1/auth":
        reply(h, 200, f"<html>{quoted}</html>".encode(), {"Content-Type": f"text/{KEY}"})
    else:
        reply(h, 302, b"", {"Location": f"http://example.com/steal?k={KEY}&p={KEY[9:21]}"})


def test_a_hub_that_echoes_the_key_never_gets_it_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with capture_logs() as logs, serve(echo_the_key) as server:
        client = RequestsTransport(KEY, api_root=root_of(server))
        refused = client.send(protocol.get_model(MODEL))
        assert refused.status == 401 and "***" in refused.message
        texts += [repr(refused), refused.message, json.dumps(refused.body)]
        with pytest.raises(TransportError) as garbled:
            client.send(protocol.auth())
        moved = client.send(protocol.heartbeat(MODEL, None))
        assert moved.status == 302 and "example.com" in moved.message
        texts += [repr(moved), str(garbled.value), repr(garbled.value)]
        client.close()
        # the whole way up: the session's exception, its traceback, what it printed
        with pytest.raises(AuthError) as auth:
            hubfsm.Session(MODEL, api_key=KEY, api_root=root_of(server), outbox_dir=tmp_path)
        texts += [str(auth.value), repr(auth.value)]
        texts += traceback.format_exception(auth.value)
    assert "***" in str(auth.value)
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err, *map(str, logs)]
    assert logs
    for text in texts:
        assert leaks(text) == [], text


FORGED = "no\x1b[2J\x1b]0;owned\x07\x1b[31m\nhubfsm: model uploaded, all sent\r\u202eevil " + "x" * 5000


def forge_lines(h: _Handler) -> None:
    reply(h, 403, json.dumps({"success": False, "message": FORGED}).encode())


def test_a_hubs_message_reaches_the_terminal_as_one_printable_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(forge_lines) as server:
        with pytest.raises(AuthError) as refused:
            hubfsm.Session(MODEL, api_key=KEY, api_root=root_of(server), outbox_dir=tmp_path)
    # Before, the message went out as sent: it cleared the screen, set the terminal's
    # title and colour, and forged a line of hubfsm's own; 5000 characters of it.
    shown = str(refused.value) + capsys.readouterr().err
    assert "no?[2J?]0;owned??[31m hubfsm: model uploaded, all sent ?evil xxx" in shown
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 500
    assert all(c.isprintable() for c in shown.replace("\n", ""))


# --- 6. the key goes to the API root's host only ---------------------------------------


def test_a_redirect_is_a_refusal_and_the_key_does_not_follow(tmp_path: Path) -> None:
    host = other_host()
    with serve(lambda h: reply(h, 200, envelope({"id": MODEL})), host) as elsewhere:
        target = f"{root_of(elsewhere)}/v1/models/{MODEL}?key={KEY}"

        def redirect(h: _Handler) -> None:
            reply(h, 307, b"", {"Location": target})

        with serve(redirect) as server:
            client = RequestsTransport(KEY, api_root=root_of(server))
            moved = client.send(protocol.get_model(MODEL))
            client.close()
            with pytest.raises(HubError) as info:
                hubfsm.Session(MODEL, api_key=KEY, api_root=root_of(server),
                               outbox_dir=tmp_path)
            assert all(seen["headers"].get("x-api-key") == KEY for seen in server.seen)
    assert elsewhere.seen == [], "nothing may follow a redirect"
    assert moved.status == 307 and "the hub redirected to" in moved.message
    assert host in moved.message and leaks(moved.message) == []
    assert "redirected" in str(info.value) and leaks(str(info.value)) == []


def test_early_hints_are_not_taken_for_the_hubs_answer() -> None:
    # Python's HTTP client takes a 103 for the final answer; taken as the hub's word it
    # was a refusal, and one proxy's Early Hints stopped every channel of a session.
    answers = iter([b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", b""])

    def hinted(h: _Handler) -> None:
        h.wfile.write(next(answers, b""))
        reply(h, 200, envelope({"id": MODEL}))

    with serve(hinted) as server:
        client = RequestsTransport(KEY, api_root=root_of(server))
        with pytest.raises(TransportError) as info:
            client.send(protocol.heartbeat(MODEL, "agent"))
        again = client.send(protocol.heartbeat(MODEL, "agent"))
        client.close()
    assert info.value.kind == "protocol" and "(103)" in str(info.value)
    assert again.status == 200 and again.body["data"] == {"id": MODEL}


def test_after_early_hints_the_next_request_takes_its_own_answer() -> None:
    # The 103 was taken for the whole answer, so the connection went back to the pool
    # with the hub's real answer still to come on it: the next request sent there read
    # that answer as its own (a heartbeat's 200 could acknowledge an upload the hub
    # refused). The hub's real answer comes after the next request is sent.
    first = threading.Event()

    def hinted(h: _Handler) -> None:
        if first.is_set():
            reply(h, 200, envelope({"answer": "second"}))
            return
        first.set()
        drain(h)
        h.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        h.wfile.flush()
        time.sleep(0.5)
        body = envelope({"answer": "first"})
        with contextlib.suppress(OSError):  # a client that let the connection go
            h.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            h.wfile.flush()

    with serve(hinted) as server:
        client = RequestsTransport(KEY, api_root=root_of(server))
        with pytest.raises(TransportError):
            client.send(protocol.heartbeat(MODEL, "agent"))
        again = client.send(protocol.heartbeat(MODEL, "agent"))
        client.close()
    assert again.status == 200 and again.body["data"] == {"answer": "second"}


def test_a_download_elsewhere_gets_no_key(tmp_path: Path) -> None:
    weights = os.urandom(4096)
    host = other_host()
    with serve(lambda h: reply(h, 200, weights, {"Content-Type": "application/octet-stream"}),
               host) as storage:
        stored = f"{root_of(storage)}/bucket/last.pt"

        def hub(h: _Handler) -> None:
            if h.path == "/files/last.pt":
                reply(h, 302, b"", {"Location": stored})
            else:
                reply(h, 200, weights, {"Content-Type": "application/octet-stream"})

        with serve(hub) as server:
            client = RequestsTransport(KEY, api_root=root_of(server))
            direct = tmp_path / "direct.pt"
            assert client.download(stored, direct, max_bytes=1 << 20) == len(weights)
            hopped = tmp_path / "hopped.pt"
            assert client.download(f"{root_of(server)}/files/last.pt", hopped,
                                   max_bytes=1 << 20) == len(weights)
            own = tmp_path / "own.pt"
            client.download(f"{root_of(server)}/files/own.pt", own, max_bytes=1 << 20)
            with pytest.raises(TransportError, match="over 100 bytes"):
                client.download(stored, tmp_path / "big.pt", max_bytes=100)
            client.close()
    assert direct.read_bytes() == hopped.read_bytes() == own.read_bytes() == weights
    assert stat.S_IMODE(os.stat(direct).st_mode) == 0o600
    assert not (tmp_path / "big.pt").exists()
    assert len(storage.seen) == 3
    assert all("x-api-key" not in {k.lower() for k in s["headers"]} for s in storage.seen)
    # the hub's own origin gets the key, on the first hop and on its own files
    assert [s["headers"].get("x-api-key") for s in server.seen] == [KEY, KEY]


# --- 7. downloads: one implementation, for the transport and the weights cache ----------


def test_the_http_transport_is_a_downloader_and_the_in_memory_one_is_not() -> None:
    client = RequestsTransport(KEY, api_root="http://127.0.0.1:9")
    client.close()
    assert isinstance(client, Downloader) and isinstance(HttpDownloader(), Downloader)
    assert not isinstance(InMemoryTransport(Hub(MemoryStore(), keys=[KEY]), KEY), Downloader)


def test_a_download_redirected_back_to_the_api_root_gets_no_key(tmp_path: Path) -> None:
    weights = os.urandom(4096)

    def hub(h: _Handler) -> None:
        if h.path == "/files/last.pt":
            reply(h, 302, b"", {"Location": "/bucket/last.pt"})
        else:
            reply(h, 200, weights, {"X-Checksum-Sha256": hashlib.sha256(weights).hexdigest()})

    heard: list[Announced] = []
    with serve(hub) as server:
        client = RequestsTransport(KEY, api_root=root_of(server))
        out = io.BytesIO()  # a file object will do as well as a path
        size = client.download(f"{root_of(server)}/files/last.pt", out, max_bytes=1 << 20,
                               on_answer=heard.append)
        client.close()
    assert size == len(weights) and out.getvalue() == weights
    assert [s["headers"].get("x-api-key") for s in server.seen] == [KEY, None]
    assert heard == [Announced(len(weights), hashlib.sha256(weights).hexdigest())]


def test_a_download_announces_only_a_well_formed_digest() -> None:
    body = b"w" * 100
    with serve(lambda h: reply(h, 200, body, {"X-Checksum-Sha256": f"{KEY} no digest"})) as server:
        heard: list[Announced] = []
        HttpDownloader().download(f"{root_of(server)}/w.pt", io.BytesIO(), max_bytes=100,
                                  on_answer=heard.append)
    assert heard == [Announced(100, None)]


def test_a_download_cut_short_of_its_length_leaves_nothing(tmp_path: Path) -> None:
    def short(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "4096")
        h.end_headers()
        h.wfile.write(b"x" * 100)
        h.close_connection = True

    with serve(short) as server, pytest.raises(TransportError) as caught:
        HttpDownloader().download(f"{root_of(server)}/short.pt", tmp_path / "s.pt",
                                  max_bytes=1 << 20)
    assert "/short.pt" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_trickled_download_fails_at_its_deadline(tmp_path: Path) -> None:
    def handler(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        trickle(h, b"x" * 1000, every=0.1)  # never a read timeout, yet no end in sight

    with serve(handler) as server, pytest.raises(TransportError) as caught:
        HttpDownloader(read_timeout=30.0).download(
            f"{root_of(server)}/slow.pt", tmp_path / "slow.pt", max_bytes=1000, deadline=0.5
        )
    assert caught.value.kind == "timeout" and "deadline" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_download_message_holds_neither_the_key_nor_the_query() -> None:
    with serve(lambda h: reply(h, 404, b"no")) as server:
        downloader = HttpDownloader(api_root=root_of(server), api_key=KEY)
        with pytest.raises(TransportError) as caught:
            downloader.download(f"{root_of(server)}/{KEY}/last.pt?sig=SECRET", io.BytesIO(),
                                max_bytes=100)
    text = str(caught.value)
    assert "HTTP 404" in text and "/last.pt" in text
    assert leaks(text) == [] and "SECRET" not in text and leaks(repr(downloader)) == []
