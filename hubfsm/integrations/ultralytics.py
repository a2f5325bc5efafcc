"""ultralytics through hubfsm: trainer callbacks (:func:`add_callbacks`), or :func:`install`.

**Callbacks** for ultralytics (8.2.0 and later), in place of ``ultralytics.utils.callbacks.hub``.

One call registers them on an ultralytics ``Model`` or ``BaseTrainer`` (anything with
``add_callback(event, fn)``)::

    model = YOLO("yolov8n.yaml")
    add_callbacks(model)  # or add_callbacks(model, "https://hub.ultralytics.com/models/...")
    model.train(data="coco8.yaml", epochs=3)

They read the same trainer attributes and send the same data as ultralytics' own HUB
callbacks: each epoch's ``{**trainer.label_loss_items(trainer.tloss, prefix="train"),
**trainer.metrics}`` (plus the model's info at epoch 0), ``trainer.last`` after each save
with ``is_best = trainer.best_fitness == trainer.fitness``, and at the end ``trainer.best``
with ``metrics/mAP50-95(B)`` as its mAP. The session does the rate limiting, retries and
delivery, so no callback waits on the network except the last one, which waits for the
final upload.

The session is opened in ``on_pretrain_routine_start`` (when the trainer's arguments are
known) from, in this order: the identifier given to :func:`add_callbacks`, the model of an
ultralytics HUB session the trainer carries (``trainer.hub_session``, which is then
detached so that ultralytics' own callbacks stay quiet), or ``trainer.args.model`` (a local
``.pt``/``.yaml``: a new model is created with the trainer's arguments). A
:class:`~hubfsm.Session` may be given instead; the callbacks then finish it but leave
closing it to its owner. On a process of global rank other than 0 nothing is sent.
(ultralytics' own multi-GPU training runs its workers from a script it generates, with no
custom callbacks, so there, as with ultralytics' own HUB client, nothing reaches the hub.)

A failure to open the session raises (nothing is trained yet, and the key or the model
needs fixing); a hub failure later is logged and leaves the data pending, so training
goes on (unless ``strict=True``).

The callbacks are :class:`~hubfsm.integrations.ultralytics_callbacks.UltralyticsCallbacks`.

**install()** makes ultralytics itself train through hubfsm: HUB on 8.2/8.3, Platform on
8.4. On ultralytics with ``ultralytics.hub`` (8.2.x, 8.3.x, 8.4 before 8.4.115) it puts
hubfsm's ``HUBTrainingSession`` in place of the official one; on ultralytics without it
(8.4.115 and later) it puts hubfsm's Platform callbacks
(:class:`~hubfsm.integrations.ultralytics_platform.PlatformCallbacks`) in place of
``ultralytics.utils.callbacks.platform.callbacks``, so the official pool sends nothing::

    from hubfsm.integrations.ultralytics import install

    install()
    model = YOLO("https://hub.ultralytics.com/models/MODEL_ID")
    model.train()  # the hub's dataset and arguments; a resume picks up the last weights

The stand-in class itself, and how it differs from the official one, is in
:mod:`hubfsm.integrations.ultralytics_session`.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hubfsm.core.config import CoreConfig
from hubfsm.errors import HubfsmError
from hubfsm.integrations.ultralytics_callbacks import SessionSource, UltralyticsCallbacks
from hubfsm.integrations.ultralytics_objects import Claimed, model_info
from hubfsm.integrations.ultralytics_platform import MODULE, PlatformCallbacks
from hubfsm.integrations.ultralytics_session import HUBTrainingSession, StandInOptions
from hubfsm.logs import get_logger
from hubfsm.runtime.settings import SessionOptions, check_options
from hubfsm.transport import Transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["add_callbacks", "install", "installed", "uninstall"]

log = get_logger("hubfsm")


def add_callbacks(  # noqa: D417 - the options are described once, on Settings
    target: Any,
    session: SessionSource = None,
    *,
    api_key: str | None = None,
    transport: Transport | None = None,
    config: CoreConfig | None = None,
    api_root: str | None = None,
    web_root: str | None = None,
    open_timeout: float = 120.0,
    finish_timeout: float = 3600.0,
    strict: bool = False,
    model_info: Callable[[Any], Mapping[str, Any]] = model_info,
    tags: Iterable[str] | str | None = None,
    notes: str | None = None,
    **train_args: Any,
) -> UltralyticsCallbacks:
    """Register the hub callbacks on an ultralytics ``Model`` or ``BaseTrainer``.

    ``api_key``, ``config``, ``api_root``, ``web_root``, ``open_timeout``, ``tags`` and
    ``notes`` are the session's options, each described, with its default, as the
    :class:`~hubfsm.runtime.settings.Settings` field of its name (spelled out here, not
    taken as ``**options``, because every other keyword is a training argument); the
    key is else the identifier's (or the one ultralytics' own session was given), else
    the one in ultralytics' settings, else ``HUB_API_KEY``.

    Args:
        target: Anything with ``add_callback(event, fn)``.
        session: A session, an identifier (model URL, ``apiKey_modelId``, model id, local
            ``.pt``/``.yaml``), or None to use the trainer's model.
        transport: Where requests go (tests pass an in-memory transport).
        finish_timeout: Seconds the end of training waits for the final upload.
        strict: Raise hub errors during training instead of logging them.
        model_info: Returns the model's info merged into epoch 0's metrics.
        **train_args: For a new model, values that replace the trainer's arguments
            (:attr:`~hubfsm.runtime.settings.Settings.train_args`).

    Returns:
        The registered callbacks; their ``session`` is the session once training started.

    Raises:
        TypeError: ``target`` has no ``add_callback``.
    """
    add = getattr(target, "add_callback", None)
    if not callable(add):
        raise TypeError(
            f"add_callbacks: {type(target).__name__} has no add_callback(event, fn); "
            "pass an ultralytics Model or trainer"
        )
    hub = UltralyticsCallbacks(
        session,
        api_key=api_key,
        transport=transport,
        config=config,
        api_root=api_root,
        web_root=web_root,
        open_timeout=open_timeout,
        finish_timeout=finish_timeout,
        strict=strict,
        model_info=model_info,
        train_args=train_args,
        tags=tags,
        notes=notes,
    )
    for event, fn in hub.callbacks().items():
        add(event, fn)
    train = getattr(target, "train", None)
    if callable(train) and hasattr(target, "overrides"):
        _capture_train_args(target, train, hub)
    return hub


def _capture_train_args(model: Any, train: Callable[..., Any], hub: UltralyticsCallbacks) -> None:
    # The trainer replaces args.data with the resolved dataset file before any callback
    # runs; the record should carry the user's own string, as the official client's does.
    @functools.wraps(train)
    def capturing(*args: Any, **kwargs: Any) -> Any:
        hub.user_args = dict(kwargs)
        if getattr(model, "session", None) is not None:
            return train(*args, **kwargs)
        # A model from a local file: ultralytics would create a hub model through its
        # own client too, leaving an extra model on the hub.
        model.session = Claimed()
        try:
            return train(*args, **kwargs)
        finally:
            if isinstance(model.session, Claimed):
                model.session = None

    model.train = capturing


# -- install(): ultralytics uses hubfsm's session or Platform callbacks ----------------

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
