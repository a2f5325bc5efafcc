"""What the hub's model record says to train: a :class:`TrainingPlan` (pure, no I/O).

The rules are those of ``ultralytics==8.2.0`` (``HUBTrainingSession._set_train_args``):

- a trained model is refused;
- a model with last weights (``has_last_weights``) is resumed: the train arguments are
  ``{"data": <record data>, "resume": True}`` and the model file is the ``resume`` URL;
- otherwise the train arguments are the record's ``train_args``, and the model file is
  the parent weights (``weights``) of a pretrained model, else the architecture (``cfg``);
- train arguments without ``data`` are an error: the dataset may still be processing.

Everything in the record is untrusted: a field of the wrong type is an error that names
the field, never a plan built on a guess.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from hubfsm.errors import HubError, ModelTrainedError

__all__ = ["PlanKind", "RecordError", "TrainingPlan", "plan_for_file", "plan_from_record"]

#: ``new`` trains the architecture from scratch, ``pretrained`` starts from the parent
#: weights, ``resume`` continues from the last epoch's weights.
PlanKind = Literal["new", "pretrained", "resume"]

#: The train arguments a new model's record keeps (ultralytics' names).
RECORD_ARGS = ("data", "epochs", "batch", "imgsz", "patience", "device", "cache")


class RecordError(HubError):
    """The model record cannot be turned into a training plan (the hub must be fixed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, channel="load")


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(mapping))


@attrs.frozen
class TrainingPlan:
    """What to train, as the hub's record says.

    Attributes:
        kind: ``new``, ``pretrained`` or ``resume``.
        train_args: The trainer's arguments (ultralytics' names), read-only.
        model_file: The architecture (``yolov8n.yaml``), or the URL of the weights to
            start from (parent weights, or the last epoch's weights on a resume).
        weights_url: The URL of the weights to download first; None for an architecture.
        resume_epoch: The first epoch a resume trains, when the record says which
            epoch the last weights are from; None otherwise.
    """

    kind: PlanKind
    train_args: Mapping[str, Any] = attrs.field(converter=_frozen)
    model_file: str
    weights_url: str | None = None
    resume_epoch: int | None = None

    @property
    def data(self) -> str | None:
        """The dataset (always there in a plan from a record; a local file may lack it)."""
        data = self.train_args.get("data")
        return None if data is None else str(data)

    @property
    def resumable(self) -> bool:
        """True when training continues from the last epoch's weights."""
        return self.kind == "resume"

    def to_json_dict(self) -> dict[str, Any]:
        """The plan as plain JSON values."""
        return {
            "kind": self.kind,
            "train_args": dict(self.train_args),
            "model_file": self.model_file,
            "weights_url": self.weights_url,
            "resume_epoch": self.resume_epoch,
        }


def _url(record: Mapping[str, Any], field: str, what: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise RecordError(f"the model record says {what} but its {field!r} gives no URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RecordError(f"the model record's {field!r} is not an http(s) URL")
    return value


def _data(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(
            "the model record names no dataset: it may still be processing; "
            "wait a minute and try again"
        )
    return value


_EPOCH_FILE = re.compile(r"^epoch-(\d{1,9})\.pt$")


def _resume_epoch(record: Mapping[str, Any], url: str) -> int | None:
    """The epoch after the last weights' epoch, when the hub says which epoch that is.

    The record's ``checkpoint_epoch`` (the local hub's) says so; else the weights' file
    name, which on the real service is ``epoch-<k>.pt``. ``last_epoch`` does not: it is
    the latest epoch the hub heard of, and the checkpoint may be older.
    """
    value = record.get("checkpoint_epoch")
    # bool is an int subclass; a flag is not an epoch
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value + 1
    match = _EPOCH_FILE.match(urlsplit(url).path.rpartition("/")[2])
    return int(match.group(1)) + 1 if match else None


def plan_from_record(record: Mapping[str, Any]) -> TrainingPlan:
    """Turn a model record (``GET /v1/models/{id}`` data) into a training plan.

    Raises:
        ModelTrainedError: The model is trained already.
        RecordError: The record lacks what the plan needs (no dataset yet, no URL for
            the weights it says it has, train arguments that are not an object).
    """
    model = record.get("id", "?")
    if record.get("status") == "trained":
        raise ModelTrainedError(
            f"model {model} is already trained; create a new model to train again",
            channel="load",
        )
    if record.get("has_last_weights") is True:
        url = _url(record, "resume", "it has last weights")
        return TrainingPlan(
            kind="resume",
            train_args={"data": _data(record.get("data")), "resume": True},
            model_file=url,
            weights_url=url,
            resume_epoch=_resume_epoch(record, url),
        )
    args = record.get("train_args")
    if not isinstance(args, Mapping):
        raise RecordError(
            "the model record has no train_args object: the dataset may still be "
            "processing; wait a minute and try again"
        )
    if "data" not in args:
        _data(None)
    train_args = {str(k): v for k, v in args.items()}
    train_args["data"] = _data(train_args["data"])
    if record.get("is_pretrained") is True:
        url = _url(record, "weights", "the model is pretrained")
        return TrainingPlan(
            kind="pretrained", train_args=train_args, model_file=url, weights_url=url
        )
    cfg = record.get("cfg")
    if not isinstance(cfg, str) or not cfg.strip():
        raise RecordError("the model record names no architecture ('cfg')")
    return TrainingPlan(kind="new", train_args=train_args, model_file=cfg)


def plan_for_file(filename: str, train_args: Mapping[str, Any]) -> TrainingPlan:
    """The plan of a model created from a local file: train it with the given arguments.

    A ``.pt`` starts from those weights (``pretrained``), a ``.yaml`` from scratch.
    """
    kind: PlanKind = "pretrained" if filename.lower().endswith(".pt") else "new"
    return TrainingPlan(kind=kind, train_args=dict(train_args), model_file=filename)
