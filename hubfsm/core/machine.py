"""The session's state machine, declared once with ``transitions``.

The declaration below is the single source of truth: the core triggers its events,
the simulation checks every state change against it, and the docs draw it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    (
        "fail",
        ("resolved", "created", "loaded", "training", "resumable", "final_uploading"),
        "failed",
        False,
    ),
)

EVENTS = tuple(dict.fromkeys(row[0] for row in TRANSITIONS))

#: Every legal ``(source, event, destination)``; internal transitions keep the source.
LEGAL = frozenset(
    (source, event, dest or source) for event, sources, dest, _ in TRANSITIONS for source in sources
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


def to_mermaid() -> str:
    """Draw the declared machine as a Mermaid ``stateDiagram-v2`` block."""
    lines = ["stateDiagram-v2", "    [*] --> unparsed"]
    for event, sources, dest, guarded in TRANSITIONS:
        label = event if dest is None or guarded or dest != "failed" else f"{event} (error)"
        if dest == "failed" and event == "fail":
            label = "fail (fatal hub error)"
        for source in sources:
            lines.append(f"    {source} --> {dest or source}: {label}")
    lines.append("    done --> [*]")
    lines.append("    failed --> [*]")
    return "\n".join(lines) + "\n"
