"""The HTTP transport against small real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs
from werkzeug.serving import make_server
from werkzeug.wrappers import Request as WRequest
from werkzeug.wrappers import Response as WResponse

import hubfsm
import transports.http as http_module
from hubfsm.core import protocol
from hubfsm.transport import FilePart, RateLimit, Response, TransportError
from tests.support import KEY
from transports.http import RequestsTransport
from transports.uploads import SEND_SIZE, MultipartBody

MODEL = "abcdefghij0123456789"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@contextmanager
def serve(app: WSGIApp) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 in a thread; yield its root URL; stop it afterwards."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def envelope(data: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"success": True, "message": "ok", "data": data or {}}).encode()


def answer(
    status: int = 200,
    body: bytes | str = b"",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> WSGIApp:
    """An app that drains the request and always gives the same answer."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        WRequest(environ).get_data()
        response = WResponse(body, status=status, content_type=content_type, headers=headers)
        return response(environ, start_response)

    return app


class Recorder:
    """An app that parses each request like a hub would and keeps what it saw."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.reply = reply if reply is not None else envelope({"id": MODEL})

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = WRequest(environ)
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
        }
        if request.mimetype == "multipart/form-data":
            record["form"] = dict(request.form)
            record["files"] = {
                name: (part.filename, part.mimetype, part.read())
                for name, part in request.files.items()
            }
        else:
            record["data"] = request.get_data()
        self.seen.append(record)
        return WResponse(self.reply, content_type="application/json")(environ, start_response)


def write_file(path: Path, size: int, *, random: bool = True) -> FilePart:
    """Write ``size`` bytes a MiB at a time and describe them as a FilePart."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20)) if random else bytes(min(left, 1 << 20))
            digest.update(block)
            handle.write(block)
            left -= len(block)
    return FilePart(name=path.name, path=str(path), size=size, sha256=digest.hexdigest())


