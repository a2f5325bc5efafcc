import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubfsm.core.config import ChannelPolicies, RetryPolicy
from hubfsm.core.machine import RETRYABLE_STATUSES, Verdict, classify
from hubfsm.transport import Response, TransportError

policies = st.builds(
    RetryPolicy,
    base=st.floats(0.01, 10),
    cap=st.floats(0.01, 600),
    max_attempts=st.integers(1, 20),
    deadline=st.floats(0, 7200),
    max_retry_after=st.floats(0, 3600),
)
retry_afters = st.lists(st.one_of(st.none(), st.floats(0, 4000)), max_size=25)


@given(policies, st.integers(0, 2**32), retry_afters)
def test_every_wait_lies_within_its_bounds(policy, seed, ras):
    waits = policy.schedule(random.Random(seed), ras)
    for n, wait in enumerate(waits):
        ra = ras[n] if n < len(ras) else None
        honoured = None if ra is None else min(ra, policy.max_retry_after)
        upper = policy.bound(n) if honoured is None else max(policy.bound(n), honoured)
        assert 0 <= wait <= upper
        if honoured is not None:
            assert wait >= honoured


@given(policies, st.integers(0, 2**32), retry_afters)
def test_waits_never_pass_the_deadline_nor_the_attempts(policy, seed, ras):
    waits = policy.schedule(random.Random(seed), ras)
    assert sum(waits) <= policy.deadline + 1e-9
    # one wait between two attempts, none after the last
    assert len(waits) <= policy.max_attempts - 1


@given(policies, st.integers(0, 2**32), retry_afters)
def test_a_seed_fixes_the_schedule(policy, seed, ras):
    assert policy.schedule(random.Random(seed), ras) == policy.schedule(random.Random(seed), ras)


@given(policies, st.integers(0, 2**32), st.floats(0, 4000))
def test_retry_after_is_a_floor_or_the_policy_gives_up(policy, seed, ra):
    wait = policy.next_wait(attempts=1, elapsed=0.0, rng=random.Random(seed), retry_after=ra)
    honoured = min(ra, policy.max_retry_after)
    if wait is None:
        assert (
            policy.max_attempts == 1
            or honoured > policy.deadline
            or policy.bound(0) > policy.deadline
        )
    else:
        assert wait >= honoured


#: Any Retry-After a hub may send, read as seconds: up to decades and past, and infinity
#: (more digits than a float holds).
any_retry_after = st.one_of(st.floats(0, 1e300), st.just(math.inf))


@given(policies, st.integers(0, 2**32), any_retry_after, st.integers(1, 20), st.floats(0, 7200))
def test_retry_after_is_honoured_only_up_to_the_policys_maximum(
    policy, seed, ra, attempts, elapsed
):
    wait = policy.next_wait(
        attempts=attempts, elapsed=elapsed, rng=random.Random(seed), retry_after=ra
    )
    assert wait is None or wait <= max(policy.bound(attempts - 1), policy.max_retry_after)
    assert policy.honoured(ra) == min(ra, policy.max_retry_after)
    # Past the maximum, how much longer the hub asked for changes nothing.
    longer = policy.next_wait(
        attempts=attempts, elapsed=elapsed, rng=random.Random(seed), retry_after=ra * 2 + 1
    )
    if ra >= policy.max_retry_after:
        assert longer == wait


def test_a_retry_after_that_is_not_a_number_is_none():
    policy = RetryPolicy(max_retry_after=300)
    assert policy.honoured(None) is None
    assert policy.honoured(math.nan) is None
    assert policy.honoured(-5.0) == 0.0


def test_full_jitter_spreads_waits_over_the_whole_range():
    policy = RetryPolicy(base=1.0, cap=100.0, max_attempts=10, deadline=1e9)
    rng = random.Random(7)
    waits = [policy.next_wait(attempts=4, elapsed=0, rng=rng) for _ in range(2000)]
    assert all(w is not None and 0 <= w <= 8.0 for w in waits)
    assert min(w for w in waits if w is not None) < 0.5
    assert max(w for w in waits if w is not None) > 7.5


def test_no_wait_after_the_last_attempt():
    policy = RetryPolicy(max_attempts=3, deadline=1e9)
    rng = random.Random(1)
    assert policy.next_wait(attempts=2, elapsed=0, rng=rng) is not None
    assert policy.next_wait(attempts=3, elapsed=0, rng=rng) is None


def test_no_attempt_starts_past_the_deadline():
    policy = RetryPolicy(base=10, cap=10, max_attempts=100, deadline=5)
    rng = random.Random(3)
    assert policy.next_wait(attempts=1, elapsed=4.999, rng=rng, retry_after=1.0) is None


@given(st.integers(100, 599))
def test_fatal_statuses_are_never_retried(status):
    verdict = classify(Response(status))
    if 200 <= status < 300:
        assert verdict is Verdict.SUCCESS
    elif status in RETRYABLE_STATUSES or status >= 500:
        assert verdict is Verdict.RETRY
    else:
        assert verdict is Verdict.FATAL
    if verdict is Verdict.FATAL:
        # a fatal outcome never reaches the wait computation in the core; the policy
        # itself has nothing to say, which the core's tests cover.
        assert 400 <= status < 500 or 100 <= status < 200 or 300 <= status < 400


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_client_errors_are_fatal(status):
    assert classify(Response(status)) is Verdict.FATAL


@pytest.mark.parametrize("kind", ["connect", "timeout", "protocol"])
def test_transport_errors_are_retryable(kind):
    assert classify(TransportError(kind, "x")) is Verdict.RETRY


def test_channel_defaults_are_bounded():
    for name in ("control", "metrics", "heartbeat", "checkpoint", "final"):
        policy = getattr(ChannelPolicies(), name)
        assert policy.max_attempts >= 3
        assert policy.deadline <= 3600


def test_a_scaled_policy_keeps_its_shape():
    policy = RetryPolicy(base=2.0, cap=60.0, max_attempts=7, deadline=600.0, max_retry_after=300)
    fast = policy.scaled(0.001)
    assert fast.max_attempts == 7
    assert fast.schedule(random.Random(3)) == pytest.approx(
        [w * 0.001 for w in policy.schedule(random.Random(3))]
    )
