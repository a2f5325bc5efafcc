"""The Platform's signed upload URLs: the bytes go where the API said, never the key."""

from __future__ import annotations

import atexit
import hashlib
import socket
from pathlib import Path

from hubfsm.transport import FilePart, Request, TransportError
from tests.transports.test_hostile import reply, root_of, serve
from transports.platform import PlatformTransport

KEY = "ul_" + "5f0e9c8d7b6a" * 3 + "0123"


def closed_port() -> int:
    """A port that refuses connections: bound, never listening, until the tests end.

    Closed at once, it could be listened on by another test's server before use.
    """
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    atexit.register(probe.close)
    return int(probe.getsockname()[1])


def test_a_storage_host_that_refuses_is_named_not_the_api(tmp_path: Path) -> None:
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"w" * 1000)
    part = FilePart("last.pt", str(weights), 1000, hashlib.sha256(b"w" * 1000).hexdigest())
    port = closed_port()
    with serve(lambda h: reply(h, 200, b"{}")) as api:
        client = PlatformTransport(KEY, api_root=root_of(api))
        try:
            put = Request("PUT", f"http://127.0.0.1:{port}/bucket/last.pt?sig=SECRET", file=part)
            try:
                client.send(put)
                raise AssertionError("a refused connection must fail")
            except TransportError as error:
                failed = error
        finally:
            client.close()
        assert api.seen == []
    text = str(failed)
    assert failed.kind == "refused"
    assert f"127.0.0.1:{port} refused the connection" in text
    assert str(api.server_address[1]) not in text and "SECRET" not in text


def test_a_signed_url_no_client_can_request_fails_without_its_query(tmp_path: Path) -> None:
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"w" * 10)
    part = FilePart("last.pt", str(weights), 10, hashlib.sha256(b"w" * 10).hexdigest())
    client = PlatformTransport(KEY, api_root="http://127.0.0.1:9")
    try:
        for url in ("http://127.0.0.1:99999/o?sig=SECRET", "http://[::1/o?sig=SECRET"):
            try:
                client.send(Request("PUT", url, file=part))
                raise AssertionError("an unusable URL must fail")
            except TransportError as error:
                assert error.kind == "url" and "SECRET" not in str(error), str(error)
    finally:
        client.close()
