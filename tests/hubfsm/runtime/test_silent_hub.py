"""A hub that takes the connection and never answers is named while opening waits.

Each attempt then waits out the read timeout (60 s), so the lost line, said after three
attempts in a row, came only after the open timeout had passed: the trainer waited two
minutes in silence, then read "did not load or create the model within 120s".
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import hubfsm
from hubfsm.runtime.factory import OPEN_QUIET
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
