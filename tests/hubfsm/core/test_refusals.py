"""What each kind of refusal does to the data, channel by channel, in the core alone."""

import pytest

from hubfsm.core.values import MetricsQueued, OpClosed, Refusal, Rejected, Send, Wait
from hubfsm.errors import AuthError, HubError, ModelNotFoundError, ModelTrainedError
from hubfsm.transport import Response

from .test_engine import BEST, FILE, drive, ok, training_core


def refuse(status, message="refused"):
    return Response(status, {"success": False, "message": message, "data": {}})


def poll_send(core, now):
    action = core.poll(now)
    assert isinstance(action, Send), action
    return action


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_a_refused_heartbeat_stops_heartbeats_and_nothing_else(status):
    core = training_core()
    notices = []
    core.notify = lambda event, fields: notices.append((event, fields))
    hb = poll_send(core, 300.0)
    assert hb.channel == "heartbeat"
    core.receive(hb.op_id, refuse(status, "no such agent"), now=300.0)
    assert core.state == "training" and core.error is None
    assert core.heartbeat_refusal == f"{status} no such agent"
    assert [event for event, _ in notices] == ["heartbeat.stopped"]
    # Metrics and weights go on; no heartbeat is ever sent again, even after a resume.
    for epoch in range(3):
        core.epoch_end(epoch, {"loss": 1.0}, now=301.0 + epoch * 10)
    core.checkpoint(2, FILE, is_best=True, now=330.0)
    core.interrupt(now=331.0)
    core.resume(now=332.0)
    sends, _ = drive(core, 2000.0)
    assert {s.channel for s in sends} == {"metrics", "checkpoint"}
    sends, _ = drive(core, 5000.0)
    assert not [s for s in sends if s.channel == "heartbeat"]
    core.finish(2, BEST, map50_95=0.5, now=5000.0)
    sends, _ = drive(core, 5000.0)
    assert [s.channel for s in sends] == ["final"] and core.state == "done"


def test_a_refused_metrics_batch_is_split_once_and_only_the_bad_epoch_is_set_aside():
    core = training_core()
    core.schedule.durable = True
    notices = []
    core.notify = lambda event, fields: notices.append(event)
    for epoch in range(4):
        core.epoch_end(epoch, {"loss": 1.0 / (epoch + 1)}, now=1.0)
    batch = poll_send(core, 10.0)
    assert batch.channel == "metrics" and len(batch.request.json["metrics"]) == 4
    core.take_changes()
    core.receive(batch.op_id, refuse(400, "epoch 2 is bad"), now=10.0)
    changes = core.take_changes()
    # The batch's epochs go back to the durable queue before its operation ends.
    assert [type(c) for c in changes] == [MetricsQueued] * 4 + [OpClosed]
    assert core.unacknowledged_epochs() == {0, 1, 2, 3}
    now, singles = 10.0, []
    for _ in range(20):
        action = core.poll(now)
        if isinstance(action, Wait):
            if action.until is None or action.until > 200:
                break
            now = action.until
            continue
        if action.channel == "heartbeat":
            core.receive(action.op_id, ok(), now=now)
            continue
        (epoch,) = (int(e) for e in action.request.json["metrics"])
        singles.append(epoch)
        answer = refuse(400, "epoch 2 is bad") if epoch == 2 else ok()
        core.receive(action.op_id, answer, now=now)
    assert singles == [0, 1, 2, 3]  # each once, in order, under the metrics limit
    assert core.state == "training" and core.error is None
    assert core.unacknowledged_epochs() == set() and core.rejected_epochs() == {2}
    (record,) = core.rejected
    assert record.describe() == "metrics of epoch 2: 400 epoch 2 is bad"
    assert any(isinstance(c, Rejected) and c.epochs == (2,) for c in core.take_changes())
    assert notices == ["metrics.batch_refused", "record.rejected"]
    assert core.stats.acknowledged_epochs == 3


