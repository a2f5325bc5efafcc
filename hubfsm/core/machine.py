"""The session's state machine, declared once with ``transitions``, and what it means.

Everything that decides what may happen next lives here: the states, the events and
the transitions; what each state means for the rest of the session (:data:`TRAITS`);
and what each answer of the hub does (:data:`ANSWERS`). The core triggers the events
and reads the traits and the answers, the simulation checks every state change
against the table, and the docs draw it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from typing import Any, Literal

import attrs
from transitions import Machine, MachineError

from hubfsm.errors import IllegalEventError
from hubfsm.transport import Outcome, Response, TransportError

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

#: Every event the session's machine takes; :meth:`SessionMachine.fire` takes no other,
#: so a type checker finds an event fired that the table below does not declare.
Event = Literal[
    "parse",
    "load",
    "create",
    "fail",
    "start",
    "epoch_end",
    "checkpoint",
    "interrupt",
    "resume",
    "finish",
    "acknowledged",
    "refuse",
]

#: ``(event, sources, destination)``; a destination of None is an internal transition
#: (the state stays). Each failure has its own event, so no row needs a condition.
TRANSITIONS: tuple[tuple[Event, tuple[str, ...], str | None], ...] = (
    ("parse", ("unparsed",), "resolved"),
    ("load", ("resolved",), "loaded"),
    ("create", ("resolved",), "created"),
    # The session could not open: an identifier the dialect cannot open (unparsed), or
    # a hub that refused the key or the model, has no such model, holds it trained
    # already, answered what cannot be a model, or never answered at all (resolved).
    ("fail", ("unparsed", "resolved"), "failed"),
    ("start", ("created", "loaded"), "training"),
    ("epoch_end", ("training",), None),
    ("checkpoint", ("training",), None),
    ("interrupt", ("training", "final_uploading"), "resumable"),
    ("resume", ("resumable",), "training"),
    ("finish", ("training",), "final_uploading"),
    ("acknowledged", ("final_uploading",), "done"),
    # A refusal that stops all sending (a revoked key, a deleted or trained model, a
    # redirect) after the model was opened: the session keeps recording for a later sync.
    ("refuse", ("created", "loaded", "training", "resumable", "final_uploading"), "refused"),
    # While refused the trainer goes on: every event is recorded, nothing is sent.
    ("start", ("refused",), None),
    ("epoch_end", ("refused",), None),
    ("checkpoint", ("refused",), None),
    ("finish", ("refused",), None),
    ("interrupt", ("refused",), None),
    ("resume", ("refused",), None),
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
        opening: The model is not open yet: a refusal, or a hub that never answers,
            fails the session (``fail``) instead of stopping its sending.
        final: The final weights go up: the metrics flush waives the metrics limit,
            the final channel is served, and ``finish``'s deadline runs.
    """

    records: bool = False
    sends: bool = False
    heartbeats: bool = False
    settled: bool = False
    terminal: bool = False
    opening: bool = False
    final: bool = False


#: Every state's traits, declared beside the transitions (a test checks they agree).
TRAITS: dict[str, StateTraits] = {
    "unparsed": StateTraits(opening=True),
    "resolved": StateTraits(sends=True, opening=True),
    "created": StateTraits(sends=True),
    "loaded": StateTraits(sends=True),
    "training": StateTraits(records=True, sends=True, heartbeats=True),
    "resumable": StateTraits(sends=True, settled=True),
    "final_uploading": StateTraits(sends=True, heartbeats=True, final=True),
    "done": StateTraits(settled=True, terminal=True),
    "refused": StateTraits(records=True, settled=True),
    "failed": StateTraits(settled=True, terminal=True),
}

#: The events of the table, in order of first use (a test checks they are :data:`Event`'s).
EVENTS: tuple[Event, ...] = tuple(dict.fromkeys(row[0] for row in TRANSITIONS))

#: Every legal ``(source, event, destination)``; internal transitions keep the source.
LEGAL = frozenset(
    (source, event, dest or source) for event, sources, dest in TRANSITIONS for source in sources
)

#: The ``(source, event)`` pairs of internal transitions: no state change.
INTERNAL = frozenset(
    (source, event) for event, sources, dest in TRANSITIONS if dest is None for source in sources
)


class Answer(enum.Enum):
    """What an answer that is not a success does.

    The design's refusal table, by channel: see :data:`ANSWERS`. In an opening state
    any refusal fails the session instead (:attr:`StateTraits.opening`).
    """

    #: Worth another attempt unchanged: the retry policy says when.
    RETRY = "retry"
    #: One payload refused: that record is set aside, kept; the rest goes on.
    REJECT = "reject"
    #: A refused heartbeat: heartbeats stop for good, with a warning; data goes on.
    STOP_HEARTBEATS = "stop heartbeats"
    #: The key, the model or the hub's address is wrong: all sending stops
    #: (``refuse``), every trainer event is still kept for ``hubfsm sync``.
    STOP = "stop"


#: Statuses worth another attempt: the request may succeed later unchanged.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: Every server error, listed or not, is retried too.
SERVER_ERRORS = range(500, 1000)

#: Answers that refuse one payload, not the session: that record is set aside.
REJECTING_STATUSES = frozenset({400, 413, 422})

#: Answers that stop every channel: the key, the model or the hub's address is wrong.
#: (A redirect arrives as a 3xx: the key never follows one.)
STOPPING_STATUSES = frozenset({401, 403})

