"""The docs' table of the simulation profiles, with the exact rate of every fault.

:func:`profile_table` renders any profiles; :func:`~hubfsm.sim.profiles.describe` renders
the profiles ``hubfsm simulate`` runs. :func:`mix_text` puts one fault mix in words.
"""

from __future__ import annotations

from collections.abc import Mapping

from hubfsm.sim.profile_types import HOUR, MINUTE, Profile
from transports.faults import FaultMix

__all__ = ["mix_text", "profile_table"]


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
