"""What a simulation profile is, the scenario one seed draws from it, and that scenario in force.

A :class:`Profile` says how every request may fail (a :class:`~transports.faults.FaultMix`),
which kinds of time windows change that (:class:`WindowRule`), whether the API key is
revoked mid-run, which refusals a refusing hub draws (:class:`Refusals`), and how the
session must end. :meth:`Profile.draw` turns it into one seed's :class:`Scenario`:
concrete windows on the virtual clock, a revocation time and a :class:`RefusalDraw`;
:class:`ScheduledFaults` puts it in force as virtual time passes. :func:`profile_table`
renders profiles for the docs, with the exact rate of every fault (:func:`mix_text`).
The profiles themselves are in :mod:`hubfsm.sim.profiles`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Literal

import attrs

from hubfsm.runtime.driver import Clock
from hubfsm.sim.machine import MachineFaults
from hubfsm.transport import Request, Response
from transports.faults import FaultMix, Faults

__all__ = [
    "HOUR",
    "MINUTE",
    "Expect",
    "Profile",
    "RefusalDraw",
    "Refusals",
    "Scenario",
    "Schedule",
    "ScheduledFaults",
    "Window",
    "WindowRule",
    "mix_text",
    "profile_table",
]

#: Seconds of the virtual clock in a minute and in an hour.
MINUTE = 60.0
HOUR = 3600.0

#: How a session must end: ``done``, or ``refused`` with an :class:`~hubfsm.errors.AuthError`
#: (sending stopped, every event kept).
Expect = Literal["done", "auth_refused"]


@attrs.frozen
class Window:
    """A span of time ``[start, end)`` during which ``mix`` replaces the base fault mix."""

    start: float
    end: float
    mix: FaultMix
    label: str


@attrs.frozen
class WindowRule:
    """How one kind of window is drawn for each seed.

    Attributes:
        label: What the window is (``outage``, ``429 burst``, ``partition``).
        count: ``(lo, hi)``: how many windows, drawn uniformly (both ends included).
        seconds: ``(lo, hi)``: each window's length, drawn uniformly.
        mix: The fault mix inside the window.
    """

    label: str
    count: tuple[int, int]
    seconds: tuple[float, float]
    mix: FaultMix

    @property
    def unreachable(self) -> bool:
        """True when no request gets through inside the window (the hub is cut off)."""
        return self.mix.connection_error + self.mix.timeout >= 1.0


@attrs.frozen
class Schedule:
    """The fault mix over time: ``base``, except inside a window (the first that matches)."""

    base: FaultMix
    windows: tuple[Window, ...] = ()

    def at(self, now: float) -> Window | None:
        """The window in force at ``now``, if any."""
        for window in self.windows:
            if window.start <= now < window.end:
                return window
        return None

    def mix_at(self, now: float) -> FaultMix:
        """The fault mix in force at ``now``."""
        window = self.at(now)
        return self.base if window is None else window.mix


@attrs.frozen
class Refusals:
    """The refusals a refusing hub draws for each seed (see the refusal table in the docs).

    Attributes:
        stops: The answers that stop all sending, one drawn per seed (0: none this seed):
            401 (key revoked), 302 (a redirect), 404 (model gone), 409 (already trained).
        stop_at: ``(lo, hi)``: when the stopping answer begins, as a share of the shortest
            possible training time.
        bad_epoch: Probability that one drawn epoch's metrics are refused with 400.
        bad_checkpoint: Probability that one drawn epoch's weights are refused with 422.
        heartbeat: Probability that heartbeats are refused with 409 from a drawn time on.
    """

    stops: tuple[int, ...] = (401, 302, 404, 409, 0)
    stop_at: tuple[float, float] = (0.2, 0.8)
    bad_epoch: float = 1.0
    bad_checkpoint: float = 0.5
    heartbeat: float = 0.5


@attrs.frozen
class RefusalDraw:
    """One seed's refusals: which answer stops sending and when, and what is refused."""

    stop: int = 0
    stop_at: float | None = None
    bad_epoch: int | None = None
    bad_checkpoint: int | None = None
    heartbeat_at: float | None = None


@attrs.frozen
class Scenario:
    """One seed's draw of a profile: the fault schedule, when the key is revoked, refusals."""

    schedule: Schedule
    revoke_at: float | None = None
    refusals: RefusalDraw | None = None


