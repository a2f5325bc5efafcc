"""The session's state machine, declared once with ``transitions``.

The declaration below is the single source of truth: the core triggers its events,
the simulation checks every state change against it, and the docs draw it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from transitions import Machine, MachineError

from hubfsm.errors import IllegalEventError

STATES = (
    "unparsed",
    "resolved",
    "created",
    "loaded",
    "training",
    "resumable",
    "final_uploading",
    "done",
    "refused",
    "failed",
)

#: ``(event, sources, destination, guarded)``: a guarded row applies only when the
#: trigger says ``ok=True``; the unguarded row with the same event is its failure branch.
TRANSITIONS: tuple[tuple[str, tuple[str, ...], str | None, bool], ...] = (
    ("parse", ("unparsed",), "resolved", True),
    ("parse", ("unparsed",), "failed", False),
    ("load", ("resolved",), "loaded", True),
    ("load", ("resolved",), "failed", False),
    ("create", ("resolved",), "created", True),
    ("create", ("resolved",), "failed", False),
    ("start", ("created", "loaded"), "training", False),
    ("epoch_end", ("training",), None, False),
    ("checkpoint", ("training",), None, False),
    ("interrupt", ("training", "final_uploading"), "resumable", False),
    ("resume", ("resumable",), "training", False),
    ("finish", ("training",), "final_uploading", False),
    ("acknowledged", ("final_uploading",), "done", False),
    # A refusal that stops all sending (a revoked key, a deleted or trained model, a
    # redirect) after the model was opened: the session keeps recording for a later sync.
    (
        "refuse",
        ("created", "loaded", "training", "resumable", "final_uploading"),
        "refused",
        False,
    ),
    # While refused the trainer goes on: every event is recorded, nothing is sent.
    ("start", ("refused",), None, False),
    ("epoch_end", ("refused",), None, False),
    ("checkpoint", ("refused",), None, False),
    ("finish", ("refused",), None, False),
    ("interrupt", ("refused",), None, False),
    ("resume", ("refused",), None, False),
)


@attrs.frozen
class StateTraits:
    """What a state means for the rest of the session, so no module compares names.

    Attributes:
        records: The trainer's events (epochs, checkpoints, the final weights) are
            accepted and kept.
        sends: Requests go out: what is pending is delivered.
        heartbeats: Heartbeats are due.
        settled: A caller waiting for the session to finish may stop waiting.
        terminal: No event leaves the state.
    """

    records: bool = False
    sends: bool = False
    heartbeats: bool = False
    settled: bool = False
    terminal: bool = False


#: Every state's traits, declared beside the transitions (a test checks they agree).
TRAITS: dict[str, StateTraits] = {
    "unparsed": StateTraits(),
    "resolved": StateTraits(sends=True),
    "created": StateTraits(sends=True),
    "loaded": StateTraits(sends=True),
    "training": StateTraits(records=True, sends=True, heartbeats=True),
    "resumable": StateTraits(sends=True, settled=True),
    "final_uploading": StateTraits(sends=True, heartbeats=True),
    "done": StateTraits(settled=True, terminal=True),
    "refused": StateTraits(records=True, settled=True),
    "failed": StateTraits(settled=True, terminal=True),
}

EVENTS = tuple(dict.fromkeys(row[0] for row in TRANSITIONS))

#: Every legal ``(source, event, destination)``; internal transitions keep the source.
LEGAL = frozenset(
    (source, event, dest or source) for event, sources, dest, _ in TRANSITIONS for source in sources
)

#: The ``(source, event)`` pairs of internal transitions: no state change, no condition.
INTERNAL = frozenset(
    (source, event)
    for event, sources, dest, guarded in TRANSITIONS
    if dest is None and not guarded
    for source in sources
)


class _Model:
    """The object ``transitions`` decorates; private, so no trigger shadows a public name."""

    state: str

    def ok(self, ok: bool = True) -> bool:
        return ok


class SessionMachine:
    """One session's machine: trigger events, read the state.

    Args:
        on_change: Called as ``on_change(source, event, dest)`` after every accepted event.
    """

    def __init__(self, on_change: Callable[[str, str, str], None] | None = None) -> None:
        self._model = _Model()
        self._on_change = on_change
        rows: list[dict[str, Any]] = []
        for event, sources, dest, guarded in TRANSITIONS:
            row: dict[str, Any] = {"trigger": event, "source": list(sources), "dest": dest}
            if guarded:
                row["conditions"] = "ok"
            rows.append(row)
        self._machine = Machine(
            model=self._model,
            states=list(STATES),
            transitions=rows,
            initial="unparsed",
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    @property
    def state(self) -> str:
        """The current state's name."""
        return self._model.state

    def fire(self, event: str, *, ok: bool = True) -> str:
        """Trigger ``event`` and return the new state.

        Raises:
            IllegalEventError: When ``event`` is not allowed in the current state.
        """
        source = self._model.state
        if (source, event) in INTERNAL:
            # An epoch or a checkpoint while training: ``transitions`` would look the
            # row up and change nothing, at a quarter of a simulated epoch's cost.
            dest = source
        else:
            try:
                self._machine.events[event].trigger(self._model, ok=ok)
            except (MachineError, KeyError):
                raise IllegalEventError(source, event) from None
            dest = self._model.state
        if self._on_change is not None:
            self._on_change(source, event, dest)
        return dest

    def allows(self, event: str) -> bool:
        """True when ``event`` is legal in the current state."""
        return any(self.state in sources for name, sources, _, _ in TRANSITIONS if name == event)

    @property
    def traits(self) -> StateTraits:
        """What the current state means (see :data:`TRAITS`)."""
        return TRAITS[self._model.state]

    @property
    def records(self) -> bool:
        """True when the trainer's events are accepted and kept."""
        return TRAITS[self._model.state].records

    @property
    def sends(self) -> bool:
        """True when pending requests go out."""
        return TRAITS[self._model.state].sends

    @property
    def heartbeats(self) -> bool:
        """True when heartbeats are due."""
        return TRAITS[self._model.state].heartbeats

    @property
    def settled(self) -> bool:
        """True when a caller waiting for the session to finish may stop waiting."""
        return TRAITS[self._model.state].settled

    @property
    def refused(self) -> bool:
        """True when a refusal stopped all sending and the session only records."""
        return self._model.state == "refused"

    @property
    def failed(self) -> bool:
        """True when the session could not open (bad key, missing or trained model)."""
        return self._model.state == "failed"


def to_mermaid() -> str:
    """Draw the declared machine as a Mermaid ``stateDiagram-v2`` block.

    Each pair of states gets one arrow whose label names all its events: Mermaid draws
    parallel arrows on top of each other, labels and all.
    """
    edges: dict[tuple[str, str], list[str]] = {}
    for event, sources, dest, _guarded in TRANSITIONS:
        for source in sources:
            edges.setdefault((source, dest or source), []).append(event)
    lines = ["stateDiagram-v2", "    [*] --> unparsed"]
    for (source, dest), events in edges.items():
        if source == dest == "refused":
            label = "any trainer event (kept, not sent)"
        elif dest == "failed":
            label = f"{' or '.join(events)} (error)"
        else:
            label = ", ".join(events)
        lines.append(f"    {source} --> {dest}: {label}")
    for state, traits in TRAITS.items():
        if traits.terminal:
            lines.append(f"    {state} --> [*]")
    return "\n".join(lines) + "\n"
