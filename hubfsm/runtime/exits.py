"""Leaving cleanly: at interpreter exit always, on SIGTERM/SIGINT only when asked.

The handlers chain to whatever was installed before, so hubfsm never takes a signal
away from the application that embeds it. What a session leaves behind is said on the
way out: what is kept, and where (:func:`report_left`), and to a hubfsm hub, that the
run stopped before its end (:func:`say_interrupted`).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from hubfsm.core import protocol
from hubfsm.core.engine import Core
from hubfsm.core.values import describe_pending
from hubfsm.runtime.console import hub_name, keyed_sync_command, no_answer, say_line
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.settings import Settings
from hubfsm.transport import Outcome
from transports.settings import DEFAULT_API_ROOT

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

#: Seconds closing gives a hub that ``finish()`` gave up on and that still does not answer.
CLOSE_GRACE = 1.0


class ExitHooks:
    """Calls ``close`` once at interpreter exit and, if asked, on SIGTERM and SIGINT.

    Args:
        close: What to run (it must bound its own time), given why: ``exit`` or the
            signal's name (``SIGTERM``).
        signals: Whether to install signal handlers (main thread only).
    """

    def __init__(self, close: Callable[[str], None], *, signals: bool) -> None:
        self._close = close
        self._previous: dict[int, _Handler] = {}
        self._done = False
        atexit.register(self._at_exit)
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(sig)
                if previous == signal.SIG_IGN:
                    # Ignored (SIGINT of a job started in the background): the process
                    # goes on after it, so closing the session there would lose the rest.
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._on_signal)

    def _at_exit(self) -> None:
        self.run("exit")

    def run(self, why: str) -> None:
        """Run ``close`` if it has not run yet, and remove the hooks."""
        if self._done:
            return
        self._done = True
        try:
            self._close(why)
        finally:
            self.remove()

    def remove(self) -> None:
        """Unregister from atexit and put the previous signal handlers back."""
        self._done = True
        atexit.unregister(self._at_exit)
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.run(signal.Signals(signum).name)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def close_limit(
    timeout: float | None, exit_timeout: float, *, gave_up: bool, last: Outcome | None
) -> float:
    """Seconds closing sends for: ``timeout`` if given, else ``exit_timeout``.

    Once ``finish()`` gave up (``gave_up``) on a hub that still does not answer (the
    ``last`` outcome is no answer, or a 5xx), a short grace instead: finishing already
    waited its timeout for that hub and said what is kept, and the final weights are
    not resent before a later session or ``hubfsm sync``; a whole ``exit_timeout``
    more would only hold the trainer.
    """
    if timeout is not None:
        return timeout
    if gave_up and last is not None and no_answer(last):
        return min(exit_timeout, CLOSE_GRACE)
    return exit_timeout


def report_left(
    core: Core,
    pending: dict[str, int],
    where: Path | None,
    log: Any,
    *,
    tell: bool,
    kept: dict[str, int] | None = None,
    api_root: str | None = None,
) -> None:
    """Say what a closing session leaves behind: a log line, and (``tell``) a line for people.

    Args:
        core: The session's core.
        pending: What the hub has not acknowledged, as the core counts it.
        where: The outbox directory, if the session kept one.
        log: Where the log line goes.
        tell: Also print a line on stderr.
        kept: What is on disk (the outbox and its journal), if it was read: the count
            the user is told is kept, so that it never names more than is there.
        api_root: The session's hub: the printed command names it unless it is the
            public one, so that it works as printed.
    """
    on_disk = pending if kept is None else kept
    left = describe_pending(on_disk)
    missing = {kind: max(n - on_disk.get(kind, 0), 0) for kind, n in pending.items()}
    lost = describe_pending(missing) if any(missing.values()) else None
    # INFO: the line below tells people; the log line is for -v and log collectors.
    log.info(
        "session.closed_with_pending",
        model_id=core.model_id,
        pending=describe_pending(pending),
        kept=left,
        not_written=lost,
        state=core.state,
    )
    if where is not None and tell:
        if any(on_disk.values()):
            line = (
                f"hubfsm: model {core.model_id}: {left} not on the hub yet; kept in "
                f"{where}; they go first when this model's session opens again, or run "
                f"`{keyed_sync_command(where, api_root, core.config.protocol)}`"
            )
        else:
            line = f"hubfsm: model {core.model_id}: nothing is kept in {where}"
        if lost is not None:
            line += f"; {lost} could not be written there (the disk is full or failing)"
        say_line(line)


def say_interrupted(
    driver: Driver, settings: Settings, why: str, log: Any, *, worker: bool
) -> None:
    """Tell a hubfsm hub that the run stopped before its end, once, at most a request.

    The hub's pages then say ``interrupted`` (and why) where they could only guess
    ``stalled`` from the silence. Best effort: sent after the worker stopped (never
    beside one of its requests: ``worker`` says it still runs), not to the public HUB
    (whose wire has no such field), not on Platform (no heartbeats on its wire), not
    offline, after a refusal or before a ``Retry-After`` has passed; a failure only
    leaves the hub to notice the silence.
    """
    core = driver.core
    if (
        settings.offline
        or settings.protocol != "hub"
        or core.model_id is None
        or core.machine.refused
        or hub_name(settings.api_root) == DEFAULT_API_ROOT
        or worker
        # A hub that said "Retry-After" hears nothing more before then, a note included.
        or driver.clock() < core.schedule.hold_until
    ):
        return
    request = protocol.ended(core.model_id, core.agent_id, why)
    try:
        response = driver.transport.send(request)
    except Exception as exc:  # noqa: BLE001 - a note the hub may miss; never a failure
        log.info("session.interrupt_not_sent", error=type(exc).__name__)
        return
    log.info("session.interrupt_sent", model_id=core.model_id, status=response.status)
