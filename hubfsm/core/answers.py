"""What the hub's answers say: the model opened, what its record says to train, the errors.

Pure functions of the answer and the request it was about. What an answer *does* (retry,
set a record aside, stop heartbeats, stop sending) is the machine's table
(:data:`hubfsm.core.machine.ANSWERS`); this module only reads and words it.

What the hub's model record says to train is a :class:`TrainingPlan`, by the rules of
``ultralytics==8.2.0`` (``HUBTrainingSession._set_train_args``):

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

from hubfsm.core import protocol
from hubfsm.core.platform import PLATFORM
from hubfsm.core.protocol import Dialect, Opened
from hubfsm.core.values import Create, Load, Op
from hubfsm.errors import (
    AuthError,
    HubError,
    HubUnavailableError,
    ModelNotFoundError,
    ModelTrainedError,
)
from hubfsm.transport import Outcome, Response, TransportError


def opened(
    dialect: Dialect,
    purpose: Load | Create,
    response: Response,
    *,
    model_id: str | None,
    ours: bool,
) -> Opened:
    """What a successful answer to the opening request names.

    Args:
        dialect: The dialect spoken.
        purpose: What the opening asked: load ``model_id``, or create a model.
        response: The answer.
        model_id: The model a load named.
        ours: The final weights of this model are ours to send: an earlier session of
            ours may have trained it (its final upload landed before a crash).

    Raises:
        HubError: The answer names no model, or one that cannot be trained again.
    """
    data = response.data
    if dialect is PLATFORM:
        # The id names the outbox directory: PLATFORM.opened checks it is no path.
        return PLATFORM.opened(response, model_id=model_id if isinstance(purpose, Load) else None)
    if isinstance(purpose, Create):
        # The id names the outbox directory: a hub must never choose a path.
        return Opened(
            protocol.hub_id(data.get("id"), what="model id", response=response, channel="create")
        )
    protocol.check_record(data, model_id, response=response)
    assert model_id is not None  # a load names its model
    # Our own final upload may have landed before a crash: its kept operation will be
    # confirmed by the hub's idempotent replay, or refused with 409.
    if data.get("status") == "trained" and not ours:
        raise ModelTrainedError(
            f"model {model_id} is already trained; create a new model to train again",
            status=response.status,
            channel="load",
        )
    return Opened(model_id)


def agent_id(response: Response) -> str | None:
    """The agent id a heartbeat's answer gives, if it gives one.

    Raises:
        HubProtocolError: It gives one that is not a hub id.
    """
    value = response.data.get("agentId")
    if value is None:
        return None
    return protocol.hub_id(value, what="agent id", response=response, channel="heartbeat")


def opening_error(op: Op, response: Response, model_id: str | None) -> HubError:
    """The error of a refused load or create: the session never opened."""
    status = response.status
    hub_says = f": {response.message}" if response.message else ""
    if status in (401, 403):
        return AuthError(
            f"the hub refused the API key ({status}) on {what(op)}{hub_says}",
            status=status,
            channel=op.channel,
        )
    if status in (404, 405) and model_id is None:
        # Making a model names none: the hub has no such route, so the root is wrong.
        return HubError(
            f"the hub answered {what(op)} with {status}{hub_says}; check the API root "
            f"{response.origin or '(ULTRALYTICS_HUB_API or ULTRALYTICS_PLATFORM_URL)'}",
            status=status,
            channel=op.channel,
        )
    if status == 404:
        return ModelNotFoundError(
            f"model {model_id} not found on the hub{hub_says}",
            status=status,
            channel=op.channel,
        )
    if status == 409:
        return ModelTrainedError(
            f"model {model_id} is already trained{hub_says}",
            status=status,
            channel=op.channel,
        )
    return HubError(
        f"the hub rejected {what(op)} with {status}{hub_says}",
        status=status,
        channel=op.channel,
    )


def refusal_error(op: Op, response: Response, model_id: str | None) -> HubError:
    """The error of a refusal that stopped all sending after the model was opened."""
    channel = op.channel
    status = response.status
    asked = what(op)
    hub_says = f": {response.message}" if response.message else ""
    if status in (401, 403):
        return AuthError(
            f"the hub refused the API key ({status}) on {asked}{hub_says}",
            status=status,
            channel=channel,
        )
    if 300 <= status < 400:
        return HubError(
            f"the hub answered {asked} with a redirect ({status}), which is never "
            f"followed with the key; check the API root{hub_says}",
            status=status,
            channel=channel,
        )
    if status == 404:
        return ModelNotFoundError(
            f"model {model_id} not found on the hub ({status}) on {asked}{hub_says}",
            status=status,
            channel=channel,
        )
    if status == 409:
        return ModelTrainedError(
            f"model {model_id} is already trained ({status}) on {asked}{hub_says}",
            status=status,
            channel=channel,
        )
    return HubError(
        f"the hub refused {asked} with {status}{hub_says}",
        status=status,
        channel=channel,
    )


def rejected_final_error(op: Op, response: Response) -> HubError:
    """The error of final weights the hub refused as a payload (400/413/422)."""
    return HubError(
        f"the hub rejected the final weights ({response.status}) on {what(op)}"
        + (f": {response.message}" if response.message else ""),
        status=response.status,
        channel=op.channel,
    )


def unreachable_error(outcome: TransportError) -> HubUnavailableError:
    """Opening failed on a hub that never answered: say what to check."""
    where = outcome.url or "the API root"
    if outcome.kind == "tls":
        hint = (
            f"check the scheme of {where}: https:// for a hub that speaks TLS, http:// "
            "for one that does not (such as the local hub)"
        )
    elif outcome.kind in ("url", "dns"):
        hint = f"check the API root {where}"
    else:
        hint = f"is the hub at {where} running?"
    return HubUnavailableError(f"cannot reach the hub ({outcome}); {hint}")


def failure_text(outcome: Outcome) -> str:
    """``503 busy`` or ``timeout: ...``: the last failure, as ``hubfsm status`` shows it."""
    if isinstance(outcome, Response):
        return f"{outcome.status} {outcome.message}".rstrip()
    return f"{outcome.kind}: {outcome}"


def what(op: Op) -> str:
    """``POST /v1/models/...``: the request an answer was about."""
    if op.request.method == "PUT":
        return "PUT to the signed upload URL"  # its query is a credential
    return f"{op.request.method} {op.request.path}"


# -- what a model record says to train ---------------------------------------------


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
