"""A hub that takes the connection and never answers is named while opening waits.

Each attempt then waits out the read timeout (60 s), so the lost line, said after three
attempts in a row, came only after the open timeout had passed: the trainer waited two
minutes in silence, then read "did not load or create the model within 120s".
"""

from __future__ import annotations

import io
import socket
import threading
import time
import types

import pytest

import hubfsm
from hubfsm.core.machine import TRAITS
from hubfsm.runtime.console import Console
from hubfsm.runtime.factory import OPEN_QUIET
from hubfsm.transport import Response
from tests.support import KEY


@pytest.mark.slow  # opening waits past its quiet spell against a real socket
def test_opening_on_a_hub_that_never_answers_names_it_then_fails_saying_so(
    tmp_path, capsys
):
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # take every connection, read nothing, answer nothing
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    began = time.monotonic()
    try:
        with pytest.raises(hubfsm.HubUnavailableError) as raised:
            hubfsm.Session("yolov8n.yaml", api_root=url, api_key=KEY, outbox_dir=tmp_path,
                           open_timeout=OPEN_QUIET + 2.0)
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
    assert time.monotonic() - began < OPEN_QUIET + 10.0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hubfsm:")]
    assert lines == [
        f"hubfsm: no answer yet from the hub at {url} after 10 s; trying for up to 12 s to "
        "open the model"
    ]
    assert str(raised.value).endswith(
        f"the hub at {url} did not load or create the model within 12s; nothing answered"
    )


def test_the_opening_line_is_said_once_and_the_hub_back_closes_it() -> None:
    core = types.SimpleNamespace(
        state="resolved",
        answered=False,
        machine=types.SimpleNamespace(failed=False, sends=True, traits=TRAITS["resolved"]),
        pending=lambda: {"metrics": 0, "checkpoint": 0, "final": 0},
    )
    out = io.StringIO()
    console = Console("the hub at http://127.0.0.1:8000", open_timeout=120.0, stream=out)
    console.still_opening(110.0, 10.0)
    busy = Response(503, {"success": False, "message": "busy", "data": {}})
    for attempt in range(5):  # the lost line would say the same again
        console.outcome(core, "control", busy, now=120.0 + attempt)  # type: ignore[arg-type]
    console.still_opening(130.0, 10.0)
    ok = Response(200, {"success": True, "message": "", "data": {}})
    console.outcome(core, "control", ok, now=160.0)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "hubfsm: no answer yet from the hub at http://127.0.0.1:8000 after 10 s; trying for "
        "up to 2 min to open the model",
        "hubfsm: the hub at http://127.0.0.1:8000 is back after 60 s",
    ]
