"""What a session tells the person at the terminal: one line per event, on standard error.

The log says what happens per attempt (``request.failed``, ``request.waiting`` at INFO,
shown with ``-v`` or an application's own logging set-up); a person reads one line when
the hub is lost, with what is queued, and one when it is back. A clean run says nothing.

When the hub refuses the key or the model, sending stops and recording goes on (the
``refused`` state); the trainer hears of it once on stderr (:func:`notice`), and once as
the error :meth:`~hubfsm.runtime.session.Session.finish` or
:meth:`~hubfsm.runtime.session.Session.close` raises (:func:`refusal_error`), both
saying where the data is kept and how ``hubfsm sync`` delivers it.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from hubfsm import env
from hubfsm.core.engine import Core
from hubfsm.core.platform import PLATFORM_API_ROOT
from hubfsm.core.values import describe_pending
from hubfsm.durable.survey import survey
from hubfsm.errors import (
    AuthError,
    DeliveryIncomplete,
    HubError,
    HubfsmError,
    ModelNotFoundError,
    ModelTrainedError,
)
from hubfsm.logs import get_logger
from hubfsm.transport import Outcome, Response, TransportError
from transports.settings import DEFAULT_API_ROOT

log = get_logger("hubfsm")

#: Attempts in a row without an answer from the hub before it counts as lost: one or two
#: are the everyday faults that retries absorb without anyone needing to know.
LOST_AFTER = 3
#: Transport errors that, before any answer, say nothing listens at the address.
NOBODY_THERE = ("refused", "dns")


def hub_name(api_root: str | None) -> str:
    """The API root a session contacts, as a person should read it."""
    return (api_root or env.api_root() or DEFAULT_API_ROOT).rstrip("/")


def line_start() -> str:
    """A newline when an open progress bar may have left the cursor mid-line, else ``""``.

    A trainer's bar (ultralytics' epoch bar) is redrawn with carriage returns and ends
    its line only when it closes: a line written meanwhile (a SIGTERM or a lost hub
    mid-epoch) would be glued to it. Only a bar already imported can be open.
    """
    std = sys.modules.get("tqdm.std")
    bars = getattr(getattr(std, "tqdm", None), "_instances", ())
    return "\n" if list(bars) else ""  # a copy: another thread may close a bar meanwhile


def say_line(line: str) -> None:
    """Print one line for people on standard error, on a line of its own."""
    print(line_start() + line, file=sys.stderr)


def duration(seconds: float) -> str:
    """``45 s``, ``10 min``, ``2 h``: how long a wait is, rounded for reading."""
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h".replace(".0 h", " h")


def waiting_line(
    core: Core, hub: str, timeout: float, where: Path | None, api_root: str | None
) -> str:
    """What finishing waits for, how long, and what Ctrl-C leaves behind."""
    left = describe_pending(core.pending())
    if where is None:
        after = "Ctrl-C stops waiting, and what is not sent is lost (no outbox)"
    else:
        after = (
            f"Ctrl-C stops waiting and keeps it all in {where} for "
            f"`{keyed_sync_command(where, api_root, core.config.protocol)}`"
        )
    return (
        f"model {core.model_id}: waiting up to {duration(timeout)} for {hub} to take "
        f"{left}; {after}"
    )


def no_answer(outcome: Outcome) -> bool:
    """True when the hub did not answer at all, or answered that it cannot serve (5xx)."""
    return isinstance(outcome, TransportError) or outcome.status >= 500


class Console:
    """Tells the person running a session when the hub is lost and when it is back.

    Called on the driver's thread after each outcome has been taken in.

    Args:
        hub: The hub as a line names it: ``the hub at URL``, or ``the hub``.
        open_timeout: Seconds opening the session waits for the hub.
        stream: Where the lines go; default standard error at the time of writing.
        training: A trainer runs the session (training goes on while the hub is lost);
            False for ``hubfsm sync``, which has only what is queued.
    """

    def __init__(
        self,
        hub: str,
        *,
        open_timeout: float = 120.0,
        stream: TextIO | None = None,
        training: bool = True,
    ) -> None:
        self.hub = hub
        self.open_timeout = open_timeout
        self.training = training
        self._stream = stream
        #: Attempts in a row without an answer, per channel.
        self._failures: dict[str, int] = {}
        self._lost_at: float | None = None
        #: Channels whose run of failures was announced: until one of them is answered,
        #: its failures are old news (one failing channel must not flap lost, back, lost).
        self._announced: set[str] = set()

    @property
    def lost(self) -> bool:
        """True from the line saying the hub is lost until the one saying it is back."""
        return self._lost_at is not None

    def say(self, line: str) -> None:
        """Write one line for people (a closed or missing stream is no reason to fail)."""
        stream = self._stream if self._stream is not None else sys.stderr
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            print(f"{line_start()}hubfsm: {line}", file=stream, flush=True)

    def still_opening(self, now: float, waited: float) -> None:
        """Say once that opening has waited ``waited`` seconds for an answer, if not said.

        For a hub that takes the connection and never answers: each attempt then waits
        out the read timeout (60 s), so the lost line (after three attempts) came only
        after the open timeout had passed, and the trainer waited minutes in silence.
        """
        if self.lost:
            return
        self._lost_at = now - waited
        self.say(
            f"no answer yet from {self.hub} after {duration(waited)}; trying for up to "
            f"{duration(self.open_timeout)} to open the model"
        )

    def outcome(self, core: Core, channel: str, outcome: Outcome, now: float) -> None:
        """Take in one attempt's outcome on ``channel``; say when the hub is lost or back."""
        if isinstance(outcome, Response) and not no_answer(outcome):
            self._failures[channel] = 0
            self._announced.discard(channel)
            lost_at = self._lost_at
            if lost_at is not None:
                self._lost_at = None
                self.say(f"{self.hub} is back after {duration(round(now - lost_at))}")
            return
        failures = self._failures[channel] = self._failures.get(channel, 0) + 1
        if failures < LOST_AFTER or self.lost or core.machine.failed:
            return
        if channel in self._announced:
            return
        self._announced.add(channel)
        if core.machine.traits.opening:
            if (
                not core.answered
                and isinstance(outcome, TransportError)
                and (outcome.kind in NOBODY_THERE)
            ):
                return  # nothing there at all: opening fails within seconds, and says so
            # Opening: the trainer is blocked in the constructor; say who it waits for.
            self._lost_at = now
            self.say(
                f"no answer yet from {self.hub} ({_reason(outcome)}); trying for up to "
                f"{duration(self.open_timeout)} to open the model"
            )
            return
        if not core.machine.sends:
            return
        if (
            not (self.training or core.answered)
            and isinstance(outcome, TransportError)
            and (outcome.kind in NOBODY_THERE)
        ):
            return  # sync's first contact: it fails within seconds, and says so
        self._lost_at = now
        pending = core.pending()
        # Once the final weights are queued, training is over: nothing goes on.
        goes_on = "training goes on, and " if self.training and not pending["final"] else ""
        self.say(
            f"lost {self.hub} ({_reason(outcome)}); {goes_on}"
            f"what is queued waits until it is back: {describe_pending(pending)}"
        )


