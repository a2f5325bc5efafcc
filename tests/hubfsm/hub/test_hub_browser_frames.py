"""Another site's page cannot show the hub's pages in a frame (clickjacking), in Chromium.

The other site is another origin on the same machine: a page served by another server on
127.0.0.1, as a hostile local program would serve it (Chromium keeps a public site's page
from framing loopback addresses at all, but not another loopback one's).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubfsm.hub.server import LocalHub

pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[browser]'"
)

# The browser fixture, and the mark that makes these tests slow.
from tests.hubfsm.hub.test_hub_browser import browser, pytestmark  # noqa: E402, F401


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:  # noqa: F811
    made = browser.new_context(viewport={"width": 1280, "height": 900})
    yield made
    made.close()


@pytest.fixture
def elsewhere() -> Iterator[dict[str, str]]:
    """Another site on 127.0.0.1: it serves the page its dict holds, at any path."""
    pages = {"html": ""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            body = pages["html"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pages["url"] = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_another_sites_page_cannot_frame_the_hubs(
    context: Any, elsewhere: dict[str, str], tmp_path: Path
) -> None:
    with LocalHub(tmp_path / "hub") as local:
        paths = ["/", "/runs.json", "/static/hub.css", "/models/none"]
        elsewhere["html"] = "<!DOCTYPE html><body>" + "".join(
            f'<iframe src="{local.url}{path}" width="600"></iframe>' for path in paths
        )
        page = context.new_page()
        refused: list[str] = []
        page.on("console", lambda message: refused.append(message.text))
        page.goto(elsewhere["url"])
        page.wait_for_function(f"() => document.querySelectorAll('iframe').length === {len(paths)}")
        page.wait_for_timeout(1000)
        frames = page.frames[1:]
        assert len(frames) == len(paths)
        for frame in frames:
            # A refused frame is left on the browser's error page: none of the hub's text.
            assert not frame.url.startswith(local.url), frame.url
        assert sum("frame-ancestors 'none'" in text for text in refused) == len(paths), refused