#: Every redirect: never followed with the key, so it stops every channel.
REDIRECTS = range(300, 400)

#: What a non-2xx answer does: ``(statuses, channels, answer)``, the first row that
#: matches wins; None matches any. The channels are the core's
#: (:data:`hubfsm.core.config.CHANNELS`); a transport error (no answer) is retried.
ANSWERS: tuple[tuple[Collection[int] | None, tuple[str, ...] | None, Answer], ...] = (
    (RETRYABLE_STATUSES, None, Answer.RETRY),
    (SERVER_ERRORS, None, Answer.RETRY),
    (STOPPING_STATUSES, None, Answer.STOP),
    (REDIRECTS, None, Answer.STOP),
    (None, ("heartbeat",), Answer.STOP_HEARTBEATS),
    (REJECTING_STATUSES, ("metrics", "checkpoint", "final"), Answer.REJECT),
    (None, None, Answer.STOP),
)


def answer_to(status: int, channel: str | None = None) -> Answer:
    """What the answer ``status`` to a request on ``channel`` does (see :data:`ANSWERS`).

    Without a channel, only whether it is retried is meaningful.
    """
    for statuses, channels, answer in ANSWERS:
        if (statuses is None or status in statuses) and (
            channels is None or channel is None or channel in channels
        ):
            return answer
    raise AssertionError("the last row of ANSWERS matches every answer")


class Verdict(enum.Enum):
    """What an outcome means for the operation that produced it."""

    SUCCESS = "success"
    RETRY = "retry"
    FATAL = "fatal"


#: Transport errors that, before the hub has ever answered, mean the address is wrong
#: rather than the hub busy: waiting will not fix them.
FIRST_CONTACT_FATAL = frozenset({"tls", "url"})


def classify(outcome: Outcome, *, first_contact: bool = False) -> Verdict:
    """Sort an outcome into success, retryable failure or fatal failure.

    Connection errors, timeouts, garbled answers and the statuses the machine's answer
    table retries (:data:`ANSWERS`) are retryable; every other
    non-2xx status is fatal.

    Args:
        outcome: The response or transport error.
        first_contact: True when the hub has never answered this session yet: a TLS
            failure or a URL that cannot be requested is then a configuration error
            (https against a plain http hub, a typo in the port), fatal at once.
    """
    if isinstance(outcome, TransportError):
        if first_contact and outcome.kind in FIRST_CONTACT_FATAL:
            return Verdict.FATAL
        return Verdict.RETRY
    if outcome.ok:
        return Verdict.SUCCESS
    if answer_to(outcome.status) is Answer.RETRY:
        return Verdict.RETRY
    return Verdict.FATAL


def retry_after_of(outcome: Outcome) -> float | None:
    """The hub's ``Retry-After`` in seconds, if the outcome carries one."""
    return outcome.retry_after if isinstance(outcome, Response) else None


class _Model:
    """The object ``transitions`` moves; private, so no trigger shadows a public name."""

    state: str = "unparsed"


def _declared() -> Machine:
    """The table as one ``transitions`` machine, with no model of its own.

    Building it walks every row (about a millisecond); the rows never change, so every
    session triggers its events on this one machine with its own model. A machine
    holds no per-model state between events (no queue, no callbacks), and a model
    never added to it is never referenced by it, so sessions do not keep each other
    alive or see each other's state.
    """
    rows: list[dict[str, Any]] = [
        {"trigger": event, "source": list(sources), "dest": dest}
        for event, sources, dest in TRANSITIONS
    ]
    return Machine(
        model=None,
        states=list(STATES),
        transitions=rows,
        initial="unparsed",
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )


_MACHINE = _declared()


class SessionMachine:
    """One session's machine: trigger events, read the state.

    Args:
        on_change: Called as ``on_change(source, event, dest)`` after every accepted event.
    """

    def __init__(self, on_change: Callable[[str, str, str], None] | None = None) -> None:
        self._model = _Model()
        self._on_change = on_change
        self._machine = _MACHINE
        #: What the current state means (see :data:`TRAITS`); kept as the state changes,
        #: so a poll reads it without a call. Set just after the state: another thread
        #: judges a state by ``TRAITS[state]``, from one reading of :attr:`state`.
        self.traits = TRAITS["unparsed"]

    @property
    def state(self) -> str:
        """The current state's name."""
        return self._model.state

    def fire(self, event: Event) -> str:
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
                self._machine.events[event].trigger(self._model)
            except (MachineError, KeyError):
                raise IllegalEventError(source, event) from None
            dest = self._model.state
            self.traits = TRAITS[dest]
        if self._on_change is not None:
            self._on_change(source, event, dest)
        return dest

    def allows(self, event: str) -> bool:
        """True when ``event`` is legal in the current state."""
        return any(self.state in sources for name, sources, _ in TRANSITIONS if name == event)

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
    for event, sources, dest in TRANSITIONS:
        for source in sources:
            edges.setdefault((source, dest or source), []).append(event)
    lines = ["stateDiagram-v2", "    [*] --> unparsed"]
    for (source, dest), events in edges.items():
        if source == dest == "refused":
            label = "any trainer event (kept, not sent)"
        elif dest == "failed":
            label = f"{' or '.join(events)} (cannot open)"
        else:
            label = ", ".join(events)
        lines.append(f"    {source} --> {dest}: {label}")
    for state, traits in TRAITS.items():
        if traits.terminal:
            lines.append(f"    {state} --> [*]")
    return "\n".join(lines) + "\n"
