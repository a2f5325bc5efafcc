from __future__ import annotations

import contextlib
import random

import pytest

from hubfsm.core import protocol
from hubfsm.hub import FaultMix, Hub
from hubfsm.transport import Request, Response, Transport, TransportError
from transports.faults import FaultInjectingTransport
from transports.memory import InMemoryTransport

from tests.support import KEY


class Recorder(Transport):
    def __init__(self) -> None:
        self.sent: list[Request] = []

    def send(self, request: Request) -> Response:
        self.sent.append(request)
        return Response(200, {"success": True, "message": "", "data": {}})


def outcomes(seed: int, n: int = 200) -> list[object]:
    slept: list[float] = []
    wrapper = FaultInjectingTransport(
        Recorder(),
        random.Random(seed),
        FaultMix(
            server_error=0.2,
            rate_limited=0.1,
            timeout=0.1,
            connection_error=0.1,
            lost_response=0.1,
            latency=(0, 1),
        ),
        sleep=slept.append,
    )
    seen: list[object] = []
    for _ in range(n):
        try:
            reply = wrapper.send(protocol.auth())
            seen.append((reply.status, reply.retry_after))
        except TransportError as error:
            seen.append((error.kind, str(error)))
    return [*seen, *slept]


def test_same_seed_same_sequence() -> None:
    assert outcomes(5) == outcomes(5)
    assert outcomes(5) != outcomes(6)


def test_each_fault_does_what_it_says() -> None:
    inner = Recorder()
    slept: list[float] = []
    wrapper = FaultInjectingTransport(
        inner, random.Random(0), FaultMix(), sleep=slept.append, timeout=12.0
    )

    wrapper.mix = FaultMix(server_error=1.0, latency=(0.25, 0.25))
    reply = wrapper.send(protocol.auth())
    assert reply.status in (500, 502, 503, 504)
    assert slept == [0.25]
    assert inner.sent == []

    wrapper.mix = FaultMix(rate_limited=1.0, retry_after=(3.0, 3.0))
    reply = wrapper.send(protocol.auth())
    assert (reply.status, reply.retry_after) == (429, 3.0)
    assert inner.sent == []

    wrapper.mix = FaultMix(timeout=1.0)
    with pytest.raises(TransportError) as caught:
        wrapper.send(protocol.auth())
    assert caught.value.kind == "timeout"
    assert slept[-1] == 12.0
    assert inner.sent == []

    wrapper.mix = FaultMix(connection_error=1.0)
    with pytest.raises(TransportError) as caught:
        wrapper.send(protocol.auth())
    assert caught.value.kind == "connect"
    assert inner.sent == []

    wrapper.mix = FaultMix(lost_response=1.0)
    with pytest.raises(TransportError) as caught:
        wrapper.send(protocol.auth())
    assert caught.value.kind == "timeout"
    assert len(inner.sent) == 1

    wrapper.mix = FaultMix()
    assert wrapper.send(protocol.auth()).ok
    assert len(inner.sent) == 2
    assert dict(wrapper.injected) == {
        "server_error": 1,
        "rate_limited": 1,
        "timeout": 1,
        "connection_error": 1,
        "lost_response": 1,
    }
    assert wrapper.requests == 6


def test_lost_response_takes_effect_on_the_hub(hub: Hub) -> None:
    memory = InMemoryTransport(hub, KEY)
    model_id = memory.send(
        protocol.create_model({"lineage": {"architecture": {"name": "yolov8n"}}})
    ).data["id"]
    lossy = FaultInjectingTransport(
        memory, random.Random(1), FaultMix(lost_response=1.0), sleep=lambda s: None
    )
    request = protocol.upload_metrics(model_id, {0: "{}"}, key="once")
    with pytest.raises(TransportError):
        lossy.send(request)
    assert hub.audit().metrics_applied == {(model_id, 0): 1}
    # The retry with the same idempotency key is replayed, not applied again.
    assert memory.send(request).ok
    assert hub.audit().metrics_applied == {(model_id, 0): 1}
    assert KEY not in repr(lossy)


def test_rates_over_many_requests() -> None:
    mix = FaultMix(server_error=0.1, rate_limited=0.1, lost_response=0.1)
    wrapper = FaultInjectingTransport(Recorder(), random.Random(9), mix, sleep=lambda s: None)
    for _ in range(5000):
        with contextlib.suppress(TransportError):
            wrapper.send(protocol.auth())
    for kind in ("server_error", "rate_limited", "lost_response"):
        assert 400 < wrapper.injected[kind] < 600
