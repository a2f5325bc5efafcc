"""The facade trainers call: :class:`Session`.

Every call from the training thread returns at once, except opening (which waits for
the hub to load or create the model) and :meth:`Session.finish` (which waits for the
final upload). The work happens on one background worker; what the hub has not
acknowledged is kept in a durable outbox (see :mod:`hubfsm.durable.outbox`).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hubfsm.core.machine import TRAITS
from hubfsm.core.values import Barrier, FinishPending, FinishRequested, Interrupted, Start
from hubfsm.errors import DeliveryIncomplete, HubfsmError
from hubfsm.logs import get_logger
from hubfsm.runtime import calls
from hubfsm.runtime.console import not_taken_in, notice, refusal_error, say_line, waiting_line
from hubfsm.runtime.driver import QUIET
from hubfsm.runtime.exits import ExitHooks, close_limit, report_left, say_interrupted
from hubfsm.runtime.factory import Parts, build, open_model
from hubfsm.runtime.session_views import SessionViews
from hubfsm.runtime.settings import SessionOptions, Settings
from hubfsm.transport import Transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from hubfsm.core.engine import Core

__all__ = ["Session"]

log = get_logger("hubfsm")

#: Seconds :meth:`Session.finish` waits in silence; past them it says what it waits for.
FINISH_QUIET = 5.0
#: Seconds :meth:`Session.finish` waits past its timeout for the worker to notice it.
FINISH_GRACE = 1.0


class Session(SessionViews):
    """A training session on the hub, for one model.

    Args:
        identifier: A model URL, ``apiKey_modelId``, a model id, or a local
            ``.pt``/``.yaml`` to create a model from (see
            :attr:`~hubfsm.runtime.settings.Settings.identifier`).
        transport: Where requests go; default an HTTP transport to ``api_root``.
        on_cancel: Called once, on the session's worker thread, when an answer says a
            person cancelled the run (see :attr:`cancelled`).
        **options: The session's options, each optional: ``api_key``, ``api_root``,
            ``web_root``, ``train_args`` (a new model's training arguments), ``name``,
            ``tags``, ``notes``, ``config``, ``open_timeout``, ``exit_timeout``,
            ``outbox``, ``outbox_dir``, ``journal``, ``offline``, ``handle_signals``,
            ``protocol`` and ``seed``, each described, with its default, as the
            :class:`~hubfsm.runtime.settings.Settings` field of its name.

    Raises:
        TypeError: An option the session does not take.
        IdentifierError: The identifier is in none of the accepted forms.
        HubError: The hub refused the key or the model (see its subclasses).
        HubUnavailableError: The hub did not answer within ``open_timeout``.
        OutboxLockedError: Another session holds this model's outbox.
    """

    def __init__(
        self,
        identifier: str | os.PathLike[str],
        *,
        transport: Transport | None = None,
        on_cancel: Callable[[], None] | None = None,
        **options: Unpack[SessionOptions],
    ) -> None:
        self._on_cancel = on_cancel
        resolved = Settings.resolve(os.fspath(identifier), **options)  # a Path, as open() takes
        self._setup(build(resolved, transport=transport))

    @classmethod
    def compose(cls, parts: Parts, *, on_cancel: Callable[[], None] | None = None) -> Session:
        """Open a session on parts already built (see :func:`hubfsm.runtime.factory.build`).

        It raises what the constructor raises.
        """
        session = cls.__new__(cls)
        session._on_cancel = on_cancel
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
        self._weights = parts.driver.inbox.weights
        self._accepting = False
        self._closed = False
        self._gave_up = False  # finish() stopped waiting: what is left waits in the outbox
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

    def _release(self) -> None:
        self._shell.stop(timeout=0.0)
        if self._durability is not None:
            # An outbox with nothing left is only clutter; a later session recreates it.
            # A worker still inside a request could be caught mid-step: keep it then.
            drained = not self._shell.alive and self._core.drained and not self._inbox
            self._durability.close(remove=drained, stale=drained and self._durability.disk_lags)

    # -- what the trainer calls -----------------------------------------------------

    def start(self) -> None:
        """Training begins: heartbeats start. Returns once the session is ``training``."""
        if not self._core.machine.allows("start") or self._accepting:
            raise calls.illegal_call(self._core.state, "start", closed=self._closed)
        try:
            self._shell.call(Start(), timeout=10.0)
        except TimeoutError:
            # The worker is inside a slow request (resending what the outbox kept):
            # Start waits in the inbox ahead of every later call, taken in in order.
            self._accepting = True
            return
        self._accepting = self._core.machine.records

    def log_metrics(self, metrics: Mapping[str, Any], *, epoch: int | None = None) -> None:
        """Queue one epoch's metrics; returns at once, and a crash cannot lose them.

        Args:
            metrics: Metric names (strings) to values: numbers, strings, booleans, None,
                and lists and dicts of them. numpy and torch scalars and arrays are
                converted; NaN and infinities are sent as JSON ``null``.
            epoch: The epoch, an int from 0; by default the one after the last logged.

        Raises:
            TypeError: A name is not a string, or a value cannot be sent (an integer
                beyond 64 bits, an object), or the epoch is no int: the message names
                it, and nothing is kept.
            ValueError: The epoch is negative.
        """
        if not self._accepting:
            raise calls.illegal_call(self._core.state, "log_metrics", closed=self._closed)
        if epoch is None:
            epoch = self._next_epoch
        elif type(epoch) is not int or not 0 <= epoch <= calls.MAX_EPOCH:
            epoch = calls.epoch_number(epoch, "log_metrics")
        if type(metrics) is not dict and not isinstance(metrics, Mapping):
            raise calls.metrics_not_a_mapping(metrics)
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

        Raises:
            FileNotFoundError: The file does not exist.
            TypeError: ``epoch`` is no int (ValueError: a negative one).
        """
        if not self._accepting:
            raise calls.illegal_call(self._core.state, "save_checkpoint", closed=self._closed)
        if type(epoch) is not int or not 0 <= epoch <= calls.MAX_EPOCH:
            # Checked only off the common path, as in log_metrics: a plain int in range
            # goes straight on, the training thread's every checkpoint.
            epoch = calls.epoch_number(epoch, "save_checkpoint")
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
            map50_95: The model's mAP50-95, sent with the weights (a NaN or an infinity
                is sent as 0, logged).
            timeout: Seconds to wait; past it the session becomes ``resumable``.

        Raises:
            TypeError: ``epoch`` is no int, or ``map50_95`` no number.
            ValueError: ``epoch`` is negative.
            DeliveryIncomplete: The upload did not complete within ``timeout``.
            HubError: The hub refused the key, the model or the upload: sending stopped,
                and everything (the final weights too) is kept for ``hubfsm sync``; the
                message names the hub's answer and where the data is.
        """
        if not self._accepting:
            raise calls.illegal_call(self._core.state, "finish", closed=self._closed)
        last = (
            max(self._next_epoch - 1, 0) if epoch is None else calls.epoch_number(epoch, "finish")
        )
        map50_95 = calls.map_value(map50_95)
        # A missing file is the caller's error, raised here.
        event = self._weights.offer_final(path, epoch=last, map50_95=map50_95, timeout=timeout)
        # Journaled before the wait: a kill while the worker is still inside a request
        # leaves the final weights for recovery, `hubfsm status` and `hubfsm sync`.
        self._hand_over_final(event, timeout)

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
        self._hand_over_final(FinishPending(timeout), timeout)

    def _hand_over_final(self, event: FinishRequested | FinishPending, timeout: float) -> None:
        """Have the worker take the final weights in, then wait for their upload."""
        # The worker copies the final weights as it takes them in: a few seconds at
        # least, whatever ``timeout`` says.
        wait = max(FINISH_QUIET, timeout)
        ends = self._shell.clock() + wait
        try:
            self._shell.call(event, timeout=wait)
        except TimeoutError:  # the worker is inside a request to a slow hub
            self._gave_up = True
            raise not_taken_in(wait, self.outbox_dir, self.pending()) from None
        finally:
            self._accepting = False
        try:
            self._settle(timeout, ends)
        except KeyboardInterrupt:  # the wait's line offers Ctrl-C: closing then waits briefly
            self._gave_up = True
            raise

    def _settle(self, timeout: float, ends: float) -> None:
        console = self._driver.console
        # With the hub lost, say at once what finishing waits for; else after a quiet spell.
        # Not for a wait no longer than that spell: its outcome is the one line to say.
        quiet = 0.0 if console is not None and console.lost else FINISH_QUIET
        if not self._shell.wait_for(lambda c: c.machine.settled, min(quiet, timeout)):
            if timeout > FINISH_QUIET:
                self._tell_waiting(timeout)
            # The worker's own deadline makes the session resumable at the timeout; past
            # it by a grace, the worker is inside a request that outlasts it (a hub that
            # drips its answer) and cannot see it, so the wait ends here instead.
            left = ends + FINISH_GRACE - self._shell.clock()
            self._shell.wait_for(lambda c: c.machine.settled, max(0.0, left))
        # One reading of the state, judged by its own traits: the worker may be moving it
        # on meanwhile, and sets a new state before the traits the machine keeps for it.
        state = self._core.machine.state
        traits = TRAITS[state]
        if traits.terminal and state != "failed":  # the final upload is acknowledged
            self._log.info("session.finished", model_id=self._core.model_id, **self.stats())
            return
        if self.offline and traits.settled and traits.sends:  # resumable, for `hubfsm sync`
            return
        if state == "refused":
            self._refusal_raised = True
            raise self._refusal_error()
        error = self._core.error
        self._gave_up = True
        if error is not None:
            raise error
        raise DeliveryIncomplete(f"final upload incomplete (state {state})", self.pending())

    def flush(self, *, timeout: float) -> bool:
        """Wait until nothing is pending (or ``timeout`` passes); True if all was sent."""
        # Everything queued before this call is taken in first, so it counts as pending.
        try:
            self._shell.call(Barrier(), timeout=timeout)
        except TimeoutError:  # the worker is inside a request that outlasts the wait
            return False
        drained = False

        def settled(core: Core) -> bool:
            nonlocal drained
            drained = core.drained
            return drained or not core.machine.sends

        return self._shell.wait_for(settled, timeout) and drained

    def close(self, *, timeout: float | None = None) -> None:
        """End the session: send what can be sent within ``timeout`` seconds, then stop.

        By default ``exit_timeout``; one second once :meth:`finish` gave up (or Ctrl-C
        stopped it) on a hub that still does not answer (its final weights wait for later).

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
        last = self._driver.last_outcome
        limit = close_limit(timeout, self.exit_timeout, gave_up=self._gave_up, last=last)
        interrupted = self._accepting
        if self._accepting:
            self._accepting = False
            self._shell.submit(Interrupted())
        self._shell.stop(timeout=0.0 if self.offline else limit)
        if interrupted:
            say_interrupted(self._driver, self._settings, why, self._log, worker=self._shell.alive)
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

    def _tell_waiting(self, timeout: float) -> None:
        """Say once what finishing waits for, how long, and what Ctrl-C leaves behind."""
        console = self._driver.console
        if console is not None:
            where, api_root = self.outbox_dir, self._settings.api_root
            console.say(waiting_line(self._core, console.hub, timeout, where, api_root))

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
            say_line(notice(self._core, self.outbox_dir, self._settings.api_root))

    def _cancelled(self) -> None:
        """The service said a person cancelled the run: tell the trainer's callback."""
        # INFO: the core's `run.cancelled` warning is the one line for people.
        self._log.info("session.cancelled", model_id=self._core.model_id)
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
