"""A stand-in for ultralytics' ``HUBTrainingSession``, built on :class:`~hubfsm.Session`.

One call makes ultralytics (8.2.x and 8.3.x, which have ``ultralytics.hub``) use it::

    from hubfsm.integrations.ultralytics import install

    install()
    model = YOLO("https://hub.ultralytics.com/models/MODEL_ID")
    model.train()  # the hub's dataset and arguments; a resume picks up the last weights

It has the public surface that ultralytics' ``Model`` and its stock HUB callbacks
(``ultralytics/utils/callbacks/hub.py``) use: ``create_session``, ``load_model``,
``create_model``, ``client.authenticated``, ``model.id``, ``model_url``, ``model_file``,
``train_args``, ``metrics_queue``, ``metrics_upload_failed_queue``, ``timers``,
``rate_limits``, ``upload_metrics``, ``upload_model`` and ``alive``. Nothing of hub-sdk
runs: no request from it, no heartbeat thread of its own, no signal handler.

Differences from the official class, on purpose:

- ``rate_limits`` for metrics and checkpoints are 0, so the stock callbacks hand over
  every epoch and every ``last.pt``; hubfsm applies the hub's limits itself (metrics
  every 3 s, checkpoints every 900 s with the first at once) and never drops the last
  epochs' metrics at the end.
- ``model_file`` of a pretrained or resumed model is the weights file hubfsm downloaded
  (cached, checked, owner-only), not a URL for ultralytics to fetch.
- ``metrics_upload_failed_queue`` stays empty: what the hub has not acknowledged waits
  in hubfsm's outbox, and a crash does not lose it.
- A hub failure during training is logged and leaves the data pending (``hubfsm sync``
  delivers it); training goes on, as with the official client.

The API key is, in this order: the one inside the identifier (``KEY_MODELID``), the one
in ultralytics' settings (``yolo login``), ``HUB_API_KEY``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from hubfsm import env
from hubfsm.core.engine import CoreConfig
from hubfsm.core.identifier import parse_identifier
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger
from hubfsm.runtime.session import Session

__all__ = ["CREATE_ARGS", "HUBTrainingSession", "install", "installed", "settings_key", "uninstall"]

log = get_logger("hubfsm")

#: The trainer arguments that go into a new model's record on the hub.
CREATE_ARGS = ("data", "epochs", "batch", "imgsz", "patience", "device", "cache")

#: Where ultralytics (8.2.x, 8.3.x) keeps or imported the class; ``install`` replaces each.
TARGETS = (
    "ultralytics.hub.session",
    "ultralytics.hub",
    "ultralytics.utils.callbacks.hub",
)


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


@attrs.frozen
class _Options:
    api_root: str | None = None
    web_root: str | None = None
    config: CoreConfig | None = None
    open_timeout: float = 120.0
    finish_timeout: float = 3600.0
    cache_dir: str | None = None
    outbox_dir: str | None = None
    progress: bool = True


class _Client:
    """What ultralytics reads of hub-sdk's client: ``authenticated`` (no request made)."""

    def __init__(self, authenticated: bool) -> None:
        self.authenticated = authenticated

    def __repr__(self) -> str:
        return f"<hubfsm client authenticated={self.authenticated}>"


