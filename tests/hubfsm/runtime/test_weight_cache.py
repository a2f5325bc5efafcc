"""Weight downloads against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubfsm.runtime.weight_cache import DownloadError, download
from hubfsm.transport import same_origin
from tests.support import KEY

BODY = b"weights!" * 40_000  # 320 kB: a few chunks
SHA = hashlib.sha256(BODY).hexdigest()


class Server:
    """A loopback server answering from a table of path -> (status, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                outer.seen.append((path, self.headers.get("x-api-key")))
                status, headers, body = outer.routes.get(path, (404, {}, b"no"))
                self.send_response(status)
                headers = {"Content-Length": str(len(body)), **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def api() -> Iterator[Server]:
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def other() -> Iterator[Server]:
    server = Server()
    yield server
    server.stop()


def test_a_download_lands_owner_only_and_a_second_call_reuses_it(api, tmp_path):
    api.routes["/models/m/weights/last.pt"] = (200, {"X-Checksum-Sha256": SHA}, BODY)
    url = f"{api.url}/models/m/weights/last.pt?expires=1&sig=abc"
    path = download(url, cache_dir=tmp_path / "cache", progress=False)
    assert path.name == "last.pt" and path.read_bytes() == BODY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left
    # A new signature for the same file: the cache answers, the server is not asked.
    again = download(url.replace("sig=abc", "sig=def"), cache_dir=tmp_path / "cache")
    assert again == path and len(api.seen) == 1
    # Another version (a later epoch's last weights) is another cache entry.
    download(url, cache_dir=tmp_path / "cache", tag="epoch-3", progress=False)
    assert len(api.seen) == 2


def test_the_key_goes_to_the_api_root_only(api, other, tmp_path):
    api.routes["/w/best.pt"] = (200, {}, BODY)
    other.routes["/w/best.pt"] = (200, {}, BODY)
    download(f"{api.url}/w/best.pt", cache_dir=tmp_path / "a", api_root=api.url, api_key=KEY)
    download(f"{other.url}/w/best.pt", cache_dir=tmp_path / "b", api_root=api.url, api_key=KEY)
    assert api.seen == [("/w/best.pt", KEY)]
    assert other.seen == [("/w/best.pt", None)]


def test_a_redirect_is_followed_without_the_key(api, other, tmp_path):
    api.routes["/w/last.pt"] = (302, {"Location": f"{other.url}/bucket/last.pt"}, b"")
    other.routes["/bucket/last.pt"] = (200, {}, BODY)
    api.routes["/same/last.pt"] = (307, {"Location": "/w2/last.pt"}, b"")
    api.routes["/w2/last.pt"] = (200, {}, BODY)
    path = download(f"{api.url}/w/last.pt", cache_dir=tmp_path, api_root=api.url, api_key=KEY)
    assert path.read_bytes() == BODY
    assert api.seen == [("/w/last.pt", KEY)]
    assert other.seen == [("/bucket/last.pt", None)]
    # Not even back to the API root itself: a redirect is never trusted with the key.
    download(f"{api.url}/same/last.pt", cache_dir=tmp_path / "s", api_root=api.url, api_key=KEY)
    assert api.seen[-2:] == [("/same/last.pt", KEY), ("/w2/last.pt", None)]


def test_a_size_mismatch_is_refused_and_leaves_nothing(api, tmp_path):
    api.routes["/w/last.pt"] = (200, {}, BODY)
    with pytest.raises(DownloadError, match="expected"):
        download(f"{api.url}/w/last.pt", cache_dir=tmp_path, expected_size=len(BODY) - 1)
    assert not list(tmp_path.rglob("*.pt*"))


def test_a_body_over_the_limit_is_refused(api, tmp_path):
    api.routes["/w/last.pt"] = (200, {}, BODY)
    with pytest.raises(DownloadError, match="over"):
        download(f"{api.url}/w/last.pt", cache_dir=tmp_path, max_bytes=1000)
    assert not list(tmp_path.rglob("*.pt*"))


@pytest.mark.parametrize("where", ["expected", "announced"])
def test_a_hash_mismatch_is_refused_and_leaves_nothing(api, tmp_path, where):
    wrong = hashlib.sha256(b"other").hexdigest()
    headers = {"X-Checksum-Sha256": wrong} if where == "announced" else {}
    api.routes["/w/last.pt"] = (200, headers, BODY)
    expected = wrong if where == "expected" else None
    with pytest.raises(DownloadError, match=f"SHA-256 .* {where}"):
        download(f"{api.url}/w/last.pt", cache_dir=tmp_path, expected_sha256=expected)
    assert not list(tmp_path.rglob("*.pt*"))


def test_a_damaged_cached_copy_is_fetched_again(api, tmp_path):
    api.routes["/w/last.pt"] = (200, {}, BODY)
    path = download(f"{api.url}/w/last.pt", cache_dir=tmp_path, expected_sha256=SHA)
    path.write_bytes(b"bit rot")
    assert download(f"{api.url}/w/last.pt", cache_dir=tmp_path, expected_sha256=SHA) == path
    assert path.read_bytes() == BODY and len(api.seen) == 2


def test_errors_name_the_url_without_its_query_or_the_key(api, tmp_path):
    with pytest.raises(DownloadError) as caught:
        download(
            f"{api.url}/missing/last.pt?sig=SECRET",
            cache_dir=tmp_path,
            api_root=api.url,
            api_key=KEY,
        )
    text = str(caught.value)
    assert "HTTP 404" in text and "/missing/last.pt" in text
    assert "SECRET" not in text and KEY not in text


def test_only_http_urls_are_downloaded(tmp_path):
    with pytest.raises(DownloadError, match="http"):
        download("file:///etc/passwd", cache_dir=tmp_path)


def test_the_deadline_bounds_the_whole_download(api, tmp_path):
    api.routes["/w/last.pt"] = (200, {}, BODY)
    with pytest.raises(DownloadError, match="deadline"):
        download(f"{api.url}/w/last.pt", cache_dir=tmp_path, deadline=0.0)


def test_same_origin_compares_scheme_host_and_port():
    assert same_origin("http://127.0.0.1:80/x", "http://127.0.0.1")
    assert same_origin("https://API.example/x", "https://api.example:443/")
    assert not same_origin("https://api.example.evil/x", "https://api.example")
    assert not same_origin("http://api.example/x", "https://api.example")
    assert not same_origin("https://api.example:8443/x", "https://api.example")
    assert not same_origin("https://user@other/x", "https://api.example")


def test_the_cached_file_name_is_safe(api, tmp_path):
    api.routes["/w/..%2F..%2Fevil"] = (200, {}, BODY)
    path = download(f"{api.url}/w/..%2F..%2Fevil", cache_dir=tmp_path)
    assert path.parent.parent == tmp_path and path.suffix == ".pt"
    assert Path(path).name.startswith("_")


def test_a_url_whose_last_segment_is_too_long_for_a_file_name_still_downloads(api, tmp_path):
    # The name comes from the hub's URL; the file system takes at most 255 bytes a name.
    long = "w" * 400 + ".pt"
    api.routes[f"/w/{long}"] = (200, {}, BODY)
    path = download(f"{api.url}/w/{long}", cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == BODY and path.suffix == ".pt" and len(path.name) <= 128
    assert path.parent.parent == tmp_path
