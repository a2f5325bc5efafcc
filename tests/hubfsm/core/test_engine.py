import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubfsm.core.config import ChannelPolicies, CoreConfig, Limits
from hubfsm.core.engine import Core
from hubfsm.core.identifier import parse_identifier
from hubfsm.core.values import Send, Wait
from hubfsm.errors import AuthError, IllegalEventError, ModelNotFoundError, ModelTrainedError
from hubfsm.transport import FilePart, Response, TransportError

MODEL = "A" * 20
AGENT = "agentAgentAgent00001"
FILE = FilePart("last.pt", "w/last.pt", 10, "0" * 64)
BEST = FilePart("best.pt", "w/best.pt", 10, "1" * 64)


def ok(data=None):
    return Response(200, {"success": True, "message": "", "data": data or {}})


def loaded_core(now=0.0, **config):
    core = Core(CoreConfig(**config), rng=random.Random(0))
    core.open(parse_identifier(MODEL), now=now)
    send = core.poll(now)
    assert isinstance(send, Send) and send.request.method == "GET"
    assert send.request.path == f"/v1/models/{MODEL}"
    core.receive(send.op_id, ok({"id": MODEL, "status": "new"}), now=now)
    assert core.state == "loaded"
    return core


def training_core(now=0.0):
    core = loaded_core(now)
    core.start(now=now)
    hb = core.poll(now)
    assert isinstance(hb, Send) and hb.channel == "heartbeat"
    core.receive(hb.op_id, ok({"agentId": AGENT}), now=now)
    return core


def drive(core, now, answer=ok):
    """Answer every due request with ``answer``; return the sends."""
    sends = []
    for _ in range(100):
        action = core.poll(now)
        if isinstance(action, Wait):
            return sends, action
        sends.append(action)
        core.receive(action.op_id, answer(action), now=now)
    raise AssertionError("no end")


def test_load_a_trained_model_fails_with_a_clear_error():
    core = Core(rng=random.Random(0))
    core.open(parse_identifier(MODEL), now=0)
    send = core.poll(0)
    core.receive(send.op_id, ok({"id": MODEL, "status": "trained"}), now=0)
    assert core.state == "failed"
    assert isinstance(core.error, ModelTrainedError)
    assert "already trained" in str(core.error)


def test_create_from_a_local_file():
    core = Core(rng=random.Random(0))
    core.open(parse_identifier("yolov8n.yaml"), create={"meta": {"name": "x"}}, now=0)
    send = core.poll(0)
    assert send.request.method == "POST" and send.request.path == "/v1/models"
    assert send.request.idempotency_key
    core.receive(send.op_id, ok({"id": MODEL}), now=0)
    assert core.state == "created" and core.model_id == MODEL


@pytest.mark.parametrize("status,error", [(401, AuthError), (404, ModelNotFoundError)])
def test_a_fatal_answer_at_load_fails_without_retry(status, error):
    core = Core(rng=random.Random(0))
    core.open(parse_identifier(MODEL), now=0)
    send = core.poll(0)
    core.receive(send.op_id, Response(status, {"message": "no"}), now=0)
    assert core.state == "failed" and isinstance(core.error, error)
    assert core.poll(0) == Wait(None)


def test_heartbeats_every_300s_keep_the_agent_id():
    core = training_core()
    sends, wait = drive(core, 1.0)
    assert sends == [] and wait.until == 300.0
    sends, _ = drive(core, 300.0)
    assert [s.channel for s in sends] == ["heartbeat"]
    assert sends[0].request.json["agentId"] == AGENT


def test_metrics_are_coalesced_and_sent_at_most_every_3s():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.5)
    sends, _ = drive(core, 0.5)
    assert [s.request.json["metrics"] for s in sends] == [{"0": '{"loss": 1.0}'}]
    core.epoch_end(1, {"loss": 0.9}, now=1.0)
    core.epoch_end(2, {"loss": 0.8}, now=1.5)
    sends, wait = drive(core, 1.5)
    assert sends == [] and wait.until == 3.5
    sends, _ = drive(core, 3.5)
    assert list(sends[0].request.json["metrics"]) == ["1", "2"]


def test_a_retry_keeps_the_payload_and_key_and_new_epochs_wait():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    first = core.poll(0.0)
    core.receive(first.op_id, TransportError("timeout", "t"), now=0.1)
    core.epoch_end(1, {"loss": 0.9}, now=0.2)
    again = None
    for t in range(4, 200):
        action = core.poll(float(t))
        if isinstance(action, Send):
            again = action
            break
    assert again is not None and again.op_id == first.op_id and again.attempt == 2
    assert again.request == first.request
    core.receive(again.op_id, ok(), now=float(t))
    assert core.unacknowledged_epochs() == {1}


