"""Clients that trickle what they send, or send nothing: the hub's other clients go on.

A socket timeout bounds each read; these clients stay within it and still must not hold
the hub's worker threads, or its one thread that accepts connections.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests

from hubfsm.hub.server import LocalHub
from tests.hubfsm.hub.test_hub_access import _self_signed

TIMEOUT = 10


def _drip(port: int, done: threading.Event, heard: list[bytes]) -> None:
    """Send a request head a byte every 0.1 s (each well within any read timeout)."""
    head = b"GET /v1/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        for byte in head:
            if done.is_set():
                break
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        sock.settimeout(1)
        try:
            heard.append(sock.recv(4096))
        except OSError:
            heard.append(b"")


@pytest.mark.slow
def test_a_head_trickled_a_byte_at_a_time_is_cut_at_its_deadline(tmp_path: Path) -> None:
    # One worker thread; the trickled head would hold it 20 s without a deadline in all.
    with LocalHub(tmp_path / "hub", timeout=30, head_timeout=0.5, threads=1) as local:
        done, heard = threading.Event(), []
        dripper = threading.Thread(target=_drip, args=(local.port, done, heard))
        dripper.start()
        try:
            time.sleep(0.2)
            started = time.monotonic()
            reply = requests.post(
                f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=5
            )
            waited = time.monotonic() - started
        finally:
            done.set()
            dripper.join(timeout=TIMEOUT)
    assert reply.status_code == 200 and waited < 2.0
    assert heard and (heard[0] == b"" or heard[0].startswith(b"HTTP/1.1 408")), heard


@pytest.mark.slow
def test_a_tls_client_that_says_nothing_does_not_stop_the_hub_accepting(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    with LocalHub(
        tmp_path / "hub", timeout=30, head_timeout=0.5, threads=2, tls_cert=cert, tls_key=key
    ) as local:
        # Connected, no TLS handshake: the hub used to wait for it before accepting anyone.
        silent = [socket.create_connection(("127.0.0.1", local.port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            answers = []
            for _ in range(3):
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", local.port, timeout=5, context=context
                )
                started = time.monotonic()
                conn.request("POST", "/v1/auth", headers={"x-api-key": local.api_key})
                answers.append((conn.getresponse().status, time.monotonic() - started))
                conn.close()
            for sock in silent:
                sock.settimeout(TIMEOUT)
                assert sock.recv(4096) == b""  # closed at the handshake's deadline
        finally:
            for sock in silent:
                sock.close()
    assert [status for status, _ in answers] == [200, 200, 200]
    assert max(seconds for _, seconds in answers) < 2.0


def _drip_body(port: int, head: bytes, done: threading.Event, heard: list[bytes]) -> None:
    """Send a whole request head at once, then its body a byte every 0.1 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        for _ in range(200):
            if done.is_set():
                break
            try:
                sock.send(b"k")
            except OSError:
                break
            time.sleep(0.1)
        sock.settimeout(1)
        try:
            heard.append(sock.recv(4096))
        except OSError:
            heard.append(b"")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "answer"), [("/v1/models", b"HTTP/1.1 401"), ("/signin", b"HTTP/1.1 408")]
)
def test_a_body_no_key_vouches_for_is_cut_at_the_heads_deadline(
    tmp_path: Path, path: str, answer: bytes
) -> None:
    # A keyless API body is drained (to keep the connection), a sign-in form read, before
    # any key is known: trickled, each held the one worker as long as it went on (20 s).
    with LocalHub(tmp_path / "hub", timeout=30, head_timeout=0.5, threads=1, sign_in=True) as local:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\nOrigin: {local.url}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n"
        ).encode()
        done, heard = threading.Event(), []
        dripper = threading.Thread(target=_drip_body, args=(local.port, head, done, heard))
        dripper.start()
        try:
            time.sleep(0.2)
            started = time.monotonic()
            reply = requests.post(
                f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=5
            )
            waited = time.monotonic() - started
        finally:
            done.set()
            dripper.join(timeout=TIMEOUT)
    assert reply.status_code == 200 and waited < 2.0
    assert heard and heard[0].startswith(answer), heard


@pytest.mark.slow
def test_slow_heads_hold_half_the_threads_at_most_and_the_rest_hear_503(tmp_path: Path) -> None:
    # Four threads: two may wait on heads that have not all arrived. Before, six such
    # connections held all four for the head's deadline (3 s here, 10 s by default).
    with LocalHub(tmp_path / "hub", timeout=30, head_timeout=3, threads=4) as local:
        slow = [socket.create_connection(("127.0.0.1", local.port)) for _ in range(6)]
        try:
            for sock in slow:
                sock.sendall(b"G")
            time.sleep(0.3)
            started = time.monotonic()
            reply = requests.post(
                f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=5
            )
            waited = time.monotonic() - started
            heard = []
            for sock in slow:
                sock.settimeout(0.5)
                try:
                    heard.append(sock.recv(4096))
                except TimeoutError:
                    heard.append(b"(waiting)")
        finally:
            for sock in slow:
                sock.close()
    assert reply.status_code == 200 and waited < 1.0
    busy = [each for each in heard if each.startswith(b"HTTP/1.1 503")]
    assert len(busy) == 4 and b"Retry-After: 1" in busy[0], heard
    assert heard.count(b"(waiting)") == 2, heard


@pytest.mark.slow
def test_new_connections_that_say_nothing_hold_no_thread(tmp_path: Path) -> None:
    # Cheroot hands a new connection straight to a worker, which waited for its head up to
    # the deadline: four silent connections held two threads for 3 s, twice over.
    with LocalHub(tmp_path / "hub", timeout=30, head_timeout=3, threads=2) as local:
        silent = [socket.create_connection(("127.0.0.1", local.port)) for _ in range(4)]
        try:
            time.sleep(0.3)
            started = time.monotonic()
            reply = requests.post(
                f"{local.url}/v1/auth", headers={"x-api-key": local.api_key}, timeout=10
            )
            waited = time.monotonic() - started
            # They wait in the selector, open: a head sent later is answered.
            silent[0].sendall(
                f"GET /v1/auth HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\n\r\n".encode()
            )
            silent[0].settimeout(TIMEOUT)
            assert silent[0].recv(4096).startswith(b"HTTP/1.1 401")
        finally:
            for sock in silent:
                sock.close()
    assert reply.status_code == 200 and waited < 1.0
