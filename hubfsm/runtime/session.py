"""The facade trainers call: :class:`Session`.

Every call from the training thread returns at once, except opening (which waits for
the hub to load or create the model) and :meth:`Session.finish` (which waits for the
final upload). The work happens on one background worker; what the hub has not
acknowledged is kept in a durable outbox (see :mod:`hubfsm.durable.outbox`).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hubfsm.core import protocol
from hubfsm.core.changes import describe_pending
from hubfsm.core.config import CoreConfig
from hubfsm.core.events import (
    Barrier,
    FinishPending,
    Interrupted,
    Start,
)
from hubfsm.durable.records import keep_record, kept_record
from hubfsm.errors import (
    DeliveryIncomplete,
    HubfsmError,
    IllegalEventError,
)
from hubfsm.logs import get_logger
from hubfsm.runtime.console import duration, hub_name, sync_command
from hubfsm.runtime.driver import QUIET
from hubfsm.runtime.exits import ExitHooks, report_left
from hubfsm.runtime.factory import Parts, build, open_model
from hubfsm.runtime.refusal import notice, refusal_error
from hubfsm.runtime.session_views import SessionViews
from hubfsm.runtime.settings import Settings
from hubfsm.transport import Transport
from transports.settings import DEFAULT_API_ROOT

__all__ = ["Session"]

log = get_logger("hubfsm")

#: Seconds :meth:`Session.finish` waits in silence; past them it says what it waits for.
FINISH_QUIET = 5.0


class Session(SessionViews):
    """A training session on the hub, for one model.

    Args:
        identifier: A model URL, ``apiKey_modelId``, a model id, or a local
            ``.pt``/``.yaml`` to create a model from.
        api_key: The API key; else the one in ``identifier``; else ``HUB_API_KEY``.
        transport: Where requests go; default an HTTP transport to ``api_root``.
        api_root: The API root for the default transport (else ``ULTRALYTICS_HUB_API``).
        web_root: The web root for model URLs (else ``ULTRALYTICS_HUB_WEB``, else the
            API root's origin for any hub but the public one: the local hub serves its
            model pages there).
        train_args: For a local file: training arguments in ultralytics' names. The HUB
            v1 wire carries ``data``, ``epochs``, ``batch``, ``imgsz``, ``patience``,
            ``device`` and ``cache`` (the others are logged as not sent to the public
            HUB); a hubfsm hub keeps every one, and Platform sends every one as text.
        config: Limits and retry policies of the core.
        open_timeout: Seconds to wait for the hub to load or create the model.
        seed: Seeds the jitter, for reproducible runs.
        outbox: Keep what the hub has not acknowledged on disk (default True).
        journal: With the outbox, also write each trainer call to a memory-mapped
            journal before it returns, so ``kill -9`` loses nothing (default True).
            Without it a call is a few microseconds cheaper when the caches are cold,
            and a kill loses what the worker had not filed yet: at most its last
            quarter second, plus the request it was in.
        outbox_dir: The outbox root (else ``HUBFSM_OUTBOX``, else the user data dir).
        offline: Record everything and send nothing, for ``hubfsm sync`` later
            (else ``HUBFSM_OFFLINE``); needs a model id.
        exit_timeout: Seconds :meth:`close` (and interpreter exit) spends sending.
        handle_signals: Also flush on SIGTERM/SIGINT, then chain to the old handlers.
        protocol: ``hub`` or ``platform``; by default chosen from the key's form and
            the environment (see :meth:`hubfsm.runtime.settings.Settings.resolve`).
            For Platform the identifier is ``owner/project`` (the run named by
            ``train_args["name"]``, default ``train``), ``owner/project/run``, or the
            model id of a run to continue.
        on_cancel: Called once, on the session's worker thread, when an answer says a
            person cancelled the run (see :attr:`cancelled`).
        name: For a new model, its name on the hub (HUB v1's ``meta.name``, default the
            file's base name; Platform: the run's name, as ``train_args["name"]``).
        tags: For a new model, labels a hubfsm hub keeps and shows (not sent to the
            public HUB, whose wire has no room for them; Platform: not sent).
        notes: For a new model, free text a hubfsm hub keeps and shows (as ``tags``).

    Raises:
        IdentifierError: The identifier is in none of the accepted forms.
        HubError: The hub refused the key or the model (see its subclasses).
        HubUnavailableError: The hub did not answer within ``open_timeout``.
        OutboxLockedError: Another session holds this model's outbox.
    """

    def __init__(
        self,
        identifier: str,
        *,
        api_key: str | None = None,
        transport: Transport | None = None,
        api_root: str | None = None,
        web_root: str | None = None,
        train_args: Mapping[str, Any] | None = None,
        config: CoreConfig | None = None,
        open_timeout: float = 120.0,
        seed: int | None = None,
        outbox: bool = True,
        journal: bool = True,
        outbox_dir: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        exit_timeout: float = 10.0,
        handle_signals: bool = False,
        protocol: str | None = None,
        on_cancel: Callable[[], None] | None = None,
        name: str | None = None,
        tags: Iterable[str] | str | None = None,
        notes: str | None = None,
    ) -> None:
        self._on_cancel = on_cancel
        settings = Settings.resolve(
            identifier,
            api_key=api_key,
            api_root=api_root,
            web_root=web_root,
            train_args=train_args,
            config=config,
            open_timeout=open_timeout,
            seed=seed,
            outbox=outbox,
            journal=journal,
            outbox_dir=outbox_dir,
            offline=offline,
            exit_timeout=exit_timeout,
            handle_signals=handle_signals,
            protocol=protocol,
            name=name,
            tags=tags,
            notes=notes,
        )
        self._setup(build(settings, transport=transport))

    @classmethod
    def compose(cls, parts: Parts) -> Session:
        """Open a session on parts already built (see :func:`hubfsm.runtime.factory.build`).

        It raises what the constructor raises.
        """
        session = cls.__new__(cls)
        session._on_cancel = None
        session._setup(parts)
        return session

    def _setup(self, parts: Parts) -> None:
        settings = parts.settings
        self._settings = settings
        self.web_root = settings.web_root
        self.identifier = settings.identifier
        self.offline = settings.offline
        self.exit_timeout = settings.exit_timeout
        self._core = core = parts.core
        self._driver = parts.driver
        self._log: Any = QUIET if parts.driver.quiet else log
        self._shell = parts.shell
        self._inbox = parts.driver.inbox
        self._durability = parts.durability
        self._weights = parts.driver.weights
        self._accepting = False
        self._closed = False
        self._next_epoch = 0
        self._hooks: ExitHooks | None = None
        self._create_args: dict[str, Any] = dict(settings.train_args)
        # Whether the trainer has heard of a refusal: once on stderr, once as an error.
        self._refusal_noticed = not settings.notify_refusal
        self._refusal_raised = False
        parts.hooks.refused.append(self._notice_refusal)
        core.on_cancel = self._cancelled
        try:
            open_model(parts)
        except BaseException:
            self._release()
            raise
        if settings.identifier.model_id is not None:
            self._keep_record(settings.identifier.model_id)
            self._continue_from_record()
        if settings.at_exit:
            self._hooks = ExitHooks(self._at_exit, signals=settings.handle_signals)
        self._log.info("session.opened", model_id=core.model_id, state=core.state)

    def _keep_record(self, model_id: str) -> None:
        # An offline run of a hub model trains from the record an online start kept.
        durability = self._durability
        if durability is None:
            return
        if self.offline:
            self._record = kept_record(model_id, durability.root)
        elif self._core.record:
            keep_record(model_id, self._core.record, durability.root)

    def _continue_from_record(self) -> None:
        # A resumed model's new epochs follow the ones the hub has: a loop that logs
        # without epoch numbers must not overwrite the earlier epochs' metrics.
        try:
            plan = self.plan
        except HubfsmError:
            return  # nothing to continue; reading the plan raises for the caller
        if plan.resume_epoch is not None:
            self._next_epoch = plan.resume_epoch

    def _release(self) -> None:
        self._shell.stop(timeout=0.0)
        if self._durability is not None:
            # An outbox with nothing left is only clutter; a later session recreates it.
            self._durability.close(remove=self._core.drained and not self._inbox)

    # -- what the trainer calls -----------------------------------------------------

    def start(self) -> None:
        """Training begins: heartbeats start. Returns once the session is ``training``."""
        if not self._core.machine.allows("start") or self._accepting:
            raise IllegalEventError(self._core.state, "start")
        self._shell.call(Start(), timeout=10.0)
        self._accepting = self._core.machine.records

    def log_metrics(self, metrics: Mapping[str, Any], *, epoch: int | None = None) -> None:
        """Queue one epoch's metrics; returns at once, and a crash cannot lose them.

        Args:
            metrics: Metric names (strings) to values: numbers, strings, booleans, None,
                and lists and dicts of them. numpy and torch scalars and arrays are
                converted; NaN and infinities are sent as JSON ``null``.
            epoch: The epoch; by default the one after the last logged, from 0.

        Raises:
            TypeError: A name is not a string, or a value cannot be sent (an integer
                beyond 64 bits, an object): the message names it, and nothing is kept.
        """
        if not self._accepting:
            raise IllegalEventError(self._core.state, "epoch_end")
        if epoch is None:
            epoch = self._next_epoch
        # No wake-up: metrics go out at most every 3 s anyway, and the worker looks at
        # the inbox at least every quarter second. The inbox checks the values. The
        # writer is loaded, then called: a call of an instance attribute as a method
        # takes the interpreter's generic lookup, on the training thread's every epoch.
        put = self._inbox.put_metrics
        put(epoch, metrics)
        self._next_epoch = epoch + 1

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, epoch: int, is_best: bool = False
    ) -> None:
        """Offer epoch weights for upload; returns at once.

        The newest offer wins: uploads go at most every 900 s (the first at once). With
        the outbox, the upload is a snapshot of the file as it was at this call; if the
        trainer overwrites it before the snapshot is taken, this offer is dropped in
        favour of the next one.
        """
        if not self._accepting:
            raise IllegalEventError(self._core.state, "checkpoint")
        # A missing file is the caller's error, raised here.
        self._weights.offer_checkpoint(path, epoch=epoch, is_best=is_best)
        self._shell.wake_up()

    def finish(
        self,
        path: str | os.PathLike[str],
        *,
        epoch: int | None = None,
        map50_95: float = 0.0,
        timeout: float = 3600.0,
    ) -> None:
        """Send what is pending, then upload the final weights; waits until the hub has them.

        In offline mode it records the final weights and returns (state ``resumable``);
        ``hubfsm sync`` sends them later.

        Args:
            path: The final (best) weights.
            epoch: The last epoch; by default the last one logged.
            map50_95: The model's mAP50-95, sent with the weights.
            timeout: Seconds to wait; past it the session becomes ``resumable``.

        Raises:
            DeliveryIncomplete: The upload did not complete within ``timeout``.
            HubError: The hub refused the key, the model or the upload: sending stopped,
                and everything (the final weights too) is kept for ``hubfsm sync``; the
                message names the hub's answer and where the data is.
        """
        if not self._accepting:
            raise IllegalEventError(self._core.state, "finish")
        last = max(self._next_epoch - 1 if epoch is None else epoch, 0)
        # A missing file is the caller's error, raised here.
        event = self._weights.offer_final(path, epoch=last, map50_95=map50_95, timeout=timeout)
        # Journaled before the wait: a kill while the worker is still inside a request
        # leaves the final weights for recovery, `hubfsm status` and `hubfsm sync`.
        self._shell.call(event, timeout=max(60.0, timeout))
        self._accepting = False
        self._settle(timeout)

    def finish_pending(self, *, timeout: float = 3600.0) -> None:
        """Finish with the final weights the outbox kept from an earlier run.

        Raises:
            HubfsmError: Nothing final is pending.
        """
        if not self._accepting and self._core.machine.allows("start"):
            self.start()
        saved = self._core.saved_final
        if saved is None or not self._accepting:
            raise HubfsmError("no final weights are pending for this model")
        self._shell.call(FinishPending(timeout), timeout=60.0)
        self._accepting = False
        self._settle(timeout)

    def _settle(self, timeout: float) -> None:
        console = self._driver.console
        # With the hub lost, say at once what finishing waits for; else after a quiet spell.
        quiet = 0.0 if console is not None and console.lost else min(FINISH_QUIET, timeout)
        if not self._shell.wait_for(lambda c: c.machine.settled, quiet):
            self._tell_waiting(timeout)
            self._shell.wait_for(lambda c: c.machine.settled, timeout + 5.0 - quiet)
        state = self._core.state
        if state == "done":
            self._log.info("session.finished", model_id=self._core.model_id, **self.stats())
            return
        if self.offline and state == "resumable":
            return
        if self._core.machine.refused:
            self._refusal_raised = True
            raise self._refusal_error()
        error = self._core.error
        if error is not None:
            raise error
        raise DeliveryIncomplete(f"final upload incomplete (state {state})", self.pending())

    def flush(self, *, timeout: float) -> bool:
        """Wait until nothing is pending (or ``timeout`` passes); True if all was sent."""
        # Everything queued before this call is taken in first, so it counts as pending.
        self._shell.call(Barrier(), timeout=timeout)
        return self._shell.wait_for(lambda c: c.drained or not c.machine.sends, timeout) and (
            self._core.drained
        )

    def close(self, *, timeout: float | None = None) -> None:
        """End the session: send what can be sent within ``timeout`` seconds, then stop.

        A session closed before :meth:`finish` becomes ``resumable``; what is left stays
        in the outbox, goes first when a session opens this model again, and can be
        sent with ``hubfsm sync``.

        Raises:
            HubError: The hub refused the key or the model during the run and
                :meth:`finish` has not said so yet: the message names the hub's answer,
                what is kept and where.
        """
        self._close(timeout, raise_refusal=True)

    def _close(
        self, timeout: float | None, *, raise_refusal: bool, why: str = "closed before finish"
    ) -> None:
        if self._closed:
            return
        self._closed = True
        if self._hooks is not None:
            self._hooks.remove()
        limit = self.exit_timeout if timeout is None else timeout
        interrupted = self._accepting
        if self._accepting:
            self._accepting = False
            self._shell.submit(Interrupted())
        self._shell.stop(timeout=0.0 if self.offline else limit)
        if interrupted:
            self._say_interrupted(why)
        self._release()
        pending = self.pending()  # final weights the worker never took in are kept too
        kept = None if self._durability is None else self._durability.kept
        if any(pending.values()) or (kept is not None and any(kept.values())):
            tell = self._log is log and not self._refusal_noticed
            report_left(
                self._core,
                pending,
                self.outbox_dir,
                self._log,
                tell=tell,
                kept=kept,
                api_root=self._settings.api_root,
            )
        if raise_refusal and self._core.machine.refused and not self._refusal_raised:
            self._refusal_raised = True
            raise self._refusal_error()

    def _say_interrupted(self, why: str) -> None:
        """Tell a hubfsm hub that the run stopped before its end, once, at most a request.

        The hub's pages then say ``interrupted`` (and why) where they could only guess
        ``stalled`` from the silence. Best effort: sent after the worker stopped (never
        beside one of its requests), not to the public HUB (whose wire has no such field),
        not on Platform (no heartbeats on its wire), not offline, after a refusal or before a
        ``Retry-After`` has passed; a failure only leaves the hub to notice the silence.
        """
        settings, core = self._settings, self._core
        if (
            self.offline
            or settings.protocol != "hub"
            or core.model_id is None
            or core.machine.refused
            or hub_name(settings.api_root) == DEFAULT_API_ROOT
            or self._shell.alive
            # A hub that said "Retry-After" hears nothing more before then, a note included.
            or self._driver.clock() < core.schedule.hold_until
        ):
            return
        request = protocol.ended(core.model_id, core.agent_id, why)
        try:
            response = self._driver.transport.send(request)
        except Exception as exc:  # noqa: BLE001 - a note the hub may miss; never a failure
            self._log.info("session.interrupt_not_sent", error=type(exc).__name__)
            return
        self._log.info("session.interrupt_sent", model_id=core.model_id, status=response.status)

    def _tell_waiting(self, timeout: float) -> None:
        """Say once what finishing waits for, how long, and what Ctrl-C leaves behind."""
        console = self._driver.console
        if console is None:
            return
        where = self.outbox_dir
        left = describe_pending(self._core.pending())
        if where is None:
            after = "Ctrl-C stops waiting, and what is not sent is lost (no outbox)"
        else:
            after = (
                f"Ctrl-C stops waiting and keeps it all in {where} for "
                f"`{sync_command(self._settings.api_root, where)}`"
            )
        console.say(
            f"model {self._core.model_id}: waiting up to {duration(timeout)} for "
            f"{console.hub} to take {left}; {after}"
        )

    def _notice_refusal(self) -> None:
        """Say once, on stderr, that sending stopped, why, and where the data goes."""
        error = self._core.error
        # INFO: the one line for people is the notice below (and the error raised later).
        self._log.info(
            "session.refused",
            model_id=self._core.model_id,
            status=getattr(error, "status", 0),
            error=str(error),
        )
        if self._refusal_noticed:
            return
        self._refusal_noticed = True
        if self._log is log:
            print(
                notice(self._core, self.outbox_dir, self._settings.api_root), file=sys.stderr
            )

    def _cancelled(self) -> None:
        """The service said a person cancelled the run: tell the trainer's callback."""
        self._log.warning("session.cancelled", model_id=self._core.model_id)
        callback = self._on_cancel
        if callback is not None:
            try:
                callback()
            except Exception as exc:  # the trainer's bug must not stop delivery
                self._log.error("session.on_cancel_failed", error=f"{type(exc).__name__}: {exc}")

    def _refusal_error(self) -> HubfsmError:
        return refusal_error(self._core, self.outbox_dir, self._settings.api_root)

    def _at_exit(self, why: str) -> None:
        reason = "the process exited before finish" if why == "exit" else why
        self._close(None, raise_refusal=False, why=reason)

    def __enter__(self) -> Session:
        if not self._accepting and self._core.machine.allows("start"):
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        # An exception on its way out wins over the news of a refusal.
        if exc_type is None:
            why = "closed before finish"
        elif issubclass(exc_type, KeyboardInterrupt):
            why = "Ctrl-C"
        else:
            why = exc_type.__name__  # the type only: a message may hold anything
        self._close(None, raise_refusal=exc is None, why=why)
