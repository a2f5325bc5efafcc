"""The invariants of a session checked while a simulation runs, and the trace it records.

A :class:`Checker` watches every request, outcome and state change of one simulated
session and records a structured trace (:class:`Entry`); each broken invariant becomes a
:class:`Violation` (and a trace entry). :func:`render_text` and :func:`render_json` turn
a trace into text or JSON lines; both are pure, so one seed always prints the same bytes.
What a run left is checked at its end by :mod:`hubfsm.sim.ends`, into the same
checker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import attrs

from hubfsm.core.config import ChannelPolicies, RetryPolicy
from hubfsm.core.machine import LEGAL, TRAITS, Verdict, classify, retry_after_of
from hubfsm.core.values import Send
from hubfsm.transport import Outcome, TransportError

#: Rounding slack for comparisons of virtual times.
EPS = 1e-6

#: The number of a violation that is no invariant of the design: the run itself raised.
CRASH = 0

#: The machine-fault invariant: what a process leaves on disk (outbox and journal) holds
#: every event it accepted that is not on the hub, and no temporary file of a failed write.
FAILED_WRITE = 9

#: What each invariant of the design guards, in a few words, for a failure report (the
#: numbers alone sent a reader to the docs' list).
TITLES = {
    CRASH: "the run raised",
    1: "no epoch lost",
    2: "nothing takes effect twice",
    3: "the weights on the hub are the ones handed over (final and checkpoints)",
    4: "every state change is a declared transition",
    5: "rate limits hold",
    6: "retries follow the policy, and a refusal stops sending",
    7: "the API key is never shown",
    8: "the same seed gives the same trace",
    9: "a failed write or a death loses nothing",
    10: "the Platform dialect's own rules",
}


@attrs.frozen
class Violation:
    """One broken invariant.

    Attributes:
        number: The invariant's number in the design (1 to 9), or :data:`CRASH`.
        time: Seconds since the session started when it was seen.
        message: What was wrong.
    """

    number: int
    time: float
    message: str

    def __str__(self) -> str:
        what = "crash" if self.number == CRASH else f"invariant {self.number}"
        return f"{what} at t={self.time:.3f}: {self.message}"


@attrs.frozen
class Entry:
    """One line of a trace.

    Attributes:
        t: Seconds since the session started.
        state: The machine's state when it happened (the source, for a transition).
        event: A machine event (``load``, ``epoch_end``, ...), ``send``, ``recv``,
            ``scenario`` (a fault window, a revocation) or ``violation``.
        dest: A transition's destination.
        op: The operation's id, and ``attempt`` its attempt from 1 (requests).
        channel: ``control``, ``heartbeat``, ``metrics``, ``checkpoint`` or ``final``.
        method: The HTTP method and ``path`` the request path (sends).
        status: The HTTP status (answers), or ``error`` the transport error's kind.
        retry_after: The hub's ``Retry-After`` in seconds.
        message: The hub's message, the error, the scenario's or the violation's text.
        invariant: The broken invariant's number (violations).
    """

    t: float
    state: str
    event: str
    dest: str | None = None
    op: int | None = None
    attempt: int | None = None
    channel: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    message: str | None = None
    invariant: int | None = None

    def text(self) -> str:
        """The entry as one line of text."""
        head = f"{self.t:11.3f} {self.state:<15} "
        event = self.event
        if event == "violation":
            what = (
                "CRASH" if self.invariant == CRASH else f"VIOLATION of invariant {self.invariant}"
            )
            return f"{head}{what}: {self.message}"
        if event == "send":
            return f"{head}send #{self.op}.{self.attempt} {self.channel} {self.method} {self.path}"
        if event == "recv":
            if self.status is not None:
                what = f"{self.status} {self.message or ''}".rstrip()
            else:
                what = f"{self.error}: {self.message}"
            if self.retry_after is not None:
                what += f" (retry-after {self.retry_after:.3f})"
            return f"{head}recv #{self.op}.{self.attempt} {self.channel} {what}"
        if event == "scenario":
            return f"{head}~ {self.message}"
        return f"{head}{event} -> {self.dest}"

    def json_fields(self) -> dict[str, Any]:
        """The entry's fields that are set, in declaration order, times rounded to 1 µs."""
        row: dict[str, Any] = {}
        for field, value in zip(_FIELDS, attrs.astuple(self, recurse=False), strict=True):
            if value is not None:
                row[field] = round(value, 6) if isinstance(value, float) else value
        return row