class _Model:
    """What ultralytics reads of hub-sdk's model: ``id`` and ``data`` (the record)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.data: Mapping[str, Any] = {}

    def stop_heartbeat(self) -> None:
        """Nothing to do: heartbeats belong to the session and stop when it ends."""

    def __repr__(self) -> str:
        return f"<hubfsm model id={self.id}>"


class HUBTrainingSession:
    """ultralytics' ``HUBTrainingSession`` on top of :class:`~hubfsm.Session`.

    Args:
        identifier: A model URL, ``KEY_MODELID``, a model id, or a local ``.pt``/``.yaml``.

    Raises:
        IdentifierError: The identifier is in none of the accepted forms.
        HubfsmError: A model id was given but no API key is known.
        ModelTrainedError: The model is trained already.
        RecordError: The record lacks what training needs (the dataset may still be
            processing).
    """

    options: ClassVar[_Options] = _Options()

    def __init__(self, identifier: str) -> None:
        self.rate_limits: dict[str, float] = {"metrics": 0.0, "ckpt": 0.0, "heartbeat": 300.0}
        self.metrics_queue: dict[Any, str] = {}
        self.metrics_upload_failed_queue: dict[Any, str] = {}
        self.timers: dict[str, float] = {}
        self.model = _Model()
        self.model_url: str | None = None
        self.model_file: str | None = None
        self.train_args: dict[str, Any] | None = None
        self.model_id: str | None = None
        self.session: Session | None = None
        opts = self.options
        parsed = parse_identifier(os.fspath(identifier), web_root=opts.web_root)
        self.filename = parsed.filename
        key = parsed.api_key or settings_key() or env.api_key()

        def given_key() -> str | None:
            return key

        # A closure keeps the key out of repr() and vars().
        self._key = given_key
        self.client = _Client(bool(key))
        if parsed.model_id is not None:
            if not key:
                raise HubfsmError(
                    "no API key for the hub model: use a 'KEY_MODELID' identifier, "
                    "'yolo login KEY', or set HUB_API_KEY"
                )
            self.load_model(parsed.model_id)

    def __repr__(self) -> str:
        return f"<hubfsm HUBTrainingSession model={self.model.id} session={self.session!r}>"

    @classmethod
    def create_session(
        cls, identifier: str, args: Mapping[str, Any] | None = None
    ) -> HUBTrainingSession | None:
        """A session for ``identifier``, or None when there is no key or no model (8.3.x).

        With ``args`` and a local file, the model is created on the hub from them.
        """
        try:
            session = cls(identifier)
        except HubfsmError as exc:
            log.warning("ultralytics.hub_session_unavailable", error=str(exc))
            return None
        if not session.client.authenticated:
            return None
        if args and session.filename is not None:
            session.create_model(args)
            if not session.model.id:
                return None
        return session

    def _open(self, identifier: str, train_args: Mapping[str, Any] | None = None) -> Session:
        opts = self.options
        return Session(
            identifier,
            api_key=self._key(),
            api_root=opts.api_root,
            web_root=opts.web_root,
            train_args=train_args,
            config=opts.config,
            open_timeout=opts.open_timeout,
            outbox_dir=opts.outbox_dir,
        )

    def _adopt(self, session: Session) -> None:
        self.session = session
        self.model.id = self.model_id = session.model_id
        self.model.data = session.record
        self.model_url = session.model_url
        session.start()
        log.info("ultralytics.hub_session", model_id=session.model_id, url=session.model_url)
        print(f"hubfsm: view model at {session.model_url}", file=sys.stderr)

    def load_model(self, model_id: str) -> None:
        """Load a model: its plan gives ``train_args`` and ``model_file`` (weights downloaded).

        Raises:
            ModelTrainedError: The model is trained already.
            RecordError: The record lacks what training needs.
            DownloadError: The weights could not be downloaded.
        """
        session = self._open(model_id)
        try:
            plan = session.plan
            weights = session.download_weights(
                cache_dir=self.options.cache_dir, progress=self.options.progress
            )
        except BaseException:
            session.close(timeout=0.0)
            raise
        self.train_args = dict(plan.train_args)
        self.model_file = str(weights) if weights is not None else _v5u(plan.model_file)
        self._adopt(session)

    def create_model(self, model_args: Mapping[str, Any]) -> None:
        """Create the model on the hub from the user's training arguments.

        Like the official client, a failure (a refused key, an unreachable hub) is
        logged and leaves ``model.id`` None, so ultralytics trains without the hub.
        """
        if self.filename is None:
            raise HubfsmError("create_model needs a session opened from a local .pt/.yaml")
        args: dict[str, Any] = {}
        for name in CREATE_ARGS:
            value = _get(model_args, name)
            if value is not _MISSING:
                args[name] = value
        try:
            session = self._open(self.filename, args)
        except HubfsmError as exc:
            log.warning("ultralytics.create_failed", error=str(exc))
            print(f"hubfsm: the hub did not create the model: {exc}", file=sys.stderr)
            return
        self._adopt(session)

    # -- what the stock callbacks call ----------------------------------------------

    def upload_metrics(self) -> None:
        """Hand the queued epochs to the session (it sends them within the hub's limits)."""
        session = self.session
        queued, self.metrics_queue = self.metrics_queue, {}
        if session is None:
            return
        for epoch, text in sorted(queued.items(), key=lambda item: int(item[0])):
            try:
                metrics = json.loads(text) if isinstance(text, str) else dict(text)
                session.log_metrics(metrics, epoch=int(epoch))
            except HubfsmError as exc:
                log.warning("ultralytics.metrics_not_queued", epoch=epoch, error=str(exc))

    def upload_model(
        self,
        epoch: int,
        weights: str | os.PathLike[str],
        is_best: bool = False,
        map: float = 0.0,  # noqa: A002 - ultralytics' own keyword
        final: bool = False,
    ) -> None:
        """Offer epoch weights, or (``final``) upload the final weights and wait for the hub."""
        session = self.session
        if session is None:
            return
        if not Path(weights).is_file():
            log.warning("ultralytics.weights_missing", path=os.fspath(weights))
            return
        if not final:
            try:
                session.save_checkpoint(weights, epoch=int(epoch), is_best=bool(is_best))
            except HubfsmError as exc:
                log.warning("ultralytics.checkpoint_not_queued", epoch=epoch, error=str(exc))
            return
        self.upload_metrics()  # anything the callbacks still hold goes before the weights
        try:
            session.finish(
                weights,
                epoch=int(epoch),
                map50_95=float(map),
                timeout=self.options.finish_timeout,
            )
        except HubfsmError as exc:
            log.error("ultralytics.final_upload_failed", model_id=session.model_id, error=str(exc))
            print(
                f"hubfsm: the final weights of model {session.model_id} are not on the hub "
                f"yet ({exc}); they are kept, and `hubfsm sync` sends them",
                file=sys.stderr,
            )
        finally:
            self._close()

    @property
    def alive(self) -> bool:
        """True while the session trains (heartbeats go on); set False to end it."""
        return self.session is not None and self.session.state == "training"

    @alive.setter
    def alive(self, value: bool) -> None:
        if not value:
            self._close()

    def _close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()

    def close(self) -> None:
        """End the session (what is not sent stays in the outbox for later)."""
        self._close()


_MISSING = object()


def _get(args: Any, name: str) -> Any:
    """``args[name]`` of a dict or of ultralytics' ``IterableSimpleNamespace``."""
    if isinstance(args, Mapping):
        return args.get(name, _MISSING)
    return getattr(args, name, _MISSING)


def _v5u(model_file: str) -> str:
    # ultralytics maps YOLOv5 names to their 'u' variants (yolov5n.yaml -> yolov5nu.yaml)
    checks = sys.modules.get("ultralytics.utils.checks")
    convert = getattr(checks, "check_yolov5u_filename", None)
    if callable(convert):
        return str(convert(model_file, verbose=False))
    return model_file


_originals: dict[str, Any] = {}


def install(
    *,
    api_root: str | None = None,
    web_root: str | None = None,
    config: CoreConfig | None = None,
    open_timeout: float = 120.0,
    finish_timeout: float = 3600.0,
    cache_dir: str | os.PathLike[str] | None = None,
    outbox_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> type[HUBTrainingSession]:
    """Make ultralytics use hubfsm's :class:`HUBTrainingSession` (idempotent).

    Replaces ``HUBTrainingSession`` in ``ultralytics.hub.session`` and wherever
    ultralytics imported it (``ultralytics.hub``, ``ultralytics.utils.callbacks.hub``).
    :func:`uninstall` puts the originals back.

    Args:
        api_root: The API root (else ``ULTRALYTICS_HUB_API``).
        web_root: The web root of model URLs (else ``ULTRALYTICS_HUB_WEB``).
        config: Limits and retry policies of the core.
        open_timeout: Seconds to wait for the hub to load or create the model.
        finish_timeout: Seconds the end of training waits for the final upload.
        cache_dir: Where downloaded weights are cached (else ``HUBFSM_CACHE``).
        outbox_dir: The outbox root (else ``HUBFSM_OUTBOX``).
        progress: Show a progress bar while weights download.

    Returns:
        The class now in use.

    Raises:
        HubfsmError: This ultralytics has no ``ultralytics.hub`` (8.4 and later): use
            :func:`~hubfsm.integrations.ultralytics.add_callbacks` there.
    """
    try:
        importlib.import_module("ultralytics.hub.session")
    except ImportError as exc:
        raise HubfsmError(
            "this ultralytics has no ultralytics.hub (removed in 8.4): register the "
            "callbacks with hubfsm.integrations.ultralytics.add_callbacks(model) instead"
        ) from exc
    HUBTrainingSession.options = _Options(
        api_root=api_root,
        web_root=web_root,
        config=config,
        open_timeout=open_timeout,
        finish_timeout=finish_timeout,
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        outbox_dir=None if outbox_dir is None else os.fspath(outbox_dir),
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
    """Put ultralytics' own ``HUBTrainingSession`` back where :func:`install` replaced it."""
    for name, original in list(_originals.items()):
        module = sys.modules.get(name)
        if module is not None:
            module.HUBTrainingSession = original  # type: ignore[attr-defined]
        del _originals[name]


def installed() -> bool:
    """True while hubfsm's class is in ``ultralytics.hub.session``."""
    module = sys.modules.get("ultralytics.hub.session")
    return getattr(module, "HUBTrainingSession", None) is HUBTrainingSession
