"""The invariants of a session, checked while a simulation runs and at its end.

A :class:`Checker` watches every request, outcome and state change of one simulated
session and writes the trace; each broken invariant becomes a :class:`Violation`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs

from hubfsm.core import Core, Send
from hubfsm.machine import LEGAL
from hubfsm.retry import Verdict, classify, retry_after_of
from hubfsm.transport import Outcome, TransportError

#: Rounding slack for comparisons of virtual times.
EPS = 1e-6


@attrs.frozen
class Violation:
    """One broken invariant.

    Attributes:
        number: The invariant's number in the design (1 to 8).
        time: Virtual time at which it was seen.
        message: What was wrong.
    """

    number: int
    time: float
    message: str

    def __str__(self) -> str:
        return f"invariant {self.number} at t={self.time:.3f}: {self.message}"


@attrs.define
class _OpSeen:
    verdict: Verdict
    at: float
    retry_after: float


class Checker:
    """Checks invariants 4 to 7 as events happen, and writes the trace.

    Args:
        clock: The virtual clock (a callable returning the time).
        interval: The heartbeat, metrics and checkpoint limits, as in the core's config.
        heartbeat_slack: How late a heartbeat may be: one request's longest duration.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        metrics: float,
        checkpoint: float,
        heartbeat: float,
        heartbeat_slack: float,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.checkpoint = checkpoint
        self.heartbeat = heartbeat
        self.heartbeat_slack = heartbeat_slack
        self.trace: list[str] = []
        self.violations: list[Violation] = []
        self.state = "unparsed"
        self._ops: dict[int, _OpSeen] = {}
        self._last_metrics = -1e18
        self._last_checkpoint = -1e18
        self._last_heartbeat: float | None = None
        self._training_since: float | None = None

    def _violate(self, number: int, message: str) -> None:
        self.violations.append(Violation(number, self.clock(), message))
        self.trace.append(f"{self.clock():12.3f} VIOLATION {number}: {message}")

    def note(self, text: str) -> None:
        """Add a line to the trace."""
        self.trace.append(f"{self.clock():12.3f} {self.state:<16} {text}")

    # -- machine --------------------------------------------------------------------

    def changed(self, source: str, event: str, dest: str) -> None:
        """Invariant 4: every state change is a declared transition."""
        now = self.clock()
        if (source, event, dest) not in LEGAL:
            self._violate(4, f"undeclared transition {source} --{event}--> {dest}")
        if dest != source:
            self.trace.append(f"{now:12.3f} {source:<16} {event} -> {dest}")
            self._check_heartbeat_gap(now)
            if dest == "training":
                self._training_since = now
                self._last_heartbeat = None
            elif source in ("training", "final_uploading") and dest != "final_uploading":
                self._training_since = None
        self.state = dest

    # -- requests -------------------------------------------------------------------

    def sent(self, now: float, send: Send) -> None:
        """Invariants 5 and 6, checked as each request leaves."""
        channel = send.channel
        request = send.request
        self.trace.append(
            f"{now:12.3f} {self.state:<16} send #{send.op_id}.{send.attempt} {channel} "
            f"{request.method} {request.path}"
        )
        if channel == "metrics":
            if now - self._last_metrics < self.metrics - EPS:
                self._violate(5, f"metrics {now - self._last_metrics:.3f}s after the last")
            self._last_metrics = now
        if send.attempt == 1 and channel == "checkpoint":
            if now - self._last_checkpoint < self.checkpoint - EPS:
                gap = now - self._last_checkpoint
                self._violate(5, f"checkpoint {gap:.3f}s after the last")
            self._last_checkpoint = now
        if channel == "heartbeat":
            if self.state not in ("training", "final_uploading"):
                self._violate(5, f"heartbeat in state {self.state}")
            if send.attempt == 1:
                last = self._last_heartbeat
                if last is not None and now - last < self.heartbeat - EPS:
                    self._violate(5, f"heartbeat {now - last:.3f}s after the last")
                self._check_heartbeat_gap(now)
                self._last_heartbeat = now
        seen = self._ops.get(send.op_id)
        if send.attempt > 1:
            if seen is None or seen.verdict is not Verdict.RETRY:
                verdict = "nothing" if seen is None else seen.verdict.value
                self._violate(6, f"op #{send.op_id} retried after {verdict}")
            elif now - seen.at < seen.retry_after - EPS:
                self._violate(
                    6,
                    f"op #{send.op_id} retried {now - seen.at:.3f}s after a "
                    f"Retry-After of {seen.retry_after:.3f}s",
                )

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        """Record an outcome for the retry checks."""
        verdict = classify(outcome)
        retry_after = retry_after_of(outcome) or 0.0
        self._ops[send.op_id] = _OpSeen(verdict, now, retry_after)
        if isinstance(outcome, TransportError):
            what = f"{outcome.kind}: {outcome}"
        else:
            what = f"{outcome.status} {outcome.message}".rstrip()
            if outcome.retry_after is not None:
                what += f" retry-after={outcome.retry_after:.3f}"
        self.trace.append(f"{now:12.3f} {self.state:<16} recv #{send.op_id}.{send.attempt} {what}")

    def _check_heartbeat_gap(self, now: float) -> None:
        if self._training_since is None:
            return
        last = self._last_heartbeat if self._last_heartbeat is not None else self._training_since
        if now - last > self.heartbeat + self.heartbeat_slack + EPS:
            self._violate(5, f"no heartbeat for {now - last:.3f}s while training")

    # -- at the end -----------------------------------------------------------------

    def finish(
        self,
        core: Core,
        *,
        logged: Iterable[int],
        on_hub: Iterable[int],
        applied: Mapping[int, int],
        final_sha256: str | None,
        expected_sha256: str | None,
        secrets: Iterable[str],
        texts: Iterable[str] = (),
    ) -> None:
        """Invariants 1, 2, 3 and 7, checked once the session has ended.

        Args:
            core: The session's core (for what is still pending).
            logged: Every epoch the trainer logged.
            on_hub: The epochs whose metrics the hub holds.
            applied: How many times the hub applied each epoch's metrics.
            final_sha256: The hub's final weights' digest, if any.
            expected_sha256: The digest of the file handed to ``finish``, if it was called.
            secrets: Strings that must appear nowhere (the API key).
            texts: Other texts to search for secrets (error messages, reprs).
        """
        hub_epochs = set(on_hub)
        missing = set(logged) - hub_epochs - core.unacknowledged_epochs()
        if missing:
            self._violate(1, f"epochs lost: {sorted(missing)[:10]}")
        twice = sorted(e for e, n in applied.items() if n > 1)
        if twice:
            self._violate(2, f"metrics applied more than once for epochs {twice[:10]}")
        if core.state == "done" and final_sha256 != expected_sha256:
            self._violate(3, f"final weights {final_sha256} != handed over {expected_sha256}")
        corpus = [*self.trace, repr(core), str(core.error or ""), *texts]
        for secret in secrets:
            if any(secret in line for line in corpus):
                self._violate(7, "the API key appears in a trace line, repr or message")