def test_retry_after_is_the_floor_of_the_next_wait():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    first = core.poll(0.0)
    core.receive(first.op_id, Response(429, {}, retry_after=42.0), now=0.0)
    action = core.poll(0.0)
    assert isinstance(action, Wait) and action.until >= 42.0
    assert isinstance(core.poll(action.until), Send)


def test_a_fatal_answer_keeps_the_data_and_stops_sending():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    send = core.poll(0.0)
    core.receive(send.op_id, Response(401, {"message": "bad key"}), now=0.0)
    assert core.state == "refused" and isinstance(core.error, AuthError)
    assert core.unacknowledged_epochs() == {0}


def test_giving_up_parks_the_operation_with_its_data():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    now = 0.0
    attempts = 0
    for _ in range(50):
        action = core.poll(now)
        if isinstance(action, Wait):
            now = action.until
            if now > 400:
                break
            continue
        if action.channel == "metrics":
            attempts += 1
        core.receive(action.op_id, Response(503), now=now)
    assert core.stats.give_ups >= 1
    assert core.unacknowledged_epochs() == {0}
    # a fresh round after the park: more attempts than one round allows
    assert attempts > ChannelPolicies().metrics.max_attempts


def _refused(action):
    return TransportError("refused", "nothing listens")


def _until_parked(core, now):
    """Refuse every request until the metrics channel gives up; the time it rests until."""
    for _ in range(50):
        sends, wait = drive(core, now, answer=_refused)
        if core.stats.give_ups:
            return now, wait.until
        now = wait.until
    raise AssertionError("the metrics channel never gave up")


def test_finishing_ends_the_rest_of_a_channel_that_gave_up():
    # The hub was lost during training and is back; the trainer now waits in finish()
    # and must not sit out the rest of a 60 s park for a hub that answers.
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    gave_up, rests_until = _until_parked(core, 0.0)
    assert rests_until - gave_up >= CoreConfig().limits.park
    core.finish(0, BEST, map50_95=0.5, now=gave_up + 1.0)
    sends, _ = drive(core, gave_up + 1.0)
    assert [s.channel for s in sends] == ["metrics", "final"] and core.state == "done"


def test_a_channel_that_gives_up_while_finishing_rests_no_longer_than_its_policys_cap():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    core.finish(0, BEST, map50_95=0.5, now=0.0)
    gave_up, rests_until = _until_parked(core, 0.0)
    assert rests_until - gave_up <= CoreConfig().policies.metrics.cap
    sends, _ = drive(core, rests_until)
    assert [s.channel for s in sends] == ["metrics", "final"] and core.state == "done"


def test_first_checkpoint_at_once_then_newest_after_900s():
    core = training_core()
    core.checkpoint(0, FILE, is_best=True, now=1.0)
    sends, _ = drive(core, 1.0)
    assert [s.channel for s in sends] == ["checkpoint"]
    assert sends[0].request.fields == {"epoch": "0", "type": "epoch", "isBest": "True"}
    core.checkpoint(1, FILE, is_best=False, now=2.0)
    core.checkpoint(2, FILE, is_best=False, now=3.0)
    sends, wait = drive(core, 3.0)
    assert not [s for s in sends if s.channel == "checkpoint"] and wait.until <= 902.0
    # The limit clears at 901; the last save interval (1 s) is given to newer weights.
    sends, _ = drive(core, 901.5)
    assert not [s for s in sends if s.channel == "checkpoint"]
    sends, _ = drive(core, 902.0)
    ckpts = [s for s in sends if s.channel == "checkpoint"]
    assert len(ckpts) == 1 and ckpts[0].request.fields["epoch"] == "2"


def test_a_save_after_the_limit_clears_replaces_the_held_one_and_goes_at_once():
    core = training_core()
    sent = []
    for epoch in range(30):
        now = 40.0 * epoch
        core.checkpoint(epoch, FILE, is_best=False, now=now)
        sends, _ = drive(core, now)
        sent += [(now, s.request.fields["epoch"]) for s in sends if s.channel == "checkpoint"]
    # Epoch 22 (880 s) is held when the limit clears at 900 s; epoch 23 comes at 920 s,
    # within one save interval, so it goes instead and epoch 22 never goes.
    assert sent == [(0.0, "0"), (920.0, "23")]


def test_a_held_checkpoint_goes_after_at_most_the_grace_without_newer_weights():
    core = training_core()
    core.checkpoint(0, FILE, is_best=False, now=0.0)
    drive(core, 0.0)
    core.checkpoint(1, FILE, is_best=False, now=600.0)
    sends, wait = drive(core, 600.0)
    assert not [s for s in sends if s.channel == "checkpoint"]
    # Saves are 600 s apart, but the wait past the limit is capped at 120 s.
    sends, _ = drive(core, 1019.0)
    assert not [s for s in sends if s.channel == "checkpoint"]
    sends, _ = drive(core, 1020.0)
    assert [s.request.fields["epoch"] for s in sends if s.channel == "checkpoint"] == ["1"]