@contextmanager
def transport(root: str, **kwargs: Any) -> Iterator[RequestsTransport]:
    client = RequestsTransport(KEY, api_root=root, **kwargs)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def silent_listener(rcvbuf: int | None = None) -> Iterator[str]:
    """A socket that accepts connections (in the kernel) but never reads or answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


# --- requests as sent ---------------------------------------------------------------------


def test_headers_and_json_body() -> None:
    recorder = Recorder()
    with serve(recorder) as root, transport(root) as client:
        response = client.send(protocol.upload_metrics(MODEL, {3: '{"loss": 1.5}'}, key="op-1"))
        client.send(protocol.get_model(MODEL))
    assert response == Response(200, {"success": True, "message": "ok", "data": {"id": MODEL}})
    post, get = recorder.seen
    assert post["method"] == "POST" and post["path"] == f"/v1/models/{MODEL}"
    assert post["headers"]["X-Api-Key"] == KEY
    assert post["headers"]["User-Agent"] == (
        f"hubfsm/{hubfsm.__version__} python-requests/{requests.__version__}"
    )
    assert post["headers"]["Idempotency-Key"] == "op-1"
    assert post["headers"]["Content-Type"] == "application/json"
    assert json.loads(post["data"]) == {"type": "metrics", "metrics": {"3": '{"loss": 1.5}'}}
    assert get["method"] == "GET" and get["data"] == b""
    assert "Idempotency-Key" not in get["headers"] and get["headers"]["X-Api-Key"] == KEY


def test_connections_are_reused() -> None:
    # The local test server of werkzeug closes every connection, so this one is plain
    # http.server speaking HTTP/1.1 keep-alive.
    ports: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the name http.server looks for
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ports.append(self.client_address[1])
            body = envelope()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with transport(f"http://127.0.0.1:{server.server_port}") as client:
            for _ in range(3):
                assert client.send(protocol.auth()).ok
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert len(ports) == 3 and len(set(ports)) == 1, ports


def test_api_root_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULTRALYTICS_HUB_API", "http://127.0.0.1:9/")
    assert RequestsTransport(KEY).api_root == "http://127.0.0.1:9"
    assert RequestsTransport(KEY, api_root="https://x.test/api/").api_root == "https://x.test/api"
    monkeypatch.delenv("ULTRALYTICS_HUB_API")
    assert RequestsTransport(KEY).api_root == "https://api.ultralytics.com"


@pytest.mark.parametrize("final", [False, True])
def test_multipart_upload_streams_the_file(tmp_path: Path, final: bool) -> None:
    file = write_file(tmp_path / ("best.pt" if final else "last.pt"), 3 * (1 << 20) + 12345)
    if final:
        request = protocol.upload_final(MODEL, 9, file, map50_95=0.625, key="final-1")
        fields = {"epoch": "9", "type": "final", "map": "0.625"}
    else:
        request = protocol.upload_checkpoint(MODEL, 4, file, is_best=True, key="ckpt-4")
        fields = {"epoch": "4", "type": "epoch", "isBest": "True"}
    recorder = Recorder(envelope())
    with serve(recorder) as root, transport(root, progress=False) as client:
        response = client.send(request)
    assert response.ok
    (seen,) = recorder.seen
    assert seen["path"] == f"/v1/models/{MODEL}/upload"
    assert seen["form"] == fields
    filename, mimetype, content = seen["files"][file.name]
    assert (filename, mimetype) == (file.name, "application/octet-stream")
    assert list(seen["files"]) == [file.name]
    assert hashlib.sha256(content).hexdigest() == file.sha256
    headers = seen["headers"]
    assert "Transfer-Encoding" not in headers
    assert int(headers["Content-Length"]) > file.size
    assert headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert headers["Idempotency-Key"] == request.idempotency_key


def test_multipart_body_layout(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"\x00weights\r\n--x")
    file = FilePart("last.pt", str(path), 13, "")
    counted: list[int] = []
    fields = {"epoch": "1", "type": "epoch"}
    with MultipartBody(fields, file, boundary="B", on_sent=counted.append) as body:
        raw = b"".join(bytes(piece) for piece in body)
        assert len(raw) == len(body) == sum(counted)
        assert b"".join(bytes(piece) for piece in body) == raw, "a body can be sent again"
    assert raw == (
        b'--B\r\nContent-Disposition: form-data; name="epoch"\r\n\r\n1\r\n'
        b'--B\r\nContent-Disposition: form-data; name="type"\r\n\r\nepoch\r\n'
        b'--B\r\nContent-Disposition: form-data; name="last.pt"; filename="last.pt"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
        b"\x00weights\r\n--x\r\n--B--\r\n"
    )


@contextmanager
def drain_server(received: list[int]) -> Iterator[str]:
    """A bare HTTP server that reads each request body into one reused buffer.

    It allocates next to nothing per byte, so tracemalloc's peak in this process is
    the client's.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    buffer = memoryview(bytearray(64 << 10))

    stop = threading.Event()
    listener.settimeout(0.05)  # so the loop sees ``stop`` soon

    def run() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.settimeout(10)
                with conn:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += conn.recv(4096)
                    head, _, rest = head.partition(b"\r\n\r\n")
                    fields = dict(
                        line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
                    )
                    left = int(fields.get(b"Content-Length", b"0")) - len(rest)
                    total = len(rest)
                    while left > 0:
                        count = conn.recv_into(buffer, min(left, len(buffer)))
                        if not count:
                            break
                        left -= count
                        total += count
                    received.append(total)
                    body = envelope()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_upload_memory_stays_small(tmp_path: Path) -> None:
    size = 64 << 20
    file = write_file(tmp_path / "last.pt", size, random=False)
    received: list[int] = []
    request = protocol.upload_checkpoint(MODEL, 1, file, is_best=False, key="k")
    with drain_server(received) as root, transport(root, progress=False) as client:
        client.send(protocol.auth())  # warm up: imports, connection, first-call caches
        tracemalloc.start()
        try:
            response = client.send(request)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.ok
    assert received[-1] > size
    assert peak < 8 << 20, f"peak {peak / (1 << 20):.1f} MiB for a 64 MiB upload"


