"""What many test modules share: a key, the shipped behaviour sped up, and small helpers.

Fixtures live in ``tests/conftest.py``; this module holds what a test imports by name
(``from tests.support import KEY, FAST, new_model``). pytest's importlib import mode
makes ``tests`` importable however the suite is started.
"""

from __future__ import annotations

from typing import Any

import attrs

from hubfsm.core import protocol
from hubfsm.core.config import CoreConfig
from hubfsm.hub.domain import Hub
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.shells import SimRunner, VirtualClock
from transports.memory import InMemoryTransport

#: The API key of the in-memory hub (the ``hub`` fixture): 42 letters and digits, mixed
#: like a real key, so no stretch of it turns up in a text by chance.
KEY = "fX7kQ2mW9rT4vB8nL3pZ6hJ1yC5dS0gA2eU7iO4rVb"
assert len(KEY) == 42 and KEY.isalnum()

#: The shipped behaviour, a thousand times as fast.
FAST = CoreConfig().scaled(0.001)


def new_model(hub: Hub, key: str = KEY) -> str:
    """Create a model (from ``yolov8n.yaml``) on ``hub``; returns its id."""
    reply = InMemoryTransport(hub, key).send(
        protocol.create_model(protocol.create_payload("yolov8n.yaml", {}))
    )
    return str(reply.data["id"])


def inline_session(
    identifier: str, *, transport: Any, clock: VirtualClock | None = None, **settings: Any
) -> tuple[Session, SimRunner]:
    """A session whose driver runs on the calling thread, on a virtual clock.

    Returns the session and its shell: trainer calls are taken in, and requests sent,
    only as the test lets virtual time pass (``shell.run_until``) or waits in a call.
    """
    clock = clock or VirtualClock(1000.0)
    resolved = attrs.evolve(Settings.resolve(identifier, **settings), at_exit=False)
    parts = build(resolved, transport=transport, clock=clock, inline=True)
    assert isinstance(parts.shell, SimRunner)
    return Session.compose(parts), parts.shell


def relay(handler: Any, host: str, port: int, body: bytes | None) -> None:
    """Forward the request a test proxy's ``handler`` read to ``host:port``, and its answer back."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
    conn.request(handler.command, handler.path, body=body, headers=headers)
    reply = conn.getresponse()
    data = reply.read()
    handler.send_response(reply.status)
    for k, v in reply.getheaders():
        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    conn.close()


def hubfsm_bound_by_modes(*args: str, env: dict[str, str]) -> Any:
    """Run ``hubfsm *args`` to completion in a child that file modes bind, as they bind a user.

    As root the child runs with its capabilities dropped (``setpriv``), so that a mode of
    000 holds it out as it would anyone; the environment is ``env`` alone.
    """
    import os
    import shutil
    import subprocess
    import sys

    drop: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run as root without its overrides"
        drop = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]
    return subprocess.run(
        [*drop, sys.executable, "-m", "hubfsm", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def hub_upload_body(fields: dict[str, str], filename: str, content: bytes) -> bytes:
    """A HUB weights upload as the wire carries it: form fields, then the file part.

    Sent with ``Content-Type: multipart/form-data; boundary=bnd``.
    """
    parts = b"".join(
        b'--bnd\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (name.encode(), value.encode())
        for name, value in fields.items()
    )
    head = (
        b'--bnd\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" % (filename.encode(), filename.encode())
    )
    return parts + head + content + b"\r\n--bnd--\r\n"
