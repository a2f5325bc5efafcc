"""What one simulated run reports: its end, its figures, the invariants it broke.

Every world (in memory on a virtual clock, or over HTTP against a local hub, see
:mod:`hubfsm.sim.world` and :mod:`hubfsm.sim.http_world`) reports a :class:`SimResult`.
"""

from __future__ import annotations

import attrs

from hubfsm.sim.invariants import Entry, Violation


@attrs.frozen
class SimResult:
    """What one simulated session did, and which invariants it broke.

    Attributes:
        trace: The full trace; empty when the run was asked not to keep it and passed.
        error: The class name of the session's error, if it ended with one.
        http: True for a run over real HTTP against a local hub.
        protocol: The dialect the session spoke: ``hub`` or ``platform``.
        faults: Machine faults injected (failed writes and snapshots, full-disk writes,
            kills and terminations inside ``finish()``, poison values and records).
    """

    seed: int
    profile: str
    epochs: int
    state: str
    violations: tuple[Violation, ...]
    trace: tuple[Entry, ...]
    requests: int
    retries: int
    virtual_seconds: float
    wall_seconds: float
    error: str | None = None
    http: bool = False
    protocol: str = "hub"
    faults: int = 0

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return not self.violations

    def replay_command(self) -> str:
        """The command that replays this seed with its trace."""
        http = " --http" if self.http else ""
        if self.protocol != "hub":
            http += f" --protocol {self.protocol}"
        return (
            f"hubfsm simulate{http} --profile {self.profile} --epochs {self.epochs} "
            f"--seed {self.seed} --trace"
        )
