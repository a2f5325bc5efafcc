"""What hubfsm reads from ultralytics' objects, and the markers it leaves on them.

The callbacks (:mod:`hubfsm.integrations.ultralytics_callbacks`) and the stand-in session
(:mod:`hubfsm.integrations.ultralytics_session`) use these; they are apart so that what
depends on ultralytics' names (its events, its trainer's and settings' attributes, and
hub-sdk's, for a session the trainer carries) is in one place.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

#: Every event ultralytics' HUB callbacks handle, plus the start of training's setup.
EVENTS = (
    "on_pretrain_routine_start",
    "on_pretrain_routine_end",
    "on_train_start",
    "on_train_epoch_end",
    "on_fit_epoch_end",
    "on_model_save",
    "on_train_end",
    "teardown",
    "on_val_start",
    "on_predict_start",
    "on_export_start",
)

#: The metric sent as the final weights' ``map``.
MAP_KEY = "metrics/mAP50-95(B)"

#: The trainer arguments that go into a new model's record on the hub.
CREATE_ARGS = ("data", "epochs", "batch", "imgsz", "patience", "device", "cache")

_MISSING = object()


def create_args(source: Any, *, drop_none: bool = False) -> dict[str, Any]:
    """The :data:`CREATE_ARGS` that ``source`` holds, for a new model's record.

    Args:
        source: A dict (the keywords given to ``Model.train``) or a namespace (ultralytics'
            ``IterableSimpleNamespace`` of arguments); None holds nothing.
        drop_none: Leave out the arguments that are None (a trainer's resolved arguments
            name every argument, the unset ones as None).
    """
    args: dict[str, Any] = {}
    for name in CREATE_ARGS:
        if isinstance(source, Mapping):
            value = source.get(name, _MISSING)
        else:
            value = getattr(source, name, _MISSING)
        if value is not _MISSING and not (drop_none and value is None):
            args[name] = value
    return args


def every_arg(source: Any, *, drop_none: bool = False) -> dict[str, Any]:
    """Every argument ``source`` holds: a dict's items or a namespace's attributes.

    A hubfsm hub keeps them all (the HUB v1 wire carries the :data:`CREATE_ARGS` only).

    Args:
        source: A dict (the keywords given to ``Model.train``) or a namespace (ultralytics'
            ``IterableSimpleNamespace`` of arguments); None holds nothing.
        drop_none: Leave out the arguments that are None.
    """
    if source is None:
        return {}
    if isinstance(source, Mapping):
        items = list(source.items())
    else:
        try:
            items = list(vars(source).items())
        except TypeError:  # no __dict__: read the names the record needs, at least
            return create_args(source, drop_none=drop_none)
    return {
        str(k): v for k, v in items if not str(k).startswith("_") and not (drop_none and v is None)
    }


def settings_key() -> str | None:
    """The API key in ultralytics' settings (``yolo login``), if ultralytics is loaded."""
    # Read only when ultralytics is already imported (a trainer is one of its objects):
    # importing it costs seconds and probes the network.
    utils = sys.modules.get("ultralytics.utils")
    settings = getattr(utils, "SETTINGS", None)
    try:
        key = settings.get("api_key") if settings is not None else None
    except Exception:  # a settings object of another shape: no key from it
        return None
    return key if isinstance(key, str) and key else None


def model_info(trainer: Any) -> Mapping[str, Any]:
    """``ultralytics.utils.torch_utils.model_info_for_loggers(trainer)``, or ``{}``.

    Only when ultralytics is already loaded, as it is whenever its trainer runs: this
    package does not depend on it, and importing it costs seconds and probes the network.
    """
    if "ultralytics" not in sys.modules:
        return {}
    try:
        torch_utils = importlib.import_module("ultralytics.utils.torch_utils")
    except ImportError:
        return {}
    info: Mapping[str, Any] = torch_utils.model_info_for_loggers(trainer)
    return info


class Detached:
    """Marks ``trainer.hub_session`` as taken over by hubfsm.

    Falsy, so ultralytics' callbacks skip it; not None, so 8.3's callbacks do not open a
    session of their own.
    """

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<hub session detached by hubfsm>"


class Claimed:
    """Marks ``model.session`` as claimed by hubfsm while ``train`` runs.

    Truthy, so ultralytics' model does not create a second hub model of its own; it has
    no ``model`` attribute, so the model takes no hub training arguments from it.
    """

    def __repr__(self) -> str:
        return "<hub session claimed by hubfsm>"


#: The marker hubfsm leaves in ``trainer.hub_session``.
DETACHED = Detached()


def official_key(hub_session: Any) -> str | None:
    """The API key an official hub session was opened with, if any."""
    # hub-sdk's client keeps the key it was given, the one inside a 'KEY_MODELID'
    # identifier included; taking the model over must not lose it.
    key = getattr(getattr(hub_session, "client", None), "api_key", None)
    return key if isinstance(key, str) and key else None


def official_model_id(hub_session: Any) -> str | None:
    """The model id of an official hub session, if it has one."""
    model_id = getattr(hub_session, "model_id", None) or getattr(
        getattr(hub_session, "model", None), "id", None
    )
    return model_id if isinstance(model_id, str) and model_id else None
