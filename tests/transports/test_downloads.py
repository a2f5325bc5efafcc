"""The one download implementation, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hubfsm.hub import Hub, MemoryStore
from hubfsm.transport import Announced, Downloader, TransportError
from transports.downloads import HttpDownloader
from transports.http import RequestsTransport
from transports.memory import InMemoryTransport

KEY = "dL0wnl0adK3yZ9yX8wV7uT6sR5pO4nM3lK2jI1hG0f"
BODY = b"0123456789abcdef" * 1024
SHA = hashlib.sha256(BODY).hexdigest()

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.seen: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("x-api-key")))
        self.server.routes.get(self.path, lambda h: send(h, 404, b"no"))(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def send(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    h.send_response(status)
    h.send_header("Content-Length", headers.pop("length", str(len(body))))
    for name, value in headers.items():
        h.send_header(name.replace("_", "-"), value)
    h.end_headers()
    h.wfile.write(body)


@contextlib.contextmanager
def serve(routes: dict[str, Route]) -> Iterator[_Server]:
    server = _Server(routes)
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


def test_the_http_transport_is_a_downloader_and_the_in_memory_one_is_not() -> None:
    client = RequestsTransport(KEY, api_root="http://127.0.0.1:9")
    try:
        assert isinstance(client, Downloader)
        assert isinstance(HttpDownloader(), Downloader)
        assert not isinstance(InMemoryTransport(Hub(MemoryStore(), keys=[KEY]), KEY), Downloader)
    finally:
        client.close()


def test_a_redirect_back_to_the_api_root_carries_no_key(tmp_path: Path) -> None:
    routes: dict[str, Route] = {
        "/files/last.pt": lambda h: send(h, 302, b"", Location="/bucket/last.pt"),
        "/bucket/last.pt": lambda h: send(h, 200, BODY),
    }
    with serve(routes) as server:
        client = RequestsTransport(KEY, api_root=server.url)
        try:
            size = client.download(
                f"{server.url}/files/last.pt", tmp_path / "w.pt", max_bytes=1 << 20
            )
        finally:
            client.close()
    assert size == len(BODY) and (tmp_path / "w.pt").read_bytes() == BODY
    assert server.seen == [("/files/last.pt", KEY), ("/bucket/last.pt", None)]


def test_a_download_streams_into_a_file_and_announces_length_and_digest() -> None:
    routes: dict[str, Route] = {
        "/good.pt": lambda h: send(h, 200, BODY, X_Checksum_Sha256=SHA.upper()),
        "/odd.pt": lambda h: send(h, 200, BODY, X_Checksum_Sha256=f"{KEY} not a digest"),
    }
    heard: list[Announced] = []
    with serve(routes) as server:
        downloader = HttpDownloader(api_root=server.url, api_key=KEY)
        out = io.BytesIO()
        size = downloader.download(
            f"{server.url}/good.pt", out, max_bytes=len(BODY), on_answer=heard.append
        )
        downloader.download(
            f"{server.url}/odd.pt", io.BytesIO(), max_bytes=len(BODY), on_answer=heard.append
        )
    assert size == len(BODY) and out.getvalue() == BODY
    # Only a well-formed digest is passed on: no server text rides along as one.
    assert heard == [Announced(len(BODY), SHA), Announced(len(BODY), None)]


def test_a_body_cut_short_of_its_announced_length_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    def short(h: http.server.BaseHTTPRequestHandler) -> None:
        send(h, 200, BODY[:100], length=str(len(BODY)))
        h.close_connection = True

    with serve({"/short.pt": short}) as server, pytest.raises(TransportError) as caught:
        HttpDownloader().download(f"{server.url}/short.pt", tmp_path / "s.pt", max_bytes=1 << 20)
    assert "/short.pt" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_the_deadline_cuts_a_body_that_trickles(tmp_path: Path) -> None:
    def trickle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        # A byte now and then: never a read timeout, yet no end in sight.
        for _ in range(1000):
            if h.server.stop.wait(0.1):  # type: ignore[attr-defined]
                return
            try:
                h.wfile.write(b"x")
                h.wfile.flush()
            except OSError:
                return

    with serve({"/slow.pt": trickle}) as server:
        downloader = HttpDownloader(read_timeout=30.0)
        with pytest.raises(TransportError) as caught:
            downloader.download(
                f"{server.url}/slow.pt", tmp_path / "slow.pt", max_bytes=1000, deadline=0.5
            )
    assert caught.value.kind == "timeout" and "deadline" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_messages_never_hold_the_key_or_the_query(tmp_path: Path) -> None:
    with serve({}) as server:
        downloader = HttpDownloader(api_root=server.url, api_key=KEY)
        with pytest.raises(TransportError) as caught:
            downloader.download(
                f"{server.url}/{KEY}/last.pt?sig=SECRET", io.BytesIO(), max_bytes=100
            )
    text = str(caught.value)
    assert "HTTP 404" in text and "/last.pt" in text
    assert KEY[:8] not in text and "SECRET" not in text
    assert KEY not in repr(downloader)
