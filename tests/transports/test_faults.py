from __future__ import annotations

import contextlib
import random
from collections import Counter

import pytest

from hubfsm.core import protocol
from hubfsm.hub.domain import Hub
from hubfsm.transport import Request, Response, Transport, TransportError
from tests.support import KEY
from transports.faults import (
    FAULT_KINDS,
    NO_FAULT,
    Fault,
    FaultInjectingTransport,
    FaultMix,
    Faults,
    draw,
)
from transports.memory import InMemoryTransport


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


def test_faults_wrap_a_plain_handler_function() -> None:
    seen: list[str] = []

    def service(request: Request) -> Response:
        seen.append(request.path)
        return Response(200, {"success": True, "message": "", "data": {}})

    lossy = Faults(service, random.Random(0), FaultMix(lost_response=1.0), sleep=lambda s: None)
    with pytest.raises(TransportError, match="answer lost"):
        lossy(protocol.auth())
    assert seen == [protocol.auth().path]  # the request took effect; only its answer was lost
    lossy.mix = FaultMix()  # a scenario changes the mix between requests
    assert lossy(protocol.auth()).ok
    assert lossy.requests == 2 and dict(lossy.injected) == {"lost_response": 1}


# -- drawing the faults ---------------------------------------------------------------

MIX = FaultMix(
    server_error=0.1,
    rate_limited=0.05,
    timeout=0.05,
    connection_error=0.05,
    lost_response=0.05,
    latency=(0.01, 0.2),
    retry_after=(2.0, 4.0),
)


def test_same_seed_same_faults() -> None:
    first = [draw(MIX, random.Random(42)) for _ in range(3)]
    rng_a, rng_b = random.Random(42), random.Random(42)
    assert [draw(MIX, rng_a) for _ in range(500)] == [draw(MIX, rng_b) for _ in range(500)]
    assert first[0] == first[1] == first[2]


def test_rates_match_the_mix() -> None:
    rng = random.Random(7)
    n = 40_000
    faults = [draw(MIX, rng) for _ in range(n)]
    counts = Counter(f.kind for f in faults)
    for kind in FAULT_KINDS:
        expected = getattr(MIX, kind) * n
        assert abs(counts[kind] - expected) < 5 * expected**0.5, (kind, counts[kind], expected)
    assert abs(counts["none"] - 0.7 * n) < 5 * (0.7 * n) ** 0.5
    assert all(0.01 <= f.latency <= 0.2 for f in faults)
    for fault in faults:
        if fault.kind == "server_error":
            assert fault.status in (500, 502, 503, 504)
        elif fault.kind == "rate_limited":
            assert fault.status == 429
            assert fault.retry_after is not None and 2.0 <= fault.retry_after <= 4.0
        else:
            assert fault.status is None and fault.retry_after is None


def test_quiet_mix_draws_nothing() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    assert draw(FaultMix(), rng) is NO_FAULT
    assert rng.getstate() == state
    assert FaultMix().quiet
    assert not FaultMix(latency=(0, 0.1)).quiet


def test_latency_only() -> None:
    fault = draw(FaultMix(latency=(0.5, 0.5)), random.Random(0))
    assert fault == Fault("none", latency=0.5)


def test_certain_fault() -> None:
    rng = random.Random(0)
    assert {draw(FaultMix(lost_response=1.0), rng).kind for _ in range(100)} == {"lost_response"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_error": -0.1},
        {"timeout": 1.5},
        {"server_error": 0.6, "rate_limited": 0.5},
        {"latency": (2.0, 1.0)},
        {"latency": (-1.0, 1.0)},
        {"retry_after": (5.0, 1.0)},
        {"server_statuses": ()},
    ],
)
def test_invalid_mixes(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultMix(**kwargs)  # type: ignore[arg-type]


def test_from_rate() -> None:
    mix = FaultMix.from_rate(0.5, latency=0.3)
    assert mix.total == pytest.approx(0.5)
    assert mix.timeout == 0.0
    assert mix.latency == (0.0, 0.3)
    assert FaultMix.from_rate(0.0).quiet
