from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hubfsm.core import protocol
from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore
from hubfsm.transport import FilePart, Handler, Request, Response
from tests.support import KEY
from transports.memory import InMemoryTransport

CREATE = {
    "config": {
        "batchSize": 8,
        "epochs": 300,
        "imageSize": 640,
        "patience": 50,
        "device": "",
        "cache": "ram",
    },
    "dataset": {"name": "coco8.yaml"},
    "lineage": {"architecture": {"name": "yolov8n"}, "parent": {}},
    "meta": {"name": "demo"},
}


def part(name: str, path: str, data: bytes) -> FilePart:
    return FilePart(name, path, len(data), hashlib.sha256(data).hexdigest())


def test_a_whole_session_through_the_protocol_builders(tmp_path: Path, hub: Hub) -> None:
    transport = InMemoryTransport(hub, KEY)
    assert transport.send(protocol.auth()).ok
    created = transport.send(protocol.create_model(CREATE, key="c"))
    assert created.status == 200
    model_id = created.data["id"]
    loaded = transport.send(protocol.get_model(model_id))
    assert loaded.data["cfg"] == "yolov8n.yaml"
    sent = {e: protocol.encode_metrics({"loss": e / 10}) for e in range(3)}
    assert transport.send(protocol.upload_metrics(model_id, sent, key="m")).ok
    beat = transport.send(protocol.heartbeat(model_id, None))
    assert beat.data["agentId"]
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"checkpoint")
    reply = transport.send(
        protocol.upload_checkpoint(
            model_id, 2, part("last.pt", str(ckpt), b"checkpoint"), is_best=True, key="u"
        )
    )
    assert reply.status == 200, reply.body
    best = tmp_path / "best.pt"
    best.write_bytes(b"best")
    final = transport.send(
        protocol.upload_final(
            model_id, 2, part("best.pt", str(best), b"best"), map50_95=0.61, key="f"
        )
    )
    assert final.ok
    record = transport.send(protocol.get_model(model_id)).data
    assert record["status"] == "trained"
    assert record["map"] == 0.61
    got = transport.send(Request("GET", f"/v1/models/{model_id}/metrics"))
    assert [m["epoch"] for m in got.body["data"]] == [0, 1, 2]
    assert hub.audit().uploads[-1].sha256 == hashlib.sha256(b"best").hexdigest()


def test_errors_come_back_as_responses(hub: Hub) -> None:
    wrong = InMemoryTransport(hub, "W" * 42)
    reply = wrong.send(protocol.auth())
    assert reply.status == 401
    assert reply.message
    assert "W" * 42 not in repr(wrong)
    assert KEY not in repr(InMemoryTransport(hub, KEY))
    right = InMemoryTransport(hub, KEY)
    assert right.send(protocol.get_model("abcdefghij0123456789")).status == 404


def test_files_come_from_read_file(hub: Hub) -> None:
    blobs = {"/virtual/last.pt": b"virtual"}
    transport = InMemoryTransport(hub, KEY, read_file=blobs.__getitem__)
    model_id = transport.send(protocol.create_model(CREATE)).data["id"]
    reply = transport.send(
        protocol.upload_checkpoint(
            model_id, 0, part("last.pt", "/virtual/last.pt", b"virtual"), is_best=False, key="k"
        )
    )
    assert reply.ok
    assert hub.weights(model_id, "last") is not None
    with pytest.raises(KeyError):
        transport.send(
            protocol.upload_checkpoint(
                model_id, 0, part("last.pt", "/nowhere", b""), is_best=False, key="k2"
            )
        )


def test_retry_after_header_is_parsed() -> None:
    class Limited(Hub):
        def handle(self, call):  # type: ignore[no-untyped-def]
            reply = super().handle(call)
            return type(reply)(429, reply.body, {"Retry-After": "7"})

    transport = InMemoryTransport(Limited(MemoryStore(), keys=[KEY]), KEY)
    assert transport.send(protocol.auth()).retry_after == 7.0


def test_a_300_epoch_session_goes_through_in_process() -> None:
    # Its speed is measured by bench/session300.py, not asserted here: what this checks is
    # that every request of a long session is answered, and each is applied once.
    hub = Hub(MemoryStore(), clock=lambda: 0.0, keys=[KEY])
    blobs = {"/w/last.pt": b"l" * 4096, "/w/best.pt": b"b" * 4096}
    transport = InMemoryTransport(hub, KEY, read_file=blobs.__getitem__)
    answers = []

    def send(request: Request) -> None:
        answers.append(transport.send(request))

    created = transport.send(protocol.create_model(CREATE, key="c"))
    model_id = created.data["id"]
    send(protocol.get_model(model_id))
    for epoch in range(300):
        text = json.dumps({"loss": 1 / (epoch + 1), "mAP50-95": epoch / 300})
        send(protocol.upload_metrics(model_id, {epoch: text}, key=f"m{epoch}"))
        send(protocol.heartbeat(model_id, None))
        if epoch % 25 == 0:
            send(
                protocol.upload_checkpoint(
                    model_id,
                    epoch,
                    part("last.pt", "/w/last.pt", blobs["/w/last.pt"]),
                    is_best=False,
                    key=f"c{epoch}",
                )
            )
    send(
        protocol.upload_final(
            model_id, 299, part("best.pt", "/w/best.pt", blobs["/w/best.pt"]), map50_95=0.5, key="f"
        )
    )
    assert created.ok and all(answer.ok for answer in answers)
    audit = hub.audit()
    assert audit.requests == {
        "create_model": 1,
        "get_model": 1,
        "upload_metrics": 300,
        "heartbeat": 300,
        "upload_weights": 13,
    }
    assert audit.replayed == {}
    assert audit.metrics_applied == {(model_id, epoch): 1 for epoch in range(300)}
    assert [u.type for u in audit.uploads] == ["epoch"] * 12 + ["final"]


def test_any_hub_that_hands_out_a_handler_will_do() -> None:
    keys: list[str] = []

    class Echo:
        def handler(self, api_key: str, *, read_file: Callable[[str], bytes]) -> Handler:
            keys.append(api_key)
            return lambda request: Response(200, {"data": {"path": request.path}})

    transport = InMemoryTransport(Echo(), KEY)
    assert transport.send(protocol.auth()).data == {"path": protocol.auth().path}
    assert keys == [KEY]
    assert KEY not in repr(transport)


def test_the_in_memory_transport_loads_no_hub() -> None:
    # The fake is a handler: importing it must not load the hub's stores (and SQLite).
    code = (
        "import sys, transports.memory\n"
        "print(sorted(m for m in sys.modules if m.startswith(('hubfsm.hub', 'sqlite3'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
