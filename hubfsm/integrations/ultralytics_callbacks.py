"""The ultralytics trainer's events, forwarded to one hub session.

:class:`UltralyticsCallbacks` is what :func:`~hubfsm.integrations.ultralytics.add_callbacks`
registers; :mod:`hubfsm.integrations.ultralytics` says what each event sends and where the
session comes from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from hubfsm.core.identifier import parse_identifier
from hubfsm.integrations.callbacks import TrainingCallbacks
from hubfsm.integrations.ultralytics_objects import (
    CREATE_ARGS,
    DETACHED,
    EVENTS,
    MAP_KEY,
    Claimed,
    Detached,
    every_arg,
    model_info,
    official_key,
    official_model_id,
    settings_key,
)
from hubfsm.integrations.ultralytics_session import HUBTrainingSession
from hubfsm.logs import get_logger
from hubfsm.runtime.opener import TrainingSession, start_session
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import SessionOptions, Settings, check_options
from hubfsm.transport import Transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SessionSource", "UltralyticsCallbacks"]

log = get_logger("hubfsm")

#: What the callbacks train into: a session, an identifier to open one from, or None
#: (the trainer's model).
SessionSource: TypeAlias = TrainingSession | str | os.PathLike[str] | None


class UltralyticsCallbacks:
    """The callbacks, bound to one session (opened lazily unless given).

    Args:
        session: A session to use, or an identifier to open one from, or None to take
            the trainer's model (see :mod:`hubfsm.integrations.ultralytics`).
        transport: Where requests go (tests pass an in-memory transport).
        finish_timeout: Seconds ``on_train_end`` waits for the final upload.
        strict: Raise hub errors during training instead of logging them.
        model_info: Returns the model's info merged into epoch 0's metrics; by default
            ultralytics' ``model_info_for_loggers``.
        **options: The session's options (:class:`~hubfsm.runtime.settings.SessionOptions`),
            for a session the callbacks open. ``train_args`` are values that replace the
            trainer's arguments for a new model; ``api_key`` is else the identifier's (or
            the one ultralytics' own session was given), else the one in ultralytics'
            settings, else ``HUB_API_KEY``.
    """

    def __init__(
        self,
        session: SessionSource = None,
        *,
        transport: Transport | None = None,
        finish_timeout: float = 3600.0,
        strict: bool = False,
        model_info: Callable[[Any], Mapping[str, Any]] = model_info,
        **options: Unpack[SessionOptions],
    ) -> None:
        self._given: TrainingSession | None = None
        self._identifier: str | None = None
        if isinstance(session, (str, os.PathLike)):
            self._identifier = os.fspath(session)
        elif session is not None:
            self._given = session
        self._transport = transport
        self._finish_timeout = finish_timeout
        self._strict = strict
        self._model_info = model_info
        check_options(options)
        self._train_args = dict(options.pop("train_args", None) or {})
        self._options = options
        self._hub: TrainingCallbacks | None = None
        self._owned = False
        self._official_key: str | None = None
        self._trained_epoch: int | None = None
        # The epoch whose metrics on_model_save recorded, until on_fit_epoch_end reports it.
        self._saved_epoch: int | None = None
        #: The arguments the user passed to ``Model.train`` (set by :func:`add_callbacks`
        #: on a model), so a new model's record gets them as given, not as resolved.
        self.user_args: dict[str, Any] | None = None

    @property
    def session(self) -> TrainingSession | None:
        """The session in use; None before training starts (or after an owned one closed)."""
        return None if self._hub is None else self._hub.session

    def __repr__(self) -> str:
        return f"<UltralyticsCallbacks session={self.session!r}>"

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        """The callbacks by ultralytics event name."""
        return {event: getattr(self, event) for event in EVENTS}

    # -- the events -----------------------------------------------------------------

    def on_pretrain_routine_start(self, trainer: Any) -> None:
        """Open the session (its model is loaded or created) and start it."""
        self._ensure(trainer)

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Make sure the session runs (ultralytics starts its rate-limit timers here)."""
        self._ensure(trainer)

    def on_train_epoch_end(self, trainer: Any) -> None:
        """Note the epoch that trained (the final validation may be reported after it)."""
        self._trained_epoch = int(trainer.epoch)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """Queue the epoch's losses and validation metrics (and at epoch 0 the model info).

        An epoch whose metrics :meth:`on_model_save` recorded is not recorded again.
        The final validation of ``best.pt`` replaces the last epoch's row, as ultralytics
        8.2/8.3 send it; 8.4 reports it one epoch later (a step of its own for its
        loggers), which on the hub would be an epoch that never trained.
        """
        hub = self._ensure(trainer)
        epoch = self._epoch_of(trainer)
        if self._saved_epoch == epoch:
            # Recorded with the checkpoint; a later report of this epoch (the final
            # validation of best.pt) is recorded again, as it replaces the row.
            self._saved_epoch = None
            return
        hub.on_epoch_end(epoch, self._metrics_of(trainer, epoch))

    def on_model_save(self, trainer: Any) -> None:
        """Record the epoch's metrics, then offer ``trainer.last`` (the first at once).

        ultralytics saves the checkpoint before it reports the epoch's metrics: weights
        offered first could reach the hub, and a resumed run would start after them,
        while a kill in between lost their epoch's metrics for good. The metrics are
        complete when the checkpoint is saved, so they go in (journaled) first.
        """
        hub = self._ensure(trainer)
        epoch = int(trainer.epoch)
        hub.on_epoch_end(epoch, self._metrics_of(trainer, epoch))
        self._saved_epoch = epoch
        is_best = bool(trainer.best_fitness == trainer.fitness)
        hub.on_checkpoint(trainer.last, epoch, is_best)

    def _epoch_of(self, trainer: Any) -> int:
        epoch = int(trainer.epoch)
        if self._trained_epoch is not None and epoch > self._trained_epoch:
            epoch = self._trained_epoch
        return epoch

    def _metrics_of(self, trainer: Any, epoch: int) -> dict[str, Any]:
        """The losses and validation metrics (and at epoch 0 the model info) of an epoch."""
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        metrics: dict[str, Any] = dict(losses) if isinstance(losses, Mapping) else {}
        metrics.update(trainer.metrics or {})
        if epoch == 0:
            try:
                metrics.update(self._model_info(trainer))
            except Exception as exc:  # extra information only: never worth stopping training
                log.info("ultralytics.model_info_skipped", error=f"{type(exc).__name__}: {exc}")
        return metrics

    def on_train_end(self, trainer: Any) -> None:
        """Upload ``trainer.best`` with its mAP50-95 and wait until the hub has it."""
        hub = self._ensure(trainer)
        best = trainer.best
        if not os.path.exists(best) and os.path.exists(trainer.last):
            log.warning("ultralytics.best_missing", best=os.fspath(best), using="last")
            best = trainer.last
        map50_95 = (trainer.metrics or {}).get(MAP_KEY, 0)
        try:
            done = hub.on_train_end(best, map50_95, epoch=int(trainer.epoch))
        finally:
            if self._owned:
                self._release()
        if done and isinstance(hub.session, Session):
            log.info("ultralytics.done", model_id=hub.session.model_id, url=hub.session.model_url)

    def teardown(self, trainer: Any) -> None:
        """Close a session the callbacks opened that training did not finish."""
        if self._owned:
            self._release()

    def on_train_start(self, trainer: Any) -> None:
        """Nothing to do (ultralytics sends usage analytics here)."""

    def on_val_start(self, validator: Any) -> None:
        """Nothing to do (ultralytics sends usage analytics here)."""

    def on_predict_start(self, predictor: Any) -> None:
        """Nothing to do (ultralytics sends usage analytics here)."""

    def on_export_start(self, exporter: Any) -> None:
        """Nothing to do (ultralytics sends usage analytics here)."""

    # -- inside ---------------------------------------------------------------------

    def _ensure(self, trainer: Any) -> TrainingCallbacks:
        official = getattr(trainer, "hub_session", None)
        adopted: Session | None = None
        official_id: str | None = None
        if official is not None and not isinstance(official, Detached):
            # Both clients would upload everything twice. ultralytics' callbacks look the
            # session up on the trainer at every event: a falsy marker silences them, and
            # (unlike None) keeps 8.3's callbacks from opening a session of their own.
            trainer.hub_session = DETACHED
            if isinstance(official, HUBTrainingSession):
                # hubfsm's own drop-in holds the model's session: use it, as a second
                # session on the model would find its outbox locked.
                session, official.session = official.session, None
                if self._given is None and self._identifier is None and self._hub is None:
                    adopted = session
                elif session is not None:
                    session.close()
            elif not isinstance(official, Claimed):
                official_id = official_model_id(official)
                self._official_key = official_key(official)
                stop = getattr(getattr(official, "model", None), "stop_heartbeat", None)
                if callable(stop):
                    stop()
                log.info("ultralytics.hub_session_detached", model_id=official_id)
        if self._hub is None:
            chosen: TrainingSession
            if adopted is not None:
                self._owned = True
                chosen = adopted
            elif self._given is not None:
                chosen = self._given
            else:
                chosen = self._open(trainer, official_id)
            # The callbacks never close at the end themselves: _release does, for owned ones.
            self._hub = TrainingCallbacks(
                chosen, finish_timeout=self._finish_timeout, strict=self._strict
            )
        self._hub.on_train_start()
        return self._hub

    def _open(self, trainer: Any, official_id: str | None) -> TrainingSession:
        identifier = self._identifier or official_id
        args = getattr(trainer, "args", None)
        if identifier is None:
            model = getattr(args, "model", None)
            if not isinstance(model, (str, os.PathLike)):
                raise TypeError(
                    "add_callbacks: no identifier given and the trainer's args.model is "
                    f"{type(model).__name__}, not a model file name"
                )
            identifier = os.fspath(model)
        if self.user_args is not None:
            # The wire's arguments as the user passed them to Model.train, as the official
            # client sends them: the data string as given, the official defaults for what
            # was not given. Every other argument the trainer resolved goes too, for a hub
            # that keeps them all.
            train_args = {
                k: v for k, v in every_arg(args, drop_none=True).items() if k not in CREATE_ARGS
            }
            train_args.update(every_arg(self.user_args))
            data = getattr(args, "data", None)
            if "data" not in train_args and data is not None:
                train_args["data"] = data
        else:
            train_args = every_arg(args, drop_none=True)
        train_args.update(self._train_args)
        parsed = parse_identifier(identifier, web_root=self._options.get("web_root"))
        api_key = self._options.get("api_key") or self._official_key
        if api_key is None and self._transport is None and parsed.api_key is None:
            # ultralytics 8.2.0's order: the identifier's key, then its settings, then
            # HUB_API_KEY (which the session reads last).
            api_key = settings_key()
        options = self._options.copy()
        options["api_key"] = api_key
        # The trainer's arguments only shape a new model; a loaded one has its own.
        options["train_args"] = train_args if parsed.filename is not None else {}
        session = start_session(Settings.resolve(identifier, **options), transport=self._transport)
        self._owned = True
        if isinstance(session, Session):
            log.info(
                "ultralytics.session_opened",
                model_id=session.model_id,
                url=session.model_url,
                state=session.state,
            )
        return session

    def _release(self) -> None:
        """Close the owned session (once); a later training opens a new one."""
        self._trained_epoch = None
        self._saved_epoch = None
        hub, self._hub = self._hub, None
        self._owned = False
        if hub is not None:
            hub.close()
