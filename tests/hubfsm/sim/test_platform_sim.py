"""Simulated Platform sessions: every profile in memory and over HTTP, the dialect's checks."""

import json

import pytest

from hubfsm.core.platform import EVENTS_PATH, UPLOAD_PATH
from hubfsm.core.values import Send
from hubfsm.sim.bugs import COMPLETE_BEFORE_LAST_EPOCH
from hubfsm.sim.http_world import run_http_seed
from hubfsm.sim.platform_checks import DIALECT, PlatformChecker
from hubfsm.sim.play import run_seed
from hubfsm.sim.profiles import PROFILES
from hubfsm.transport import Request, Response
from transports.platform import PlatformTransport

#: Seeds the planted bug must be found within.
BUG_SEEDS = 200


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_keeps_every_invariant_in_memory(profile):
    for seed in range(3):
        result = run_seed(seed, profile=profile, epochs=20, protocol="platform")
        assert result.ok, result.violations
        assert result.protocol == "platform"
        if result.state == "done":
            # A Platform session sends no heartbeat: every request is one of its own.
            assert all(
                e.path in (EVENTS_PATH, UPLOAD_PATH) or e.method == "PUT"
                for e in result.trace
                if e.event == "send"
            )
            assert any(e.method == "PUT" for e in result.trace if e.event == "send")


def test_the_steps_of_an_upload_are_not_counted_as_retries():
    # Each upload is three or four requests (ask for a signed URL, PUT, report); on a
    # calm hub none goes out twice, so a session reports no retries.
    for seed in range(3):
        calm = run_seed(seed, profile="calm", epochs=5, protocol="platform", keep_trace=True)
        assert calm.ok, calm.violations
        assert any(e.event == "send" and e.method == "PUT" for e in calm.trace)
        assert calm.retries == 0
    # On a flaky hub a step that failed goes out again, and counts once per re-send; a
    # step that follows a success is the upload's next step.
    flaky = run_seed(1, profile="flaky", epochs=20, protocol="platform", keep_trace=True)
    answered: dict[int, bool] = {}  # op -> whether its last answer was a success
    again = 0
    for e in flaky.trace:
        if e.event == "recv":
            answered[e.op] = e.status is not None and 200 <= e.status < 300
        elif e.event == "send" and e.op in answered:
            again += not answered[e.op]
    assert flaky.retries == again > 0


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_keeps_every_invariant_over_http(profile):
    result = run_http_seed(0, profile=profile, epochs=6, protocol="platform")
    assert result.ok, result.violations
    assert result.http and result.protocol == "platform"


def test_the_eager_complete_bug_is_found_within_200_seeds():
    for seed in range(BUG_SEEDS):
        result = run_seed(
            seed,
            profile="flaky",
            epochs=20,
            protocol="platform",
            bugs=COMPLETE_BEFORE_LAST_EPOCH,
            keep_trace=False,
        )
        if not result.ok:
            break
    else:
        pytest.fail(f"training_complete before the last epoch went unseen in {BUG_SEEDS} seeds")
    print(f"the eager-complete bug is found at seed {seed}: {result.replay_command()}")
    assert any(
        v.number == DIALECT and "training_complete sent before epoch_end" in v.message
        for v in result.violations
    )
    assert "--protocol platform" in result.replay_command()
    # The same seed without the bug keeps every invariant: the bug is what it found.
    assert run_seed(seed, profile="flaky", epochs=20, protocol="platform").ok


def test_the_bug_is_a_platform_one_hub_sessions_do_not_have_it():
    for seed in range(10):
        assert run_seed(seed, profile="flaky", epochs=20, bugs=COMPLETE_BEFORE_LAST_EPOCH).ok


def test_a_key_sent_to_the_signed_upload_url_is_caught_over_http(monkeypatch):
    exchange = PlatformTransport._exchange

    def leaky(self, request, body, *, url=None, headers=None):
        if url is not None and headers is not None:
            headers = {**headers, "Authorization": "Bearer leaked"}
        return exchange(self, request, body, url=url, headers=headers)

    monkeypatch.setattr(PlatformTransport, "_exchange", leaky)
    result = run_http_seed(0, profile="calm", epochs=3, protocol="platform")
    assert any(v.number == 7 and "signed upload URL" in v.message for v in result.violations)