def test_finish_flushes_metrics_then_uploads_final_then_stops_heartbeats():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    core.checkpoint(0, FILE, is_best=True, now=0.0)
    core.finish(0, BEST, map50_95=0.5, now=0.0)
    sends, wait = drive(core, 0.0)
    assert [s.channel for s in sends] == ["metrics", "final"]
    assert sends[1].request.fields == {"epoch": "0", "type": "final", "map": "0.5"}
    assert core.state == "done" and wait == Wait(None)
    assert core.poll(10_000.0) == Wait(None)


def test_finish_times_out_into_resumable():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    core.finish(0, BEST, map50_95=0.5, now=0.0, timeout=100.0)
    now = 0.0
    for _ in range(200):
        action = core.poll(now)
        if isinstance(action, Wait):
            if action.until is None:
                break
            now = action.until
            continue
        core.receive(action.op_id, Response(503), now=now)
    assert core.state == "resumable"
    assert core.pending() == {"metrics": 1, "checkpoint": 0, "final": 1}
    with pytest.raises(IllegalEventError):
        core.epoch_end(1, {}, now=now)


def test_a_final_upload_answered_past_the_deadline_leaves_the_session_resumable_at_once():
    # The request left before the deadline and its answer was lost after it: finish()
    # looks right after that answer, before any further poll, and must find it resumable.
    core = training_core()
    core.finish(0, BEST, map50_95=0.5, now=0.0, timeout=60.0)
    action = core.poll(59.0)
    assert isinstance(action, Send) and action.channel == "final"
    core.receive(action.op_id, TransportError("timeout", "answer lost"), now=90.0)
    assert core.state == "resumable"
    assert core.pending()["final"] == 1


def test_interrupt_stops_heartbeats_and_resume_restarts_them():
    core = training_core()
    core.interrupt(now=10.0)
    sends, wait = drive(core, 10_000.0)
    assert sends == [] and wait == Wait(None)
    core.resume(now=10_000.0)
    sends, _ = drive(core, 10_000.0)
    assert [s.channel for s in sends] == ["heartbeat"]


def test_limits_are_configurable():
    core = loaded_core(limits=Limits(metrics=10.0))
    core.start(now=0)
    drive(core, 0)
    core.epoch_end(0, {}, now=0)
    drive(core, 0)
    core.epoch_end(1, {}, now=1)
    _, wait = drive(core, 1)
    assert wait.until == 10.0


def test_numpy_like_scalars_are_encoded_as_numbers():
    from hubfsm.core.protocol import encode_metrics

    class Scalar:
        def item(self):
            return 0.5

    assert encode_metrics({"loss": Scalar(), "n": 3}) == '{"loss": 0.5, "n": 3}'
    assert encode_metrics({"odd": complex(1, 2)}) == '{"odd": "(1+2j)"}'


def test_retry_after_holds_back_every_channel_not_only_its_own():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    first = core.poll(0.0)
    core.receive(first.op_id, Response(429, {}, retry_after=200.0), now=150.0)
    # the heartbeat is due at 300 s, but the hub asked for quiet until 350 s
    action = core.poll(300.0)
    assert isinstance(action, Wait) and action.until == 350.0
    sends, _ = drive(core, 350.0)
    assert {s.channel for s in sends} == {"heartbeat", "metrics"}


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(0, 1e300), st.just(math.inf)))
def test_one_retry_after_holds_nothing_past_the_policys_maximum(retry_after):
    config = CoreConfig()
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    first = core.poll(0.0)
    core.receive(first.op_id, Response(429, {}, retry_after=retry_after), now=0.0)
    action = core.poll(0.0)
    # A metrics round that cannot wait it out rests, as long as honoured at most.
    longest = max(config.limits.park, config.policies.metrics.max_retry_after)
    assert isinstance(action, Wait) and action.until is not None
    assert min(retry_after, 300.0) <= action.until <= longest
    # Then the epoch goes (after the 3 s metrics limit, if the hold was shorter).
    now, sends = action.until, []
    while not sends:
        sends, wait = drive(core, now)
        assert now <= longest
        now = wait.until
    assert "metrics" in {s.channel for s in sends}


def test_finish_is_held_by_a_huge_retry_after_only_up_to_the_policys_maximum():
    core = training_core()
    core.finish(0, BEST, map50_95=0.5, now=0.0, timeout=3600.0)
    final = core.poll(0.0)
    assert final.channel == "final"
    core.receive(final.op_id, Response(429, {}, retry_after=1e9), now=0.0)
    action = core.poll(0.0)
    cap = CoreConfig().policies.final.max_retry_after
    assert isinstance(action, Wait) and action.until == cap
    sends, _ = drive(core, action.until)
    assert "final" in [s.channel for s in sends] and core.state == "done"