@attrs.frozen
class Profile:
    """A kind of hub and trainer to simulate.

    Attributes:
        name: The profile's name.
        summary: What it rehearses, in a line.
        faults: The fault mix of every request outside any window.
        windows: The kinds of windows each seed draws, inside the training time.
        revoke: ``(lo, hi)``: the key is revoked at this share of the shortest possible
            training time, drawn uniformly; None to keep it valid.
        epoch_seconds: The range of an epoch's virtual duration.
        patience: Virtual seconds the trainer waits for the hub to open the session, and
            for the final upload.
        http_faults: The server-side fault mix of ``--http`` runs, on a scaled-down clock.
        expect: How every session must end.
        crashes: ``(lo, hi)``: how many times the process dies, each time right after a
            request left (it may land; its answer is lost), and restarts from its outbox.
        refusals: The refusals a refusing hub draws per seed; None for a hub that
            refuses nothing (beyond a revoked key).
        abandon: The chance that, in a profile with crashes, the trainer's last life is
            killed between two of its calls and does not come back: ``hubfsm sync``
            then sends what the outbox and the journal hold.
        machine: The faults of the machine the trainer runs on (a full disk, I/O
            errors, a kill inside ``finish()``, values JSON cannot carry); None for none.
    """

    name: str
    summary: str
    faults: FaultMix = FaultMix()
    windows: tuple[WindowRule, ...] = ()
    revoke: tuple[float, float] | None = None
    epoch_seconds: tuple[float, float] = (20.0, 60.0)
    patience: float = 7200.0
    http_faults: FaultMix = FaultMix()
    expect: Expect = "done"
    crashes: tuple[int, int] = (0, 0)
    refusals: Refusals | None = None
    abandon: float = 0.0
    machine: MachineFaults | None = None

    @property
    def max_latency(self) -> float:
        """The longest latency any request may get, in or out of windows."""
        return max([self.faults.latency[1], *(rule.mix.latency[1] for rule in self.windows)])

    def draw(self, rng: random.Random, *, start: float, epochs: int) -> Scenario:
        """Draw one seed's scenario for a run of ``epochs`` epochs starting at ``start``.

        Windows and the revocation fall inside the shortest possible training time, so
        they always hit the session; a profile's ``patience`` outlasts its longest window.
        """
        horizon = max(1, epochs) * self.epoch_seconds[0]
        windows = []
        for rule in self.windows:
            for _ in range(rng.randint(*rule.count)):
                begin = start + rng.uniform(0.0, horizon)
                windows.append(
                    Window(begin, begin + rng.uniform(*rule.seconds), rule.mix, rule.label)
                )
        windows.sort(key=lambda w: (w.start, w.end))
        revoke_at = None if self.revoke is None else start + rng.uniform(*self.revoke) * horizon
        refusals = None
        spec = self.refusals
        if spec is not None:
            stop = rng.choice(spec.stops)
            at = start + rng.uniform(*spec.stop_at) * horizon
            last = max(1, epochs) - 1
            bad_epoch = rng.randint(0, last) if rng.random() < spec.bad_epoch else None
            bad_ckpt = rng.randint(0, last) if rng.random() < spec.bad_checkpoint else None
            beat = rng.uniform(start, start + horizon) if rng.random() < spec.heartbeat else None
            refusals = RefusalDraw(stop, at if stop else None, bad_epoch, bad_ckpt, beat)
        return Scenario(Schedule(self.faults, tuple(windows)), revoke_at, refusals)


# -- the scenario in force -------------------------------------------------------


class ScheduledFaults:
    """Wraps the seeded faults' handler to apply a :class:`Scenario`.

    Before each request it sets the faults' mix to the window in force (only when the
    window changes, so anyone else's change of mix lasts until the next boundary), and
    revokes the key once its time has come, both as virtual time passes; both are noted
    in the trace. Then the faults answer.
    """

    def __init__(
        self,
        faults: Faults,
        scenario: Scenario,
        clock: Clock,
        *,
        revoke: Callable[[], None],
        note: Callable[[str], None],
    ) -> None:
        self.faults = faults
        self.scenario = scenario
        self.clock = clock
        self._revoke = revoke
        self._note = note
        self._window: Window | None = None
        self._revoked = False

    def __call__(self, request: Request) -> Response:
        """Bring the scenario up to now, then hand ``request`` to the faults."""
        now = self.clock()
        window = self.scenario.schedule.at(now)
        if window is not self._window:
            if self._window is not None:
                self._note(f"{self._window.label} ends")
            if window is None:
                self.faults.mix = self.scenario.schedule.base
            else:
                self._note(f"{window.label} begins: {mix_text(window.mix)}")
                self.faults.mix = window.mix
            self._window = window
        revoke_at = self.scenario.revoke_at
        if not self._revoked and revoke_at is not None and now >= revoke_at:
            self._revoked = True
            self._revoke()
            self._note("the API key is revoked")
        return self.faults(request)


# -- the profiles in words -------------------------------------------------------


def _pct(p: float) -> str:
    return f"{p * 100:g}%"