def test_a_refused_checkpoint_is_set_aside_and_the_next_one_goes():
    core = training_core()
    core.checkpoint(0, FILE, is_best=False, now=1.0)
    first = poll_send(core, 1.0)
    core.receive(first.op_id, refuse(422, "not a model file"), now=1.0)
    assert core.state == "training"
    assert [r.describe() for r in core.rejected] == ["checkpoint of epoch 0: 422 not a model file"]
    assert core.pending()["checkpoint"] == 0
    core.checkpoint(1, FILE, is_best=True, now=950.0)
    sends, _ = drive(core, 950.0)
    assert [s.channel for s in sends if s.channel != "heartbeat"] == ["checkpoint"]


def test_rejected_final_weights_stop_the_session_with_the_answer():
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=1.0)
    core.finish(0, BEST, map50_95=0.5, now=2.0)
    sends, _ = drive(
        core, 2.0, answer=lambda s: refuse(400, "bad map") if s.channel == "final" else ok()
    )
    assert [s.channel for s in sends] == ["metrics", "final"]
    assert core.state == "refused"
    assert isinstance(core.error, HubError) and core.error.status == 400
    assert "final weights (400)" in str(core.error) and "bad map" in str(core.error)
    assert core.pending() == {"metrics": 0, "checkpoint": 0, "final": 0}
    assert [r.channel for r in core.rejected] == ["final"]


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, AuthError, "refused the API key (401)"),
        (403, AuthError, "refused the API key (403)"),
        (404, ModelNotFoundError, "not found on the hub (404)"),
        (409, ModelTrainedError, "already trained (409)"),
        (302, HubError, "redirect (302)"),
        (307, HubError, "redirect (307)"),
    ],
)
def test_a_stopping_refusal_keeps_recording_every_event_and_sends_nothing(status, error, words):
    core = training_core()
    core.schedule.durable = True
    core.epoch_end(0, {"loss": 1.0}, now=1.0)
    send = poll_send(core, 10.0)
    core.take_changes()
    core.receive(send.op_id, refuse(status, "go away"), now=10.0)
    assert core.state == "refused" and type(core.error) is error
    assert words in str(core.error) and "go away" in str(core.error)
    assert f"{send.request.method} {send.request.path}" in str(core.error)
    assert [c for c in core.take_changes() if isinstance(c, Refusal)] == [Refusal(str(core.error))]
    # The trainer goes on: every event is accepted and kept durably; nothing goes out.
    for epoch in range(1, 11):
        core.epoch_end(epoch, {"loss": 1.0}, now=10.0 + epoch)
    core.checkpoint(10, FILE, is_best=True, now=21.0)
    core.finish(10, BEST, map50_95=0.5, now=22.0)
    core.interrupt(now=23.0)
    assert core.poll(10_000.0) == Wait(None)
    assert core.state == "refused"
    assert core.unacknowledged_epochs() == set(range(11))
    assert core.pending() == {"metrics": 11, "checkpoint": 0, "final": 1}
    queued = {c.epoch for c in core.take_changes() if isinstance(c, MetricsQueued)}
    assert queued == set(range(1, 11))


@pytest.mark.parametrize("status", [401, 403, 301])
def test_a_heartbeat_refused_for_the_key_or_a_redirect_stops_everything(status):
    core = training_core()
    core.epoch_end(0, {"loss": 1.0}, now=299.0)
    hb = core.poll(300.0)
    assert hb.channel == "heartbeat"
    core.receive(hb.op_id, refuse(status), now=300.0)
    assert core.state == "refused"
    assert core.poll(300.0) == Wait(None)
    assert core.unacknowledged_epochs() == {0}


def test_a_later_delivery_clears_the_kept_refusal():
    from hubfsm.core.values import Saved

    core = training_core()
    core.schedule.durable = True
    core.restore(Saved(metrics=((0, "{}"),), refusal="AuthError: ..."), now=0.0)
    sends, _ = drive(core, 10.0)
    assert [s.channel for s in sends] == ["metrics"]
    assert Refusal(None) in core.take_changes()
