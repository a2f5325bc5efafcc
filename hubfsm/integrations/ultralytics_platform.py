"""ultralytics 8.4's Platform callbacks, with one hubfsm session in place of the official pool.

ultralytics 8.4 adds the callbacks of ``ultralytics.utils.callbacks.platform`` to every
trainer; they start reporting when a Platform key is set (``ULTRALYTICS_API_KEY`` or
``yolo login``) and ``project=`` is given. :func:`install` (from
:mod:`hubfsm.integrations.ultralytics`) puts :class:`PlatformCallbacks` there instead,
so the same runs report through a :class:`~hubfsm.Session` in the Platform dialect:

- the same start conditions, the same project and run names, the same
  ``platform_model_id.txt`` in the run directory for ``resume=True``;
- each epoch's ``{**label_loss_items(tloss, "train"), **metrics, "lr"}`` with ``fitness``,
  ``best_fitness`` and, at epoch 0, ``modelInfo``, as one ``epoch_end``, delivered once
  and in order, kept across a kill;
- the weights (``best.pt``, else ``last.pt``) after every save, newest first, the first at
  once, then at most every 900 s; at the end the final weights, then ``training_complete``
  once everything before it was acknowledged;
- ``cancelled`` in any answer sets ``trainer.stop``;
- on SIGTERM or SIGINT, what is queued is sent for up to ``exit_timeout`` and what is
  left is named, with its ``hubfsm sync`` command, before the signal goes on
  (``handle_signals=False``, or a handler of the application's own, leaves the
  signals alone);
- the official callbacks' lines on ultralytics' console (its ``ultralytics`` logger):
  ``Platform: Streaming training metrics to Platform``, ``Platform: View model at URL``,
  and ``Platform: View results at URL`` once the final weights are acknowledged (a
  cancellation is the session's own one line).

Not sent: ``console_output`` (the console is not captured), the environment and system
metrics, plots, class names and validation samples of ``training_complete``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubfsm import env
from hubfsm.core.identifier import slugify
from hubfsm.durable.layout import default_root
from hubfsm.errors import HubfsmError
from hubfsm.integrations.ultralytics_objects import MAP_KEY, model_info, settings_key
from hubfsm.logs import get_logger
from hubfsm.runtime.opener import is_main_process
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import SessionOptions, check_options
from hubfsm.transport import Transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["MODULE", "RECORD", "PlatformCallbacks", "official_names"]

log = get_logger("hubfsm")

#: Where ultralytics 8.4 keeps the Platform callbacks its trainers take.
MODULE = "ultralytics.utils.callbacks.platform"

#: The file in the run directory that names the Platform model, for ``resume=True``.
RECORD = "platform_model_id.txt"


def _say(message: str, level: int = logging.INFO) -> None:
    """One line on ultralytics' console, where its own Platform callbacks print theirs.

    ultralytics' ``LOGGER`` is the standard logger named ``ultralytics`` (to standard
    output, at its verbosity); the prefix is coloured as ultralytics colours it.
    """
    colorstr = getattr(sys.modules.get("ultralytics.utils"), "colorstr", None)
    prefix = colorstr("Platform: ") if callable(colorstr) else "Platform: "
    logging.getLogger("ultralytics").log(level, f"{prefix}{message}")


def official_names(project: Any, name: Any) -> tuple[str, str]:
    """The project and run names as ultralytics 8.4 sends them (``owner/`` kept)."""
    raw = str(project)
    parts = raw.split("/", 1)
    slug = f"{parts[0]}/{slugify(parts[1].replace('/', '-'))}" if len(parts) == 2 else slugify(raw)
    return slug, slugify(str(name or "train"))


class PlatformCallbacks:
    """The Platform callbacks, one session per trainer (see the module's description).

    Args:
        transport: Where requests go (tests pass an in-memory one).
        finish_timeout: Seconds the end of training waits for the final upload.
        model_info: Returns the model's info for epoch 0's ``modelInfo``.
        **options: The session's options (:class:`~hubfsm.runtime.settings.SessionOptions`)
            for every run; the key is else ``ULTRALYTICS_API_KEY``, else ultralytics'
            settings; the API root else ``ULTRALYTICS_PLATFORM_URL``, else the public one.
            The dialect is Platform, and the training arguments are the trainer's.
    """

    def __init__(
        self,
        *,
        transport: Transport | None = None,
        finish_timeout: float = 3600.0,
        model_info: Callable[[Any], Mapping[str, Any]] = model_info,
        **options: Unpack[SessionOptions],
    ) -> None:
        check_options(options)
        self.transport = transport
        self.finish_timeout = finish_timeout
        self.model_info = model_info
        #: The options every run's session is opened with.
        self.options = options
        #: The session of each trainer training now, by the trainer's id.
        self.sessions: dict[int, Session] = {}

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        """The callbacks by event, as ``ultralytics.utils.callbacks.platform.callbacks``."""
        return {
            "on_pretrain_routine_start": self.on_pretrain_routine_start,
            "on_pretrain_routine_end": self.on_pretrain_routine_end,
            "on_fit_epoch_end": self.on_fit_epoch_end,
            "on_model_save": self.on_model_save,
            "on_train_end": self.on_train_end,
            "teardown": self.teardown,
        }

    def session_of(self, trainer: Any) -> Session | None:
        """The trainer's session, if it reports to Platform."""
        return self.sessions.get(id(trainer))

    # -- the trainer's events -----------------------------------------------------------

    def on_pretrain_routine_start(self, trainer: Any) -> None:
        """Open the run: a new one, or the model ``platform_model_id.txt`` names on resume."""
        args = trainer.args
        if not getattr(args, "project", None) or not is_main_process():
            return
        key = self.options.get("api_key") or env.platform_api_key() or settings_key()
        if not key:
            return
        project, name = official_names(args.project, getattr(args, "name", None))
        record = Path(trainer.save_dir) / RECORD
        model_id = None
        if getattr(args, "resume", False) and record.exists():
            model_id = record.read_text(encoding="utf-8").strip() or None
        train_args = dict(vars(args))
        train_args["name"] = name
        if model_id is not None:
            identifier = model_id
        elif "/" in project:
            identifier = f"{project}/{name}"
        else:
            identifier = project  # the run's name goes as train_args["name"]
        _say("Streaming training metrics to Platform")
        try:
            options = self.options.copy()
            options["protocol"] = "platform"
            options["api_key"] = key
            # ultralytics leaves SIGTERM to kill the trainer where it stands; a scheduler's
            # stop would then say nothing of the epochs the outbox keeps for `hubfsm sync`.
            # Only signals that end the process, though: after an application's own
            # handler training may go on, and a session closed there would lose the rest.
            options.setdefault("handle_signals", _signals_end_the_process())
            options["train_args"] = train_args
            session = Session(
                identifier,
                transport=self.transport,
                on_cancel=lambda: setattr(trainer, "stop", True),
                **options,
            )
            session.start()
        except (HubfsmError, OSError) as exc:  # a refused key or root; a full or read-only disk
            # As the official client: training goes on, untracked, and its console says
            # why (the one line for people; the event is for logs).
            log.info("platform.untracked", error=f"{type(exc).__name__}: {exc}")
            _say(f"Training will not be tracked on Platform: {self._why(exc)}", logging.WARNING)
            return
        self.sessions[id(trainer)] = session
        if session.model_id is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(session.model_id, encoding="utf-8")
        log.info("platform.tracking", model_id=session.model_id, model_url=session.model_url)
        if session.model_url:
            _say(f"View model at {session.model_url}")

    def _why(self, exc: Exception) -> str:
        """What went wrong, with where outboxes go and how to move them for a disk error."""
        if not isinstance(exc, OSError) or "HUBFSM_OUTBOX" in str(exc):
            return str(exc)
        root = self.options.get("outbox_dir") or default_root()
        return (
            f"{exc.strerror or exc} (the outbox in {root}); free space there, or keep "
            "outboxes elsewhere (HUBFSM_OUTBOX)"
        )

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Apply a cancellation that came before the trainer's setup reset ``stop``."""
        session = self.session_of(trainer)
        if session is not None and session.cancelled:
            trainer.stop = True

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """One epoch's metrics, as the official ``epoch_end`` carries them."""
        session = self.session_of(trainer)
        if session is None:
            return
        metrics: dict[str, Any] = {
            **trainer.label_loss_items(trainer.tloss, prefix="train"),
            **trainer.metrics,
        }
        optimizer = getattr(trainer, "optimizer", None)
        if optimizer is not None and optimizer.param_groups:
            metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["fitness"] = trainer.fitness
        metrics["best_fitness"] = trainer.best_fitness
        if trainer.epoch == 0:
            info = self.model_info(trainer)
            if info:
                metrics["modelInfo"] = {
                    "parameters": info.get("model/parameters", 0),
                    "gflops": info.get("model/GFLOPs", 0),
                    "speedMs": info.get("model/speed_PyTorch(ms)", 0),
                }
        try:
            session.log_metrics(metrics, epoch=int(trainer.epoch))
        except HubfsmError as exc:
            log.warning("platform.epoch_not_kept", error=f"{type(exc).__name__}: {exc}")

    def on_model_save(self, trainer: Any) -> None:
        """Offer the weights just saved; the session keeps the newest within its limit."""
        session = self.session_of(trainer)
        path = _weights(trainer)
        if session is None or path is None:
            return
        try:
            best = getattr(trainer, "best", None)
            is_best = best is not None and Path(path) == Path(best)
            session.save_checkpoint(path, epoch=int(trainer.epoch), is_best=is_best)
        except (HubfsmError, OSError) as exc:
            log.warning("platform.checkpoint_not_kept", error=f"{type(exc).__name__}: {exc}")

    def on_train_end(self, trainer: Any) -> None:
        """Upload the final weights, then ``training_complete``; wait until acknowledged."""
        session = self.sessions.pop(id(trainer), None)
        if session is None:
            return
        path = _weights(trainer)
        try:
            if path is not None:
                map50_95 = (trainer.metrics or {}).get(MAP_KEY, 0.0)
                session.finish(path, map50_95=float(map50_95 or 0.0), timeout=self.finish_timeout)
                if session.model_url:
                    _say(f"View results at {session.model_url}")
        except (HubfsmError, OSError, ValueError) as exc:
            # Final weights the session keeps are named in its own line (its refusal
            # notice, or what it prints on closing); a warning would say it all again.
            said = log.info if session.pending()["final"] else log.warning
            said("platform.final_pending", error=f"{type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            # The waiting line says Ctrl-C stops waiting and keeps it all: training is
            # over, so it ends as training does, and closing names what is kept.
            log.info("platform.final_wait_stopped")
        finally:
            try:
                session.close()
            except HubfsmError as exc:
                log.warning("platform.closed_with_refusal", error=str(exc))

    def teardown(self, trainer: Any) -> None:
        """Close a session training left open (an exception): what is left stays pending."""
        session = self.sessions.pop(id(trainer), None)
        if session is not None:
            try:
                session.close()
            except HubfsmError as exc:
                log.warning("platform.closed_with_refusal", error=str(exc))


def _signals_end_the_process() -> bool:
    """True while SIGTERM and SIGINT have Python's own handlers (they end the process).

    An ignored SIGINT (a job started in the background) counts too: it stays ignored.
    """
    sigint = signal.getsignal(signal.SIGINT)
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and (
        sigint is signal.default_int_handler or sigint == signal.SIG_IGN
    )


def _weights(trainer: Any) -> str | None:
    """``best.pt`` if it exists, else ``last.pt``, as the official callbacks choose."""
    for path in (getattr(trainer, "best", None), getattr(trainer, "last", None)):
        if path and Path(path).exists():
            return str(os.fspath(path))
    return None