def test_a_scaled_config_scales_every_limit_and_policy():
    fast = CoreConfig().scaled(0.001)
    assert fast.limits == Limits(
        metrics=0.003, checkpoint=0.9, heartbeat=0.3, park=0.06, checkpoint_grace=0.12
    )
    assert fast.policies.final.deadline == pytest.approx(3.6)
    assert fast.policies.metrics.max_attempts == CoreConfig().policies.metrics.max_attempts


def test_the_final_flush_does_not_wait_out_the_metrics_limit():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    drive(core, 0.0)
    core.epoch_end(1, {"loss": 0.5}, now=0.5)
    _, wait = drive(core, 0.5)
    assert wait.until == 3.0  # while training, the 3 s limit holds
    core.finish(1, BEST, map50_95=0.5, now=0.6)
    sends, _ = drive(core, 0.6)
    assert [s.channel for s in sends] == ["metrics", "final"]
    assert core.state == "done"


def test_a_kept_checkpoint_upload_gives_way_to_newer_weights_kept_beside_it():
    from hubfsm.core import protocol
    from hubfsm.core.values import OpClosed, OpOpened, Saved

    core = training_core()
    core.schedule.durable = True
    kept = protocol.upload_checkpoint(MODEL, 0, FILE, is_best=False, key="kept-0")
    newer = FilePart("last.pt", "w/last-1.pt", 10, "2" * 64)
    core.restore(
        Saved(ops=(OpOpened("checkpoint", kept, 0),), checkpoint=(1, newer, False)), now=0.0
    )
    sends, wait = drive(core, 10.0)
    # Only the newer weights go, at once: not the old upload and then a 900 s wait.
    assert [s.request.file for s in sends if s.channel == "checkpoint"] == [newer]
    assert OpClosed("kept-0") in core.take_changes()
    assert core.pending()["checkpoint"] == 0


def test_a_kept_checkpoint_upload_of_the_newest_weights_is_sent_with_its_key():
    from hubfsm.core import protocol
    from hubfsm.core.values import OpOpened, Saved

    core = training_core()
    kept = protocol.upload_checkpoint(MODEL, 1, FILE, is_best=False, key="kept-1")
    core.restore(Saved(ops=(OpOpened("checkpoint", kept, 1),)), now=0.0)
    sends, _ = drive(core, 10.0)
    assert [s.request.idempotency_key for s in sends if s.channel == "checkpoint"] == ["kept-1"]


def test_the_final_key_follows_the_whole_body():
    # The key is made from the upload's content so a finish repeated with the same weights
    # is replayed; the mAP is sent too, so another mAP is another request with its own key.
    def final_key(map50_95):
        core = training_core()
        core.finish(0, BEST, map50_95=map50_95, now=0.0)
        sends, _ = drive(core, 0.0)
        (final,) = [s for s in sends if s.channel == "final"]
        return final.request.idempotency_key

    assert final_key(0.5) == final_key(0.5)
    assert final_key(0.5) != final_key(0.625)


def _watch_pending(core, method, channel):
    """Record what is pending on ``channel`` as the dialect builds ``method``'s request."""
    seen = []
    dialect = core.schedule.dialect

    class Watching:
        def __getattr__(self, name):
            return getattr(dialect, name)

    def build(*args, **kwargs):
        seen.append(core.pending()[channel])
        request = getattr(dialect, method)(*args, **kwargs)
        seen.append(core.pending()[channel])
        return request

    watching = Watching()
    setattr(watching, method, build)
    core.schedule.dialect = watching
    return seen


@pytest.mark.parametrize("solo", [False, True])
def test_an_epoch_on_its_way_into_a_request_still_counts_as_pending(solo):
    # A trainer's thread may read what is pending while the worker builds the request:
    # the epoch must be in the queue or in the operation at every instant.
    core = training_core()
    seen = _watch_pending(core, "metrics", "metrics")
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    core.epoch_end(1, {"loss": 0.5}, now=0.0)
    if solo:
        core.schedule.solo, core.schedule.unsent = core.schedule.unsent, {}
    send = core.poll(10.0)
    assert isinstance(send, Send) and send.channel == "metrics"
    assert seen and min(seen) == 2
    assert core.pending()["metrics"] == 2
    core.receive(send.op_id, ok(), now=10.0)
    assert core.pending()["metrics"] == (1 if solo else 0)


def test_a_checkpoint_on_its_way_into_a_request_still_counts_as_pending():
    core = training_core()
    seen = _watch_pending(core, "checkpoint", "checkpoint")
    core.checkpoint(0, FILE, is_best=False, now=0.0)
    send = core.poll(0.0)
    assert isinstance(send, Send) and send.channel == "checkpoint"
    assert seen == [1, 1] and core.pending()["checkpoint"] == 1
