"""What hubfsm reads from ultralytics' objects and files, and the markers it leaves on them.

The callbacks (:mod:`hubfsm.integrations.ultralytics_callbacks`) and the stand-in session
(:mod:`hubfsm.integrations.ultralytics_session`) use these; they are apart so that what
depends on ultralytics' names (its events, its trainer's and settings' attributes, the
settings file ``yolo login`` writes, and hub-sdk's, for a session the trainer carries) is
in one place.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hubfsm import env

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


#: The most of a settings file read: ultralytics' own is well under 1 KiB.
SETTINGS_MAX = 64 * 1024

#: A key in ultralytics 8.2's YAML settings, as it writes one (a plain or quoted scalar).
_YAML_KEY = re.compile(r"""^api_key:[ \t]*(['"]?)([A-Za-z0-9_]+)\1[ \t]*$""", re.MULTILINE)


def settings_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where ultralytics keeps its settings, newest layout first.

    8.4 keeps ``settings.json`` in an ``Ultralytics`` folder inside ``YOLO_CONFIG_DIR``
    (or the platform's config directory, or a private one in the temporary directory when
    that is not writable); 8.3 in ``YOLO_CONFIG_DIR`` itself, as JSON; 8.2 as
    ``settings.yaml``.
    """
    given = env.yolo_config_dir(environ)
    if given:
        base = Path(given).expanduser()
        folders = [base / "Ultralytics", base]
    else:
        home = Path(env.home(environ) or Path.home())
        if sys.platform == "win32":
            config = home / "AppData" / "Roaming"
        elif sys.platform == "darwin":
            config = home / "Library" / "Application Support"
        else:
            config = Path(env.config_home(environ) or home / ".config")
        uid = os.getuid() if hasattr(os, "getuid") else None
        temp = Path(tempfile.gettempdir())
        folders = [config / "Ultralytics"]
        if config != home / ".config" and sys.platform.startswith("linux"):
            folders.append(home / ".config" / "Ultralytics")  # 8.2 and 8.3 ignore XDG
        if uid is not None:
            folders.append(temp / f"Ultralytics-{uid}")  # 8.4, where the home is read-only
        folders.append(temp / "Ultralytics")  # 8.2 and 8.3, likewise
    return [folder / name for folder in folders for name in ("settings.json", "settings.yaml")]


def saved_key(*, platform: bool, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key ``yolo login`` saved in ultralytics' settings file, for one dialect.

    For a command that runs without ultralytics (``hubfsm sync``). A ``ul_`` key is
    Platform's, any other HUB's: a key is never offered to the other dialect's hub. With
    several ultralytics versions' files (8.4 keeps only a Platform key; 8.2 a HUB one),
    the newest layout holding a key of the dialect wins.
    """
    from hubfsm.core.platform import PLATFORM_KEY

    for path in settings_files(environ):
        key = _key_in(path)
        if key is not None and (PLATFORM_KEY.fullmatch(key) is not None) == platform:
            return key
    return None


def _key_in(path: Path) -> str | None:
    """The non-empty ``api_key`` in one settings file, or None (absent, unreadable, odd)."""
    text = None
    with contextlib.suppress(OSError, UnicodeDecodeError), path.open("rb") as file:
        text = file.read(SETTINGS_MAX + 1).decode("utf-8")
    if text is None or len(text) > SETTINGS_MAX:
        return None
    if path.suffix == ".yaml":
        found = _YAML_KEY.search(text)
        return found.group(2) if found else None
    try:
        settings = json.loads(text)
    except ValueError:
        return None
    key = settings.get("api_key") if isinstance(settings, dict) else None
    if not isinstance(key, str):
        return None
    return key.strip() or None


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