_FIELDS = tuple(field.name for field in attrs.fields(Entry))


def render_text(trace: Iterable[Entry]) -> str:
    """A trace as text, one entry a line."""
    return "\n".join(entry.text() for entry in trace)


def render_json(trace: Iterable[Entry], **context: Any) -> str:
    """A trace as JSON lines; ``context`` (seed, profile) leads every line."""
    return "\n".join(json.dumps({**context, **entry.json_fields()}) for entry in trace)


class _OpSeen(NamedTuple):
    """An operation's last outcome (a tuple: one is made per request, in the hot path)."""

    verdict: Verdict
    at: float
    retry_after: float


class Checker:
    """Checks invariants 4 to 7 as events happen, and records the trace.

    Args:
        clock: The clock (a callable returning the time).
        metrics: The least seconds between metrics requests.
        checkpoint: The least seconds between epoch-weight uploads.
        heartbeat: The heartbeat interval.
        heartbeat_slack: How late a heartbeat may be: one request's longest duration.
        origin: The clock time the session starts at; trace times count from it.
        policies: The session's retry policies: a ``Retry-After`` holds requests back as
            long as the answered channel's policy honours it (None: as the hub asked).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        metrics: float,
        checkpoint: float,
        heartbeat: float,
        heartbeat_slack: float,
        origin: float = 0.0,
        policies: ChannelPolicies | None = None,
    ) -> None:
        self.clock = clock
        self.policies = policies
        self.metrics = metrics
        self.checkpoint = checkpoint
        self.heartbeat = heartbeat
        self.heartbeat_slack = heartbeat_slack
        self.origin = origin
        self.violations: list[Violation] = []
        # Rows in Entry's field order: tuples are cheap to make, entries are made on demand.
        self._rows: list[tuple[Any, ...]] = []
        self._ops: dict[int, _OpSeen] = {}
        self._forget()

    def _forget(self) -> None:
        """Start with what a new process knows: no operations, no last send, no limit."""
        self.state = "unparsed"
        self._ops.clear()
        # The hub's rate limit is per key: its Retry-After holds back every request.
        self._last_metrics = self._last_checkpoint = self._hold_until = -1e18
        self._last_heartbeat: float | None = None
        self._training_since: float | None = None
        # The hub refused a heartbeat: none may follow, and none is due any more.
        self._heartbeats_refused = False
        # The hub refused the opening request: the session failed as a bad key fails it.
        self._failed_opening = False

    @property
    def failed_opening(self) -> bool:
        """Whether the hub refused the opening request, failing the session."""
        return self._failed_opening

    @property
    def trace(self) -> tuple[Entry, ...]:
        """Everything seen so far, in order."""
        return tuple(Entry(*row) for row in self._rows)

    def free_text(self) -> list[str]:
        """The trace's free text, to search for secrets: its request paths and messages."""
        # Paths and messages are the entries' only free text; the rest are fixed words.
        return [text for row in self._rows for text in (row[8], row[12]) if text]

    def restarted(
        self, message: str = "the process dies; a new one starts from the outbox"
    ) -> None:
        """A new process starts from the outbox: forget what only the old one knew.

        A new process cannot know when the old one last sent on a channel, the hub's last
        Retry-After, or the old operation numbers, so limits and retry checks start over.
        """
        self.note(message)
        self._forget()

    def violate(self, number: int, message: str) -> None:
        """Record a broken invariant (``number`` as in the design) now."""
        t = self.clock() - self.origin
        self.violations.append(Violation(number, t, message))
        self._rows.append((t, self.state, "violation", *_NONE9, message, number))

    def note(self, message: str) -> None:
        """Record something the scenario did (a fault window, a revocation)."""
        t = self.clock() - self.origin
        self._rows.append((t, self.state, "scenario", *_NONE9, message, None))

    # -- machine --------------------------------------------------------------------

    def changed(self, source: str, event: str, dest: str) -> None:
        """Invariant 4: every state change is a declared transition."""
        now = self.clock()
        self._rows.append((now - self.origin, source, event, dest, *_NONE10))
        if (source, event, dest) not in LEGAL:
            self.violate(4, f"undeclared transition {source} --{event}--> {dest}")
        if dest != source:
            self._check_heartbeat_gap(now)
            # Only an opening state fails (see the table): nothing was accepted yet.
            self._failed_opening = event == "fail"
            if TRAITS[dest].heartbeats and not TRAITS[source].heartbeats:
                self._training_since = None if self._heartbeats_refused else now
                self._last_heartbeat = None
            elif not TRAITS[dest].heartbeats:
                self._training_since = None
        self.state = dest

    # -- requests -------------------------------------------------------------------

    def sent(self, now: float, send: Send) -> None:
        """Invariants 5 and 6, checked as each request leaves."""
        channel, request, state = send.channel, send.request, self.state
        self._rows.append(
            (now - self.origin, state, "send", None, send.op_id, send.attempt, channel,
             request.method, request.path, None, None, None, None, None)
        )  # fmt: skip
        if not TRAITS[state].sends:
            # After a refusal nothing is sent (or retried), and after done nothing is due.
            self.violate(5 if state == "done" else 6, f"{channel} request in state {state}")
        if now < self._hold_until - EPS:
            self.violate(6, f"{channel} request {self._hold_until - now:.3f}s inside a Retry-After")
        if channel == "metrics":
            # The final flush is exempt, as the design says.
            if not TRAITS[state].final and now - self._last_metrics < self.metrics - EPS:
                self.violate(5, f"metrics {now - self._last_metrics:.3f}s after the last")
            self._last_metrics = now
        elif channel == "checkpoint" and send.attempt == 1:
            if (gap := now - self._last_checkpoint) < self.checkpoint - EPS:
                self.violate(5, f"checkpoint {gap:.3f}s after the last")
            self._last_checkpoint = now
        elif channel == "heartbeat":
            if not TRAITS[state].heartbeats:
                self.violate(5, f"heartbeat in state {state}")
            if self._heartbeats_refused:
                self.violate(6, "a heartbeat after the hub refused one")
            if send.attempt == 1:
                if (last := self._last_heartbeat) is not None and now - last < self.heartbeat - EPS:
                    self.violate(5, f"heartbeat {now - last:.3f}s after the last")
                self._check_heartbeat_gap(now)
                self._last_heartbeat = now
        if send.attempt > 1:
            seen = self._ops.get(send.op_id)
            if seen is None or seen.verdict is not Verdict.RETRY:
                verdict = "nothing" if seen is None else seen.verdict.value
                self.violate(6, f"op #{send.op_id} retried after {verdict}")
            elif (gap := now - seen.at) < seen.retry_after - EPS:
                early = f"{gap:.3f}s after a Retry-After of {seen.retry_after:.3f}s"
                self.violate(6, f"op #{send.op_id} retried {early}")

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        """Record an outcome for the retry checks."""
        verdict = classify(outcome)
        retry_after = retry_after_of(outcome)
        honoured = retry_after
        if self.policies is not None and retry_after is not None:
            policy: RetryPolicy = getattr(self.policies, send.channel)
            honoured = policy.honoured(retry_after)
        if honoured is not None:
            self._hold_until = max(self._hold_until, now + honoured)
        self._ops[send.op_id] = _OpSeen(verdict, now, honoured or 0.0)
        if send.channel == "heartbeat" and verdict is Verdict.FATAL:
            self._heartbeats_refused = True
            self._training_since = None
        status: int | None = None
        error: str | None = None
        if isinstance(outcome, TransportError):
            error, message = outcome.kind, str(outcome)
        else:
            status, message = outcome.status, outcome.message
        self._rows.append(
            (now - self.origin, self.state, "recv", None, send.op_id, send.attempt,
             send.channel, None, None, status, error, retry_after, message or None, None)
        )  # fmt: skip

    def _check_heartbeat_gap(self, now: float) -> None:
        if self._training_since is None:
            return
        last = self._last_heartbeat if self._last_heartbeat is not None else self._training_since
        # A heartbeat is due an interval after the last one, or when the hub's Retry-After
        # ends if that is later; it may then wait for one request already in flight.
        due = max(last + self.heartbeat, self._hold_until)
        if now > due + self.heartbeat_slack + EPS:
            self.violate(5, f"no heartbeat for {now - last:.3f}s while training")


# Padding of the rows above, which list Entry's fields in order.
_NONE9 = (None,) * 9
_NONE10 = (None,) * 10
