"""A wrong call fails on the call, saying what to do, and costs the run nothing.

Before, an epoch that was no whole number from 0 passed the call: the outbox could not
store it, the hub rejected its metrics, and ``finish`` (whose epoch defaults to the
last one logged) had the final weights rejected too. A NaN mAP50-95 had the final
weights rejected; a None one left ``finish`` waiting out its whole timeout. A call the
state does not allow named the machine's event, not what to do.
"""

import math
import time

import pytest

import hubfsm
from hubfsm.runtime.opener import NullSession
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


class Index:
    """An integer of another type (numpy's, torch's): it has ``__index__``."""

    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


def session(hub):
    return hubfsm.Session(new_model(hub), transport=InMemoryTransport(hub, KEY), config=FAST)


def best(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"best weights")
    return path


@pytest.mark.parametrize(
    "epoch,error,says",
    [
        (-1, ValueError, "epoch -1 is out of range: epochs count from 0"),
        (10**12, ValueError, "epoch 1000000000000 is out of range"),
        (2**70, ValueError, "epoch 11805916207174113034.* is out of range"),
        (4.0, TypeError, "epoch 4.0 is a float; pass the epoch as an int"),
        ("3", TypeError, "epoch '3' is a str"),
        (True, TypeError, "epoch True is a bool"),
    ],
)
def test_an_epoch_the_hub_cannot_take_is_refused_on_the_call(hub, tmp_path, epoch, error, says):
    with session(hub) as s:
        s.log_metrics({"loss": 1.0}, epoch=0)
        with pytest.raises(error, match=f"^log_metrics\\(\\): {says}"):
            s.log_metrics({"loss": 0.5}, epoch=epoch)
        with pytest.raises(error, match=f"^save_checkpoint\\(\\): {says}"):
            s.save_checkpoint(best(tmp_path), epoch=epoch)
        with pytest.raises(error, match=f"^finish\\(\\): {says}"):
            s.finish(best(tmp_path), epoch=epoch)
        # Nothing of the refused calls was kept, and the run still ends as it should.
        s.log_metrics({"loss": 0.25}, epoch=Index(1))
        s.finish(best(tmp_path), map50_95=0.3)
        assert s.state == "done"
        assert s.rejected() == []
    assert [row["epoch"] for row in hub.metrics(s.model_id)] == [0, 1]
    assert hub.record(s.model_id)["status"] == "trained"


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_a_score_that_is_no_finite_number_still_delivers_the_final_weights(
    hub, tmp_path, score
):
    with session(hub) as s:
        s.log_metrics({"loss": 1.0})
        s.finish(best(tmp_path), map50_95=score)
        assert s.state == "done"
    assert hub.record(s.model_id)["has_best_weights"]


def test_a_score_that_is_no_number_is_refused_at_once(hub, tmp_path):
    with session(hub) as s:
        began = time.monotonic()
        with pytest.raises(TypeError, match="map50_95 must be a number .* not a NoneType"):
            s.finish(best(tmp_path), map50_95=None, timeout=30.0)
        assert time.monotonic() - began < 5.0
        s.finish(best(tmp_path), map50_95="0.4")  # what float() takes is taken
        assert s.state == "done"


def test_a_call_the_state_does_not_allow_says_what_to_do(hub, tmp_path):
    s = session(hub)
    try:
        with pytest.raises(hubfsm.IllegalEventError, match=r"call start\(\) before log_metrics"):
            s.log_metrics({"loss": 1.0})
        s.start()
        with pytest.raises(hubfsm.IllegalEventError, match="started already"):
            s.start()
        s.finish(best(tmp_path))
        with pytest.raises(hubfsm.IllegalEventError, match="a trained model does not train again"):
            s.log_metrics({"loss": 1.0})
    finally:
        s.close()
    closed = session(hub)
    closed.start()
    closed.close()
    with pytest.raises(hubfsm.IllegalEventError, match=r"closed.*`hubfsm sync`") as info:
        closed.save_checkpoint(best(tmp_path), epoch=0)
    assert (info.value.state, info.value.event) == ("resumable", "checkpoint")


def test_other_ranks_refuse_the_epoch_rank_0_refuses(tmp_path):
    null = NullSession(1)
    with pytest.raises(ValueError, match="out of range"):
        null.log_metrics({"loss": 1.0}, epoch=-1)
    with pytest.raises(TypeError, match="is a float"):
        null.save_checkpoint(best(tmp_path), epoch=1.5)
    with pytest.raises(TypeError, match="map50_95"):
        null.finish(best(tmp_path), map50_95=None)
    null.log_metrics({"loss": 1.0}, epoch=Index(2))


def test_weights_that_are_a_directory_are_refused_on_the_call(hub, tmp_path):
    # Before, a checkpoint offer of a directory was taken, and dropped later with a
    # warning from the worker; finish() failed only once the worker had tried.
    with session(hub) as s:
        with pytest.raises(IsADirectoryError, match="weights must be a file, not a directory"):
            s.save_checkpoint(tmp_path, epoch=0)
        assert s.pending()["checkpoint"] == 0
        with pytest.raises(IsADirectoryError, match="weights must be a file"):
            s.finish(tmp_path)
        assert s.state == "training"
        s.finish(best(tmp_path))
        assert s.state == "done"


def test_a_keyword_that_is_no_option_says_where_it_belongs(hub):
    transport = InMemoryTransport(hub, KEY)
    with pytest.raises(TypeError, match=r"'epochs'; a training argument goes in train_args="):
        hubfsm.Session("yolov8n.yaml", transport=transport, epochs=3)
    with pytest.raises(TypeError, match=r"'api_url'; did you mean 'api_root'\?"):
        hubfsm.Session("yolov8n.yaml", transport=transport, api_url="http://127.0.0.1:1")


def test_metrics_that_are_no_mapping_are_refused_naming_what_they_are(hub):
    # Before: AttributeError: 'list' object has no attribute 'items'.
    with session(hub) as s:
        with pytest.raises(TypeError, match=r"metrics must be a mapping .* not a list"):
            s.log_metrics([("loss", 1.0)])
        assert s.pending()["metrics"] == 0


def test_a_model_file_may_be_given_as_a_path(hub, tmp_path):
    # Before: AttributeError: 'PosixPath' object has no attribute 'strip' (open() took it).
    s = hubfsm.Session(tmp_path / "yolov8n.yaml", transport=InMemoryTransport(hub, KEY),
                       config=FAST, train_args={"data": "coco8.yaml"})
    try:
        assert s.state == "created" and hub.record(s.model_id)["cfg"] == "yolov8n.yaml"
    finally:
        s.close()