def _reason(outcome: Outcome) -> str:
    if isinstance(outcome, TransportError):
        text = str(outcome)
        # "POST /v1/models/X: 127.0.0.1:9 refused the connection": the path says nothing
        # to a person, the reason does.
        return text.split(": ", 1)[1] if ": " in text else text
    return f"{outcome.status} {outcome.message}".rstrip()


# -- a refusal: what is kept, where, and how to send it -------------------------------


def same_hub(one: str, other: str) -> bool:
    """True when two API roots name the same hub: scheme, host and port."""
    a, b = urlsplit(one.strip()), urlsplit(other.strip())
    try:
        return (a.scheme.lower(), a.hostname, a.port) == (b.scheme.lower(), b.hostname, b.port)
    except ValueError:  # a port that is not a number: compare the text
        return one.strip().rstrip("/") == other.strip().rstrip("/")


def key_variable(protocol: str) -> str:
    """The variable ``hubfsm sync`` reads the key of an outbox of ``protocol`` from."""
    return env.PLATFORM_API_KEY if protocol == "platform" else env.API_KEY


def keyed_sync_command(where: Path, api_root: str | None, protocol: str = "hub") -> str:
    """The ``hubfsm sync`` command that sends what ``where`` keeps, as it works printed.

    It names the hub unless it is the dialect's public one, and takes the key from the
    variable sync reads for the outbox's dialect (``--key`` would show it to other
    users in ``ps``).
    """
    public = PLATFORM_API_ROOT if protocol == "platform" else DEFAULT_API_ROOT
    words = ["hubfsm", "sync"]
    if api_root and not same_hub(api_root, public):
        words += ["--hub", api_root]
    words.append(str(where))
    return f"{key_variable(protocol)}=... {shlex.join(words)}"


