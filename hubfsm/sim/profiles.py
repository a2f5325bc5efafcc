"""Simulation profiles: the hub's behaviour and the trainer's pace, with exact rates.

:data:`PROFILES` holds the profiles ``hubfsm simulate`` runs, :func:`select` picks them by
name, and :func:`describe` renders the table the docs show. What a profile is made of,
and how it draws one seed's :class:`~hubfsm.sim.scenario.Scenario`, is in
:mod:`hubfsm.sim.scenario`.
"""

from __future__ import annotations

from typing import Any

from hubfsm.sim.machine import MachineFaults
from hubfsm.sim.scenario import HOUR, MINUTE, Profile, Refusals, WindowRule, profile_table
from transports.faults import FaultMix

__all__ = ["MACHINE", "PLANNED", "PROFILES", "describe", "named", "select"]


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
                    (10 * MINUTE, 90 * MINUTE),
                    _OUTAGE,
                ),
                WindowRule(
                    "429 burst",
                    (1, 4),
                    (2 * MINUTE, 20 * MINUTE),
                    FaultMix(rate_limited=0.9, retry_after=(60.0, 900.0), latency=(0.5, 5.0)),
                ),
            ),
            patience=4 * HOUR,
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
                    (1 * HOUR, 4 * HOUR),
                    FaultMix(connection_error=0.8, timeout=0.2),
                ),
            ),
            patience=10 * HOUR,
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

_LIGHT = FaultMix(server_error=0.10, lost_response=0.05, latency=(0.01, 0.5))

#: The profiles of machine faults (a failing disk, a kill inside finish(), poison values).
MACHINE: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "full-disk",
            "outbox writes and snapshots fail with ENOSPC or EIO, the disk fills up and is "
            "freed later, the hub has outages, and the process dies 1–3 times: a failed "
            "write loses nothing",
            _LIGHT,
            # Outages let epochs pile up unsent, so what a failed write drops is missed.
            windows=(WindowRule("outage", (1, 2), (10 * MINUTE, 60 * MINUTE), _OUTAGE),),
            crashes=(1, 3),
            abandon=0.3,
            http_faults=FaultMix(server_error=0.10, lost_response=0.05),
            machine=MachineFaults(
                write_error=0.05,
                snapshot_error=0.10,
                full=(1, 2),
                full_seconds=(60.0, 900.0),
            ),
        ),
        Profile(
            "finish-kill",
            "the process is killed (SIGKILL) or terminated (SIGTERM) inside finish() and "
            "does not come back: hubfsm sync delivers the final weights",
            _LIGHT,
            crashes=(0, 1),
            http_faults=FaultMix(server_error=0.10, lost_response=0.05),
            machine=MachineFaults(finish_kill=1.0, sigterm=0.3),
        ),
        Profile(
            "poison",
            "the trainer logs values JSON cannot carry, and a dying process leaves such a "
            "record in its journal: one bad record never stops the rest",
            _LIGHT,
            crashes=(1, 2),
            abandon=0.3,
            http_faults=FaultMix(server_error=0.10, lost_response=0.05),
            machine=MachineFaults(poison=1.0, poison_journal=0.5),
        ),
    )
}

# The machine profiles the client passes run with the others (and in ``all``).
PROFILES.update({name: MACHINE[name] for name in ("finish-kill", "poison")})

#: Profiles that need parts still being built, with the reason; asking for one says so.
PLANNED: dict[str, str] = {
    "full-disk": (
        "on a full disk a request whose operation the outbox could not write still goes "
        "out, and a process killed before the write succeeds sends it again under a new "
        "key (invariant 2); run it from Python with run_seed(seed, "
        "profile=MACHINE['full-disk'])"
    ),
}


def named(name: str) -> Profile:
    """The profile called ``name``, planned machine profiles included.

    Raises:
        KeyError: No profile has that name.
    """
    return PROFILES[name] if name in PROFILES else MACHINE[name]


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


def describe(profiles: dict[str, Profile] | None = None) -> str:
    """The profiles (by default :data:`PROFILES`) as a Markdown table, with exact rates."""
    return profile_table(profiles or PROFILES)
