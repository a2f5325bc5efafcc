"""Opening against a hub that has never answered: configuration errors fail fast."""

import random

import pytest

from hubfsm.core.config import ChannelPolicies
from hubfsm.core.engine import Core
from hubfsm.core.identifier import parse_identifier
from hubfsm.core.machine import Verdict, classify
from hubfsm.core.values import Send, Wait
from hubfsm.errors import HubUnavailableError
from hubfsm.transport import Response, TransportError

MODEL = "A" * 20
ROOT = "http://127.0.0.1:8799"


def ok(data=None):
    return Response(200, {"success": True, "message": "", "data": data or {}})


def error(kind):
    return TransportError(kind, f"GET /v1/models/{MODEL}: {kind}", url=ROOT)


def opening(identifier=MODEL):
    core = Core(rng=random.Random(0))
    create = {"meta": {"name": "x"}} if identifier.endswith(".yaml") else None
    core.open(parse_identifier(identifier), create=create, now=0.0)
    return core


def answer_until_settled(core, outcome, limit=50):
    """Answer up to ``limit`` attempts with ``outcome``, the clock jumping to each retry.

    Returns (attempts, now) once the open settles or the attempts run out.
    """
    now = 0.0
    for attempts in range(1, limit + 1):
        action = core.poll(now)
        if isinstance(action, Wait):
            if action.until is None:
                return attempts - 1, now
            now = action.until
            action = core.poll(now)
        assert isinstance(action, Send)
        core.receive(action.op_id, outcome, now=now)
        if core.state != "resolved":
            return attempts, now
    return limit, now


@pytest.mark.parametrize("kind", ["tls", "url"])
def test_classify_a_wrong_address_as_fatal_only_at_first_contact(kind):
    assert classify(error(kind), first_contact=True) is Verdict.FATAL
    assert classify(error(kind)) is Verdict.RETRY


@pytest.mark.parametrize("kind", ["connect", "refused", "timeout", "protocol"])
def test_classify_a_network_failure_as_retryable_even_at_first_contact(kind):
    assert classify(error(kind), first_contact=True) is Verdict.RETRY


@pytest.mark.parametrize("identifier", [MODEL, "tiny.yaml"])
@pytest.mark.parametrize("kind", ["tls", "url"])
def test_a_tls_or_url_error_fails_the_open_at_once(identifier, kind):
    core = opening(identifier)
    attempts, now = answer_until_settled(core, error(kind))
    assert (attempts, now) == (1, 0.0)
    assert core.state == "failed"
    assert isinstance(core.error, HubUnavailableError)
    assert ROOT in str(core.error)
    assert ("scheme" in str(core.error)) == (kind == "tls")


def test_a_refused_first_contact_is_retried_briefly_then_asks_if_the_hub_runs():
    core = opening()
    attempts, now = answer_until_settled(core, error("refused"))
    policy = ChannelPolicies().first_contact
    assert core.state == "failed"
    assert 2 <= attempts <= policy.max_attempts
    assert now <= policy.deadline
    assert isinstance(core.error, HubUnavailableError)
    assert f"is the hub at {ROOT} running?" in str(core.error)


def test_other_connection_failures_at_first_contact_keep_the_patient_policy():
    core = opening()
    attempts, now = answer_until_settled(core, error("connect"), limit=12)
    # It never gave up: after the control policy's round it rests, then tries again.
    assert core.state == "resolved"
    assert attempts == 12 and now > ChannelPolicies().first_contact.deadline
    assert core.retry_wait is not None


def test_once_the_hub_answered_a_refusal_is_an_outage_not_a_wrong_address():
    core = opening()
    send = core.poll(0.0)
    core.receive(send.op_id, ok({"id": MODEL, "status": "new"}), now=0.0)
    core.start(now=0.0)
    now = 0.0
    for _ in range(20):
        action = core.poll(now)
        if isinstance(action, Wait):
            now = action.until
            continue
        core.receive(action.op_id, error("refused"), now=now)
    assert core.state == "training" and core.error is None


def test_a_long_wait_is_reported_before_it_begins():
    core = opening()
    # The control policy's round ends, so the operation rests for the park time.
    answer_until_settled(core, error("connect"), limit=ChannelPolicies().control.max_attempts)
    assert core.retry_wait == pytest.approx(core.config.limits.park)