def advice(
    error: HubfsmError | None, where: Path, api_root: str | None = None, protocol: str = "hub"
) -> str:
    """What to do about a refusal so that ``hubfsm sync`` can deliver what is kept."""
    command = keyed_sync_command(where, api_root, protocol)
    if isinstance(error, AuthError):
        return f"fix the key and run `{command}` with the new key"
    if isinstance(error, ModelNotFoundError | ModelTrainedError):
        return (
            f"the hub takes no more data for this model; `hubfsm status {where}` lists what is kept"
        )
    if isinstance(error, HubError) and 300 <= error.status < 400:
        return (
            f"check the API root and run "
            f"`{key_variable(protocol)}=... hubfsm sync --hub API_ROOT {where}`"
        )
    if isinstance(error, HubError) and error.channel == "final":
        return f"`hubfsm status {where}` shows the record the hub refused"
    return f"run `{command}` once the cause is fixed"


def notice(core: Core, directory: Path | None, api_root: str | None = None) -> str:
    """The line a trainer reads on stderr when sending stops."""
    error = core.error
    if directory is None:
        where = "in memory only (no outbox): it is lost when the process exits"
    else:
        where = f"in {directory}; {advice(error, directory, api_root, core.config.protocol)}"
    return (
        f"hubfsm: model {core.model_id}: {error}. Nothing more is sent; every "
        f"epoch, checkpoint and the final weights are still kept, {where}"
    )


def refusal_error(core: Core, directory: Path | None, api_root: str | None = None) -> HubfsmError:
    """The refusal, as the error to raise: the hub's answer, what is kept, and where."""
    error = core.error
    parts = [describe_pending(core.pending())] if core.drained is False else []
    rejected = len(core.rejected)
    if rejected:
        parts.append(f"{rejected} rejected record{'s' if rejected > 1 else ''}")
    kept = " and ".join(parts) or "nothing more"
    if directory is None:
        where = "in memory only (no outbox), so it is lost when the process exits"
    else:
        where = f"in {directory}; {advice(error, directory, api_root, core.config.protocol)}"
    message = f"{error}; {kept} kept {where}"
    if isinstance(error, HubError):
        return type(error)(message, status=error.status, channel=error.channel)
    return HubfsmError(message)


def not_taken_in(
    wait: float, directory: Path | None, pending: dict[str, int]
) -> DeliveryIncomplete:
    """What finishing raises when the worker did not take the final weights in."""
    kept = f"; they are kept in {directory}" if directory is not None else ""
    return DeliveryIncomplete(
        f"the final weights were not taken in within {wait:g}s: the worker is still "
        f"inside a request to the hub, which answers slowly; it uploads them once that "
        f"request ends{kept}",
        pending,
    )


#: The earlier runs a new model's notice names by model id; the rest are counted.
STRANDED_NAMED = 2


def report_stranded(where: Path, api_root: str | None, protocol: str) -> None:
    """Say once, as a new model opens, which earlier runs' outboxes still hold records.

    A script restarted after a kill makes a new model from its ``.yaml``: what the
    killed run kept would wait in its own outbox, unnoticed, for a ``hubfsm sync``
    nobody thinks to run. Only outboxes for the same hub and dialect, held by no running
    session, count; the notice never stops a session.

    Args:
        where: The new model's outbox directory (its parent is the outbox root).
        api_root: The session's hub.
        protocol: The session's dialect, for the sync command's key variable.
    """
    try:
        found = survey(where.parent)
    except Exception as exc:  # a root it cannot read is sync's to report, not this run's
        log.info("session.stranded_unread", error=f"{type(exc).__name__}: {exc}")
        return
    stranded = [
        info
        for info in found.infos
        if info.directory != where
        and not info.in_use
        and any(info.pending.values())
        and info.protocol == protocol  # the printed command's key is the dialect's
        and (info.hub is None or api_root is None or same_hub(info.hub.api_root, api_root))
    ]
    if not stranded:
        return
    named = [f"model {i.model_id}: {describe_pending(i.pending)}" for i in stranded]
    more = len(named) - STRANDED_NAMED
    listed = "; ".join(named[:STRANDED_NAMED]) + (f"; {more} more" if more > 0 else "")
    runs = (
        "an earlier run's outbox still holds"
        if len(stranded) == 1
        else f"{len(stranded)} earlier runs' outboxes still hold"
    )
    say_line(
        f"hubfsm: {runs} records for this hub ({listed}); this run is a new model, so they "
        f"wait for `{keyed_sync_command(where.parent, api_root, protocol)}` "
        "(`hubfsm status` lists them)"
    )
