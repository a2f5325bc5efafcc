"""Leaving cleanly: at interpreter exit always, on SIGTERM/SIGINT only when asked.

The handlers chain to whatever was installed before, so hubfsm never takes a signal
away from the application that embeds it.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from hubfsm.core.engine import Core
from hubfsm.core.values import describe_pending
from hubfsm.runtime.refusal import sync_command

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


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
                self._previous[sig] = signal.getsignal(sig)
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
                f"`{sync_command(where, api_root)}`"
            )
        else:
            line = f"hubfsm: model {core.model_id}: nothing is kept in {where}"
        if lost is not None:
            line += f"; {lost} could not be written there (the disk is full or failing)"
        print(line, file=sys.stderr)