def test_changed_or_missing_file_is_not_sent(tmp_path: Path) -> None:
    file = write_file(tmp_path / "last.pt", 1000)
    recorder = Recorder()
    with serve(recorder) as root, transport(root) as client:
        grown = protocol.upload_checkpoint(MODEL, 1, file, is_best=False, key="k")
        with open(file.path, "ab") as handle:
            handle.write(b"more")
        with pytest.raises(TransportError) as info:
            client.send(grown)
        assert info.value.kind == "protocol" and "changed" in str(info.value)
        os.remove(file.path)
        with pytest.raises(FileNotFoundError):
            client.send(grown)
    assert recorder.seen == []


# --- answers as read ----------------------------------------------------------------------


def test_retry_after_seconds_and_rate_limit_headers() -> None:
    headers = {
        "Retry-After": "7",
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1700000000",
    }
    body = json.dumps({"success": False, "message": "slow down"})
    with serve(answer(429, body, headers=headers)) as root, transport(root) as client:
        response = client.send(protocol.auth())
    assert response.status == 429 and response.message == "slow down"
    assert response.retry_after == 7.0
    assert response.rate_limit == RateLimit(limit=100, remaining=0, reset=1700000000.0)


def test_retry_after_http_date_and_odd_headers() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    headers = {"Retry-After": when, "X-RateLimit-Remaining": "3", "X-RateLimit-Limit": "many"}
    with serve(answer(503, "<h1>busy</h1>", "text/html", headers)) as root, transport(root) as c:
        response = c.send(protocol.auth())
    assert response.status == 503 and response.body == {}
    assert response.retry_after is not None and 100 < response.retry_after <= 120
    assert response.rate_limit == RateLimit(limit=None, remaining=3, reset=None)


def test_missing_headers_are_fine() -> None:
    with serve(answer(429, b"")) as root, transport(root) as client:
        response = client.send(protocol.auth())
    assert response == Response(429, {}, retry_after=None, rate_limit=None)


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        ("<html><body>502 Bad Gateway</body></html>", "text/html", "invalid JSON"),
        ("", "application/json", "empty body"),
        ('{"success": true, "data": {"id"', "application/json", "invalid JSON"),
        ("[1, 2, 3]", "application/json", "JSON array"),
        ("null", "application/json", "JSON null"),
    ],
)
def test_2xx_without_a_json_object_is_a_protocol_error(
    body: str, content_type: str, words: str
) -> None:
    with (
        serve(answer(200, body, content_type)) as root,
        transport(root) as client,
        pytest.raises(TransportError) as info,
    ):
        client.send(protocol.get_model(MODEL))
    message = str(info.value)
    assert info.value.kind == "protocol"
    assert words in message and "200" in message and content_type in message
    assert f"GET /v1/models/{MODEL}" in message
    assert body[:20] in message
    assert len(message) < 300


def test_error_status_with_html_is_a_response() -> None:
    page = "<html>" + "x" * 5000 + "</html>"
    with serve(answer(500, page, "text/html")) as root, transport(root) as client:
        assert client.send(protocol.auth()) == Response(500, {})
    error = json.dumps({"success": False, "message": "Model not found"})
    with serve(answer(404, error)) as root, transport(root) as client:
        response = client.send(protocol.get_model(MODEL))
    assert response.status == 404 and response.message == "Model not found"


def test_redirects_are_not_followed() -> None:
    other = Recorder()
    with serve(other) as elsewhere:
        headers = {"Location": f"{elsewhere}/v1/auth"}
        with serve(answer(307, b"", "text/plain", headers)) as root, transport(root) as client:
            assert client.send(protocol.auth()).status == 307
    assert other.seen == [], "the key must not follow a redirect"


# --- failures -----------------------------------------------------------------------------


