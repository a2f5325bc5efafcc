"""``install()``: make ultralytics train through hubfsm: HUB on 8.2/8.3, Platform on 8.4.

On ultralytics with ``ultralytics.hub`` (8.2.x, 8.3.x, 8.4 before 8.4.115) it puts hubfsm's
``HUBTrainingSession`` in place of the official one; on ultralytics without it (8.4.115
and later) it puts hubfsm's Platform callbacks
(:class:`~hubfsm.integrations.ultralytics_platform.PlatformCallbacks`) in place of
``ultralytics.utils.callbacks.platform.callbacks``, so the official pool sends nothing.

::

    from hubfsm.integrations.ultralytics import install

    install()
    model = YOLO("https://hub.ultralytics.com/models/MODEL_ID")
    model.train()  # the hub's dataset and arguments; a resume picks up the last weights

The stand-in class itself, and how it differs from the official one, is in
:mod:`hubfsm.integrations.ultralytics_session`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from hubfsm.errors import HubfsmError
from hubfsm.integrations.ultralytics_platform import MODULE, PlatformCallbacks
from hubfsm.integrations.ultralytics_session import HUBTrainingSession, StandInOptions
from hubfsm.logs import get_logger
from hubfsm.runtime.settings import SessionOptions, check_options

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["install", "installed", "uninstall"]

log = get_logger("hubfsm")

#: Where ultralytics (8.2.x, 8.3.x) keeps or imported the class; ``install`` replaces each.
TARGETS = (
    "ultralytics.hub.session",
    "ultralytics.hub",
    "ultralytics.utils.callbacks.hub",
)

_originals: dict[str, Any] = {}


def install(
    *,
    finish_timeout: float = 3600.0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **options: Unpack[SessionOptions],
) -> type[HUBTrainingSession] | PlatformCallbacks:
    """Make ultralytics use hubfsm's :class:`HUBTrainingSession` (idempotent).

    Replaces ``HUBTrainingSession`` in ``ultralytics.hub.session`` and wherever
    ultralytics imported it (``ultralytics.hub``, ``ultralytics.utils.callbacks.hub``).
    On an ultralytics without ``ultralytics.hub`` (8.4.115 and later) it replaces the
    Platform callbacks instead, and returns those; ``api_root`` is then the Platform root
    (else ``ULTRALYTICS_PLATFORM_URL``). :func:`uninstall` puts the originals back.

    Args:
        finish_timeout: Seconds the end of training waits for the final upload.
        cache_dir: Where downloaded weights are cached (else ``HUBFSM_CACHE``).
        progress: Show a progress bar while weights download.
        **options: The session's options (:class:`~hubfsm.runtime.settings.SessionOptions`)
            for every session ultralytics opens, such as ``api_root``, ``web_root``,
            ``config``, ``open_timeout`` and ``outbox_dir``.

    Returns:
        The class now in use, or the Platform callbacks now in use.

    Raises:
        HubfsmError: This ultralytics has neither ``ultralytics.hub`` nor Platform
            callbacks: use :func:`~hubfsm.integrations.ultralytics.add_callbacks` there.
    """
    check_options(options)
    try:
        importlib.import_module("ultralytics.hub.session")
    except ImportError as exc:
        try:
            platform = importlib.import_module(MODULE)
        except ImportError:
            raise HubfsmError(
                "this ultralytics has neither ultralytics.hub nor Platform callbacks: "
                "register hubfsm's with hubfsm.integrations.ultralytics.add_callbacks(model)"
            ) from exc
        current = getattr(platform, "callbacks", None)
        if isinstance(current, _Callbacks):
            return current.owner
        ours = PlatformCallbacks(finish_timeout=finish_timeout, **options)
        _originals.setdefault(MODULE, current)
        platform.callbacks = _Callbacks(ours)  # type: ignore[attr-defined]
        log.info("ultralytics.installed", replaced=[MODULE])
        return ours
    HUBTrainingSession.options = StandInOptions(
        session=options,
        finish_timeout=finish_timeout,
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        progress=progress,
    )
    for name in TARGETS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        current = getattr(module, "HUBTrainingSession", None)
        if current is None or current is HUBTrainingSession:
            continue
        _originals.setdefault(name, current)
        module.HUBTrainingSession = HUBTrainingSession  # type: ignore[attr-defined]
    log.info("ultralytics.installed", replaced=sorted(_originals))
    return HUBTrainingSession


def uninstall() -> None:
    """Put ultralytics' own ``HUBTrainingSession`` (or Platform callbacks) back."""
    for name, original in list(_originals.items()):
        module = sys.modules.get(name)
        if module is not None and name == MODULE:
            module.callbacks = original  # type: ignore[attr-defined]
        elif module is not None:
            module.HUBTrainingSession = original  # type: ignore[attr-defined]
        del _originals[name]


def installed() -> bool:
    """True while hubfsm's class is in ``ultralytics.hub.session``, or its Platform callbacks."""
    module = sys.modules.get("ultralytics.hub.session")
    if getattr(module, "HUBTrainingSession", None) is HUBTrainingSession:
        return True
    platform = sys.modules.get(MODULE)
    return isinstance(getattr(platform, "callbacks", None), _Callbacks)


class _Callbacks(dict[str, Any]):
    """The Platform callbacks by event, as ultralytics reads them, knowing whose they are."""

    def __init__(self, owner: PlatformCallbacks) -> None:
        super().__init__(owner.callbacks())
        self.owner = owner
