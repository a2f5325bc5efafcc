import attrs
import pytest

from hubfsm.core import CoreConfig, Limits
from hubfsm.simulation import PROFILES, run_seed

SEEDS = range(1000)


def test_a_thousand_flaky_sessions_keep_every_invariant():
    failures = []
    for seed in SEEDS:
        result = run_seed(seed, profile="flaky", epochs=50)
        if not result.ok or result.state != "done":
            failures.append(result)
    if failures:
        first = failures[0]
        around = "\n".join(first.trace[-30:])
        pytest.fail(
            f"{len(failures)} failing seeds, first {first.seed} in state {first.state}: "
            f"{[str(v) for v in first.violations[:3]]}\n"
            f"replay with: {first.replay_command()}\n{around}"
        )


def test_a_calm_session_sends_few_requests_and_no_retries():
    result = run_seed(3, profile="calm", epochs=20)
    assert result.ok and result.state == "done"
    assert result.retries == 0
    # 20 metrics, at least one checkpoint, final, create/load, heartbeats
    assert 23 <= result.requests <= 40


def test_the_same_seed_gives_the_same_trace():
    a = run_seed(42, epochs=30)
    b = run_seed(42, epochs=30)
    assert a.trace == b.trace
    assert run_seed(43, epochs=30).trace != a.trace


def test_the_checker_catches_a_broken_rate_limit():
    # Plant a bug: the core's metrics limit is 1 s while the checker holds it to 3 s.
    broken = CoreConfig(limits=Limits(metrics=1.0))
    found = None
    for seed in range(200):
        result = run_seed(seed, profile=attrs.evolve(PROFILES["flaky"], epoch_seconds=(0.5, 2.0)),
                          epochs=20, config=broken, check_limits=Limits())
        if any(v.number == 5 for v in result.violations):
            found = seed
            break
    assert found is not None, "a planted rate-limit bug went unnoticed for 200 seeds"