def test_server_that_never_answers_times_out() -> None:
    with (
        silent_listener() as root,
        transport(root, read_timeout=0.5) as client,
        pytest.raises(TransportError) as info,
    ):
        client.send(protocol.auth())
    # The read timeout gave up on it, not the attempt's deadline nor the connect timeout.
    assert info.value.kind == "timeout"
    assert "made no progress for 0.5 s" in str(info.value), info.value


def test_upload_to_a_server_that_stops_reading_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_file(tmp_path / "best.pt", 48 << 20, random=False)
    request = protocol.upload_final(MODEL, 1, file, map50_95=0.5, key="k")
    bars: list[FakeBar] = []
    monkeypatch.setattr(http_module, "tqdm", bar_factory(bars))
    # The connect timeout is long: the send must give up on the read timeout.
    with (
        silent_listener(rcvbuf=64 << 10) as root,
        transport(root, connect_timeout=20, read_timeout=0.5, progress=True) as client,
        pytest.raises(TransportError) as info,
    ):
        client.send(request)
    assert info.value.kind == "timeout", info.value
    assert "made no progress for 0.5 s" in str(info.value), "not the read timeout"
    (bar,) = bars
    assert bar.closed and 0 < bar.n < bar.total, "the bar counts bytes sent, not bytes read"


def test_connection_refused() -> None:
    # Bound, never listening: refused, and no other process can listen there meanwhile.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with (
            transport(f"http://127.0.0.1:{port}", connect_timeout=2) as client,
            pytest.raises(TransportError) as info,
        ):
            client.send(protocol.auth())
    assert info.value.kind == "refused"
    assert "refused" in str(info.value).lower()
    assert info.value.url == f"http://127.0.0.1:{port}"


def test_https_to_a_plain_http_server_is_a_tls_error() -> None:
    recorder = Recorder(envelope())
    with serve(recorder) as root:
        tls_root = root.replace("http://", "https://")
        with transport(tls_root) as client, pytest.raises(TransportError) as info:
            client.send(protocol.auth())
    assert info.value.kind == "tls" and "TLS" in str(info.value)


@pytest.mark.parametrize(
    "root", ["http://127.0.0.1:8799x", "http://127.0.0.1:99999", "http://127.0.0.1:0"]
)
def test_a_malformed_port_is_refused_when_the_transport_is_built(root: str) -> None:
    with pytest.raises(ValueError, match="invalid port") as info:
        RequestsTransport(KEY, api_root=root)
    assert KEY not in str(info.value)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@contextmanager
def serve_tls(app: WSGIApp, certificate: tuple[str, str]) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=certificate)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_tls_is_verified(
    tmp_path: Path, certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_file(tmp_path / "last.pt", (1 << 20) + 3)
    recorder = Recorder(envelope())
    lax = requests.Session()
    lax.verify = False
    with serve_tls(recorder, certificate) as root:
        for session in (None, lax):
            with (
                transport(root, session=session) as client,
                pytest.raises(TransportError) as info,
            ):
                client.send(protocol.auth())
            assert info.value.kind == "tls" and "TLS" in str(info.value)
        assert recorder.seen == []
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate[0])
        with transport(root) as client:
            assert client.send(protocol.auth()).ok
            request = protocol.upload_checkpoint(MODEL, 1, file, is_best=False, key="t")
            assert client.send(request).ok
    _, upload = recorder.seen
    assert hashlib.sha256(upload["files"]["last.pt"][2]).hexdigest() == file.sha256
    lax.close()


# --- progress -----------------------------------------------------------------------------


def bar_factory(bars: list[FakeBar]) -> Callable[..., FakeBar]:
    def make(**kwargs: Any) -> FakeBar:
        bars.append(FakeBar(**kwargs))
        return bars[-1]

    return make


class FakeBar:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.total = kwargs["total"]
        self.n = 0
        self.closed = False

    def update(self, count: int) -> None:
        self.n += count

    def close(self) -> None:
        self.closed = True