def _checker(logged):
    return PlatformChecker(
        lambda: 0.0, metrics=0.0, checkpoint=0.0, heartbeat=1e9, heartbeat_slack=1.0,
        logged=logged,
    )  # fmt: skip


def _event(event, data):
    body = {"modelId": "m" * 20, "event": event, "data": data}
    return Request("POST", EVENTS_PATH, json=body)


def test_the_checker_refuses_what_the_official_client_never_sends():
    checker = _checker([])
    checker.changed("unparsed", "parse", "resolved")
    checker.sent(0.0, Send(1, "heartbeat", 1, Request("POST", "/v1/agent/heartbeat/models/x")))
    checker.sent(0.0, Send(2, "control", 1, _event("training_failed", {})))
    checker.sent(0.0, Send(3, "metrics", 1, _event("epoch_end", {"epoch": 0, "loss": 1.0})))
    messages = [v.message for v in checker.violations if v.number == DIALECT]
    assert len(messages) == 3, messages
    assert "training_failed" in messages[1] and "'loss'" in messages[2]


def test_the_checker_sees_epochs_twice_out_of_order_and_an_early_complete():
    checker = _checker([0, 1, 2])
    checker.changed("unparsed", "parse", "resolved")
    ok = Response(200, {"received": True})
    first = Send(1, "metrics", 1, _event("epoch_end", {"epoch": 0, "metrics": {}}))
    checker.sent(0.0, first)
    checker.answered(0.0, first, ok)
    again = Send(2, "metrics", 1, _event("epoch_end", {"epoch": 0, "metrics": {}}))
    checker.sent(0.0, again)
    skip = Send(3, "metrics", 1, _event("epoch_end", {"epoch": 2, "metrics": {}}))
    checker.sent(0.0, skip)
    checker.answered(0.0, skip, ok)
    complete = Send(4, "final", 1, _event("training_complete", {"results": {}}))
    checker.sent(0.0, complete)
    found = [(v.number, v.message) for v in checker.violations]
    assert (2, "epoch_end of epoch 0 in a second operation") in found
    assert (DIALECT, "epoch 2 acknowledged before epochs [1]") in found
    assert any(n == DIALECT and "epochs [1] was acknowledged" in m for n, m in found)
    assert json.dumps(found)  # plain values, for the trace


def test_the_checker_follows_epochs_logged_between_acknowledgements():
    # The world's list grows while the session runs: epochs logged after an answer are
    # still held to the order, and one the hub refused for good leaves no gap.
    logged = [0]
    checker = _checker(logged)
    checker.changed("unparsed", "parse", "resolved")
    ok = Response(200, {"received": True})

    def answer(op, epoch, response=ok):
        send = Send(op, "metrics", 1, _event("epoch_end", {"epoch": epoch, "metrics": {}}))
        checker.sent(0.0, send)
        checker.answered(0.0, send, response)

    answer(1, 0)
    logged.extend([1, 2, 3])
    answer(2, 1, Response(422, {"message": "bad metrics"}))
    answer(3, 3)
    logged.append(4)
    answer(4, 2)
    answer(5, 4)
    found = [m for n, m in ((v.number, v.message) for v in checker.violations) if n == DIALECT]
    assert found == ["epoch 3 acknowledged before epochs [2]"]


@pytest.mark.slow  # 40 epochs over HTTP against injected faults
def test_a_long_platform_run_over_http_is_given_patience_for_its_epochs(monkeypatch):
    # One request an epoch, and faults that hold a second: a hostile run ends with
    # epochs queued, more the longer it ran. A patience that ignored the epochs (10 s,
    # here 2) failed every seed of 150 epochs with 'the session ended resumable'.
    monkeypatch.setattr("hubfsm.sim.http_world.PATIENCE", 2.0)
    result = run_http_seed(0, profile="hostile", epochs=40, protocol="platform")
    assert result.ok, [str(v) for v in result.violations]
    assert result.state == "done"
