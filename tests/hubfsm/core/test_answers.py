"""The record -> training plan rules (those of ultralytics 8.2.0's HUBTrainingSession)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubfsm.core.answers import RecordError, TrainingPlan, plan_for_file, plan_from_record
from hubfsm.errors import ModelTrainedError

RESUME = "http://127.0.0.1:9/models/AAAAAAAAAAAAAAAAAAAA/weights/last.pt?expires=9&sig=x"
PARENT = "https://storage.example/yolov8n.pt"


def record(**fields):
    base = {
        "id": "A" * 20,
        "status": "new",
        "has_last_weights": False,
        "is_pretrained": False,
        "cfg": "yolov8n.yaml",
        "data": "https://storage.example/datasets/coco8.zip",
        "resume": None,
        "weights": None,
        "train_args": {"data": "https://storage.example/datasets/coco8.zip", "epochs": 3},
    }
    base.update(fields)
    return base


def test_a_new_model_trains_its_architecture_with_the_records_arguments():
    plan = plan_from_record(record())
    assert plan.kind == "new" and not plan.resumable
    assert plan.model_file == "yolov8n.yaml" and plan.weights_url is None
    assert dict(plan.train_args) == {"data": record()["data"], "epochs": 3}
    assert plan.resume_epoch is None


def test_a_pretrained_model_starts_from_the_parent_weights():
    plan = plan_from_record(record(is_pretrained=True, weights=PARENT))
    assert plan.kind == "pretrained"
    assert plan.model_file == plan.weights_url == PARENT
    assert plan.train_args["epochs"] == 3


def test_a_model_with_last_weights_resumes_with_data_and_resume_only():
    plan = plan_from_record(
        record(has_last_weights=True, resume=RESUME, checkpoint_epoch=4, is_pretrained=True)
    )
    assert plan.kind == "resume" and plan.resumable
    assert dict(plan.train_args) == {"data": record()["data"], "resume": True}
    assert plan.model_file == plan.weights_url == RESUME
    assert plan.resume_epoch == 5


@pytest.mark.parametrize("epoch", [None, -1, "4", True, 2.0])
def test_the_resume_epoch_is_none_unless_the_record_gives_a_plain_epoch(epoch):
    fields = {"has_last_weights": True, "resume": RESUME, "checkpoint_epoch": epoch}
    # The latest epoch the hub heard of is not the weights' epoch.
    assert plan_from_record(record(**fields, last_epoch=9)).resume_epoch is None


def test_the_resume_epoch_can_come_from_the_weights_file_name():
    url = "https://storage.example/m/epoch-74.pt?X-Goog-Signature=abc"
    assert plan_from_record(record(has_last_weights=True, resume=url)).resume_epoch == 75
    url = "https://storage.example/m/epoch-74.pt.bak"
    assert plan_from_record(record(has_last_weights=True, resume=url)).resume_epoch is None


def test_a_trained_model_is_refused():
    with pytest.raises(ModelTrainedError, match="already trained"):
        plan_from_record(record(status="trained", has_last_weights=True, resume=RESUME))


@pytest.mark.parametrize(
    "fields",
    [
        {"train_args": {"epochs": 3}},
        {"train_args": {"data": None}},
        {"train_args": {"data": "  "}},
        {"train_args": None},
        {"train_args": ["data"]},
        {"has_last_weights": True, "resume": RESUME, "data": None},
    ],
)
def test_no_dataset_is_an_error_that_says_it_may_still_be_processing(fields):
    with pytest.raises(RecordError, match="processing"):
        plan_from_record(record(**fields))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"has_last_weights": True, "resume": None}, "resume"),
        ({"has_last_weights": True, "resume": "file:///etc/passwd"}, "resume"),
        ({"is_pretrained": True, "weights": 7}, "weights"),
        ({"is_pretrained": True, "weights": "ftp://x/y.pt"}, "weights"),
    ],
)
def test_weights_the_record_promises_need_an_http_url(fields, field):
    with pytest.raises(RecordError, match=field):
        plan_from_record(record(**fields))


def test_no_architecture_is_an_error():
    with pytest.raises(RecordError, match="cfg"):
        plan_from_record(record(cfg=None))


def test_the_plan_is_frozen_and_its_arguments_read_only():
    source = record()
    plan = plan_from_record(source)
    source["train_args"]["epochs"] = 99  # the plan took a copy
    assert plan.train_args["epochs"] == 3
    with pytest.raises(TypeError):
        plan.train_args["epochs"] = 1  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.kind = "resume"  # type: ignore[misc]
    assert plan.to_json_dict()["train_args"] == {"data": record()["data"], "epochs": 3}


def test_a_local_file_plans_from_its_own_arguments():
    assert plan_for_file("yolov8n.yaml", {"data": "coco8.yaml"}).kind == "new"
    plan = plan_for_file("runs/yolov8n.PT", {})
    assert plan.kind == "pretrained" and plan.data is None and plan.weights_url is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)
fields = st.sampled_from(
    [
        "status",
        "has_last_weights",
        "is_pretrained",
        "cfg",
        "data",
        "resume",
        "weights",
        "train_args",
        "checkpoint_epoch",
        "id",
    ]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        fields, json_values | st.just(RESUME) | st.just("trained") | st.just({"data": "d"})
    )
)
def test_any_record_gives_a_consistent_plan_or_a_clear_error(fields):
    source = record(**fields)
    try:
        plan = plan_from_record(source)
    except ModelTrainedError:
        assert source["status"] == "trained"
        return
    except RecordError as exc:
        assert str(exc)
        return
    assert isinstance(plan, TrainingPlan)
    assert source.get("status") != "trained"
    assert isinstance(plan.data, str) and plan.data.strip()
    if source.get("has_last_weights") is True:
        assert plan.kind == "resume" and plan.train_args == {"data": plan.data, "resume": True}
        assert plan.model_file == source["resume"]
    elif source.get("is_pretrained") is True:
        assert plan.kind == "pretrained" and plan.model_file == source["weights"]
        assert dict(plan.train_args) == dict(source["train_args"])
    else:
        assert plan.kind == "new" and plan.model_file == source["cfg"]
        assert plan.weights_url is None
    if plan.weights_url is not None:
        assert plan.weights_url.startswith(("http://", "https://"))