def test_progress_bar_counts_bytes_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = write_file(tmp_path / "best.pt", 2 * (1 << 20) + 7)
    recorder = Recorder(envelope())
    bars: list[FakeBar] = []
    monkeypatch.setattr(http_module, "tqdm", bar_factory(bars))
    with serve(recorder) as root, transport(root, progress=True) as client:
        client.send(protocol.upload_checkpoint(MODEL, 1, file, is_best=False, key="a"))
        assert bars == [], "epoch uploads have no bar"
        client.send(protocol.upload_final(MODEL, 2, file, map50_95=0.5, key="b"))
    (bar,) = bars
    sent = int(recorder.seen[-1]["headers"]["Content-Length"])
    assert bar.total == bar.n == sent and bar.closed
    assert bar.kwargs["unit"] == "B" and bar.kwargs["unit_scale"] is True


def test_progress_bar_output(tmp_path: Path) -> None:
    file = write_file(tmp_path / "best.pt", 3 * SEND_SIZE)
    out = io.StringIO()
    with serve(Recorder(envelope())) as root:
        with transport(root, progress=True, progress_file=out) as client:
            client.send(protocol.upload_final(MODEL, 2, file, map50_95=0.5, key="b"))
        assert "100%" in out.getvalue() and "best.pt" in out.getvalue()
        quiet = io.StringIO()
        with transport(root, progress=None, progress_file=quiet) as client:  # not a terminal
            client.send(protocol.upload_final(MODEL, 2, file, map50_95=0.5, key="b"))
        assert quiet.getvalue() == ""


# --- safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["http://example.com", "http://10.0.0.1:8000", "http://[::2]"])
def test_plain_http_to_another_host_is_refused(root: str) -> None:
    with pytest.raises(ValueError, match="clear text") as info:
        RequestsTransport(KEY, api_root=root)
    assert "allow_insecure=True" in str(info.value) and KEY not in str(info.value)
    RequestsTransport(KEY, api_root=root, allow_insecure=True).close()


@pytest.mark.parametrize(
    "root", ["http://localhost:8000", "http://127.0.0.1", "http://127.1.2.3:1", "http://[::1]:80"]
)
def test_plain_http_to_this_machine_is_allowed(root: str) -> None:
    RequestsTransport(KEY, api_root=root).close()


@pytest.mark.parametrize("bad", ["", "   ", "key with space", "key\nnewline", "kéy"])
def test_malformed_keys_are_refused_without_echo(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        RequestsTransport(bad)
    assert bad.strip() == "" or bad not in str(info.value)


def test_key_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"<html>your key {KEY} is fine</html>"
    errors: list[BaseException] = []
    file = write_file(tmp_path / "best.pt", 100_000)
    with capture_logs() as logs:
        with serve(Recorder(envelope())) as root, transport(root, progress=False) as client:
            client.send(protocol.get_model(MODEL))
            client.send(protocol.upload_final(MODEL, 2, file, map50_95=0.5, key="b"))
            text = repr(client) + str(client) + repr(vars(client))
        with serve(answer(200, echo, "text/html")) as root, transport(root) as client:
            with pytest.raises(TransportError) as info:
                client.send(protocol.auth())
            errors.append(info.value)
        with silent_listener() as root, transport(root, read_timeout=0.2) as client:
            with pytest.raises(TransportError) as info:
                client.send(protocol.auth())
            errors.append(info.value)
        with pytest.raises(ValueError) as refused:
            RequestsTransport(KEY, api_root="http://example.com")
        errors.append(refused.value)
    assert "RequestsTransport(api_root=" in text
    assert "***" in str(errors[0])
    texts = [text, caplog.text, *map(str, logs), *map(str, errors), *map(repr, errors)]
    texts += [str(e.__cause__) for e in errors] + [repr(e.__cause__) for e in errors]
    assert logs, "the transport should log"
    assert {entry["event"] for entry in logs} >= {"http.response", "http.upload", "http.error"}
    for entry in texts:
        assert KEY not in entry
