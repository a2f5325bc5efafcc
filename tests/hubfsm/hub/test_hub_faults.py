from __future__ import annotations

import random
from collections import Counter

import pytest

from hubfsm.hub.faults import FAULT_KINDS, NO_FAULT, Fault, FaultMix, draw

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
