"""Simulation profiles: the hub's behaviour and the trainer's pace, with exact rates.

A :class:`Profile` says how every request may fail (a :class:`~hubfsm.hub.faults.FaultMix`),
which kinds of time windows change that (outages, bursts of 429s, partitions), whether the
API key is revoked mid-run, and how the session must end. :meth:`Profile.draw` turns it
into one seed's :class:`Scenario`: concrete windows on the virtual clock and a revocation
time. :func:`describe` renders the table the docs show.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import attrs

from hubfsm.hub.faults import FaultMix

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


_MINUTE = 60.0
_HOUR = 3600.0

# Gateways answer during an outage, not the application. (Typed Any: the type mypy infers
# for FaultMix's tuple converter admits no literal tuple.)
_GATEWAY_STATUSES: Any = (502, 503, 504)
_OUTAGE = FaultMix(server_error=1.0, latency=(0.5, 20.0), server_statuses=_GATEWAY_STATUSES)

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "calm",
            "a healthy hub: the baseline; no retries at all",
            FaultMix(latency=(0.01, 0.2)),
        ),
        Profile(
            "flaky",
            "an unreliable hub: a third of requests fail in some way",
            FaultMix(
                server_error=0.20,
                rate_limited=0.05,
                timeout=0.05,
                lost_response=0.05,
                retry_after=(1.0, 30.0),
                latency=(0.01, 0.5),
            ),
            http_faults=FaultMix(
                server_error=0.20,
                rate_limited=0.05,
                timeout=0.02,
                lost_response=0.05,
                retry_after=(0.1, 1.0),
            ),
        ),
        Profile(
            "hostile",
            "long outages, bursts of 429s with long Retry-After, slow and lost answers",
            FaultMix(
                server_error=0.10,
                rate_limited=0.05,
                timeout=0.05,
                lost_response=0.10,
                retry_after=(5.0, 120.0),
                latency=(0.5, 20.0),
            ),
            windows=(
                WindowRule(
                    "outage",
                    (1, 3),
                    (10 * _MINUTE, 90 * _MINUTE),
                    _OUTAGE,
                ),
                WindowRule(
                    "429 burst",
                    (1, 4),
                    (2 * _MINUTE, 20 * _MINUTE),
                    FaultMix(rate_limited=0.9, retry_after=(60.0, 900.0), latency=(0.5, 5.0)),
                ),
            ),
            patience=4 * _HOUR,
            http_faults=FaultMix(
                server_error=0.15,
                rate_limited=0.10,
                timeout=0.03,
                lost_response=0.10,
                retry_after=(0.5, 1.0),
                latency=(0.0, 0.05),
            ),
        ),
        Profile(
            "partition",
            "the hub is unreachable for hours, then back; everything must get through",
            FaultMix(server_error=0.02, timeout=0.01, latency=(0.01, 0.5)),
            windows=(
                WindowRule(
                    "partition",
                    (1, 2),
                    (1 * _HOUR, 4 * _HOUR),
                    FaultMix(connection_error=0.8, timeout=0.2),
                ),
            ),
            patience=10 * _HOUR,
            http_faults=FaultMix(server_error=0.02),
        ),
        Profile(
            "revoked",
            "the API key is revoked mid-run: stop with AuthError, keep every event, no spinning",
            FaultMix(server_error=0.05, lost_response=0.05, latency=(0.01, 0.5)),
            revoke=(0.1, 0.9),
            http_faults=FaultMix(server_error=0.05, lost_response=0.05),
            expect="auth_refused",
        ),
        Profile(
            "crash",
            "the process dies 1–3 times at drawn requests and restarts from its outbox",
            FaultMix(server_error=0.10, lost_response=0.05, latency=(0.01, 0.5)),
            crashes=(1, 3),
            http_faults=FaultMix(server_error=0.10, lost_response=0.05),
        ),
        Profile(
            "refusing",
            "a hub that refuses: a 401, a redirect, a deleted or trained model mid-run, a 400 "
            "on one epoch, a 422 on one checkpoint, 409s on heartbeats; nothing accepted is lost",
            FaultMix(server_error=0.05, lost_response=0.05, latency=(0.01, 0.5)),
            http_faults=FaultMix(server_error=0.05, lost_response=0.05),
            refusals=Refusals(),
        ),
    )
}

#: Profiles that need parts still being built, with the reason; asking for one says so.
PLANNED: dict[str, str] = {}


def select(text: str) -> list[Profile]:
    """The profiles named by ``text``: one name, a comma list, or ``all``.

    Raises:
        ValueError: A name is unknown or not available yet.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("no profile named")
    chosen: list[Profile] = []
    for name in names:
        if name == "all":
            chosen.extend(PROFILES.values())
        elif name in PROFILES:
            chosen.append(PROFILES[name])
        elif name in PLANNED:
            raise ValueError(f"profile {name!r} is not available yet: {PLANNED[name]}")
        else:
            raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}, all")
    # A name given twice (or inside "all") runs once, in the order first named.
    return list({profile.name: profile for profile in chosen}.values())


# -- the docs' table ---------------------------------------------------------------


def _pct(p: float) -> str:
    return f"{p * 100:g}%"


def _span(lo: float, hi: float, unit: str = "s") -> str:
    return f"{lo:g} {unit}" if lo == hi else f"{lo:g}–{hi:g} {unit}"


def _duration(seconds: float) -> str:
    if seconds >= _HOUR and seconds % _HOUR == 0:
        return f"{seconds / _HOUR:g} h"
    if seconds >= _MINUTE and seconds % _MINUTE == 0:
        return f"{seconds / _MINUTE:g} min"
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


def describe(profiles: dict[str, Profile] | None = None) -> str:
    """The profiles as a Markdown table, with the exact rates of every fault."""
    rows = [
        "| profile | rehearses | every request (outside windows) | windows per seed "
        "| API key | epoch | trainer waits | must end | over `--http` (server side) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in (profiles or PROFILES).values():
        key = (
            "valid"
            if p.revoke is None
            else (f"revoked at {_pct(p.revoke[0])}–{_pct(p.revoke[1])} of the training time")
        )
        end = "`done`" if p.expect == "done" else "`refused` with AuthError, every event kept"
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
                "`done`, or `refused` naming the answer with every event kept; after the fix, "
                "a sync delivers all but the rejected records"
            )
        rows.append(
            f"| `{p.name}` | {p.summary} | {mix_text(p.faults)} | {_windows_text(p)} | {key} "
            f"| {_span(*p.epoch_seconds)} | {_duration(p.patience)} | {end} "
            f"| {mix_text(p.http_faults)} |"
        )
    rows.append("")
    rows.append(
        "Windows start at a uniformly drawn time within the shortest possible training "
        "time; an overlap takes the earlier window. With `--http`, the server injects each "
        "profile's `http_faults` instead, on a scaled-down clock: partitions stop the local "
        "hub, and the revocation removes the key from it. The crash profile's deaths and the "
        "refusing profile's refusals happen on the virtual clock only; over real sockets, "
        "the crash tests kill a real trainer with SIGKILL, and the session tests face "
        "each refusal."
    )
    return "\n".join(rows)