def _span(lo: float, hi: float, unit: str = "s") -> str:
    return f"{lo:g} {unit}" if lo == hi else f"{lo:g}–{hi:g} {unit}"


def _duration(seconds: float) -> str:
    if seconds >= HOUR and seconds % HOUR == 0:
        return f"{seconds / HOUR:g} h"
    if seconds >= MINUTE and seconds % MINUTE == 0:
        return f"{seconds / MINUTE:g} min"
    return f"{seconds:g} s"


def mix_text(mix: FaultMix) -> str:
    """A fault mix in words, with its exact rates."""
    parts = []
    if mix.server_error:
        codes = "/".join(str(s) for s in mix.server_statuses)
        parts.append(f"{_pct(mix.server_error)} 5xx ({codes})")
    if mix.rate_limited:
        after = _span(*mix.retry_after)
        parts.append(f"{_pct(mix.rate_limited)} 429 (Retry-After {after})")
    if mix.timeout:
        parts.append(f"{_pct(mix.timeout)} timeouts")
    if mix.connection_error:
        parts.append(f"{_pct(mix.connection_error)} refused connections")
    if mix.lost_response:
        parts.append(f"{_pct(mix.lost_response)} lost answers (applied, then timed out)")
    if mix.latency[1]:
        parts.append(f"latency {_span(*mix.latency)}")
    return "; ".join(parts) or "none"


def _windows_text(profile: Profile) -> str:
    if not profile.windows:
        return "none"
    rows = []
    for rule in profile.windows:
        lo, hi = rule.count
        count = str(lo) if lo == hi else f"{lo}–{hi}"
        length = f"{_duration(rule.seconds[0])}–{_duration(rule.seconds[1])}"
        rows.append(f"{count} × {rule.label} of {length}: {mix_text(rule.mix)}")
    return "<br>".join(rows)


def profile_table(profiles: Mapping[str, Profile]) -> str:
    """``profiles`` as a Markdown table, with the exact rates of every fault."""
    rows = [
        "| profile | rehearses | every request (outside windows) | windows per seed "
        "| API key | epoch | trainer waits | must end | the machine "
        "| over `--http` (server side) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles.values():
        key = (
            "valid"
            if p.revoke is None
            else (f"revoked at {_pct(p.revoke[0])}–{_pct(p.revoke[1])} of the training time")
        )
        end = (
            "`done`"
            if p.expect == "done"
            else "`refused` with AuthError, every event kept (`failed` with AuthError, "
            "as for a bad key, when the key is revoked before the session has opened)"
        )
        if p.refusals is not None:
            r = p.refusals
            stops = ", ".join(str(code) for code in r.stops if code)
            key = (
                f"one of {stops} or none per seed, from {_pct(r.stop_at[0])}–"
                f"{_pct(r.stop_at[1])} of the training time; 400 on one epoch "
                f"({_pct(r.bad_epoch)} of seeds), 422 on one checkpoint "
                f"({_pct(r.bad_checkpoint)}), 409 on heartbeats ({_pct(r.heartbeat)})"
            )
            end = (
                "`done`, or `refused` naming the answer with every event kept (`failed` "
                "naming it when it refuses the opening, or still `resolved` after a Platform "
                "409 outlasts the opening's patience, the trainer told at the open); after "
                "the fix, a sync delivers all but the rejected records"
            )
        if p.abandon:
            # The trainer that gives up never calls finish(): what sync delivers ends
            # with the model loaded, not done.
            end += (
                f"; where the trainer gives up after a death ({_pct(p.abandon)} of seeds), "
                "`loaded`, with everything delivered by `hubfsm sync`"
            )
        rows.append(
            f"| `{p.name}` | {p.summary} | {mix_text(p.faults)} | {_windows_text(p)} | {key} "
            f"| {_span(*p.epoch_seconds)} | {_duration(p.patience)} | {end} "
            f"| {'none' if p.machine is None else p.machine.text()} "
            f"| {mix_text(p.http_faults)} |"
        )
    rows.append("")
    rows.append(
        "Windows start at a uniformly drawn time within the shortest possible training "
        "time; an overlap takes the earlier window. With `--http`, the same sessions run "
        "on a scaled-down real clock against a local hub that injects each profile's "
        "`http_faults` instead: an unreachable window becomes one partition that stops the "
        "local hub, the revocation removes the key from it, and the windows, the "
        "revocation and the refusals are drawn from the moment training starts. Deaths, "
        "machine faults (a kill inside `finish()`, values JSON cannot carry) and the "
        "refusing profile's answers happen over HTTP too (the refusals are answered in "
        "front of the socket); a failing disk happens on the simulated disk only, and on a "
        "real one the full-disk tests fill a small tmpfs."
    )
    return "\n".join(rows)
