"""Thousands of simulated sessions per run, and the simulation's own checks of itself.

The sweeps spread seeds over two processes (results come back in seed order). The planted
bugs below show that the checks have teeth: each broken core must fail within 200 seeds.
"""

import functools
import json
import os
import random
import re
from concurrent.futures import ProcessPoolExecutor

import attrs
import pytest

from hubfsm.cli.main import main
from hubfsm.cli.simulate import run_seeds
from hubfsm.core import schedule as core_schedule
from hubfsm.core.config import CoreConfig, Limits
from hubfsm.core.engine import Core
from hubfsm.core.values import CheckpointOffered, EpochEnded, MetricsBatch, Rejected, Send
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.session import Session
from hubfsm.sim.bugs import Bugs
from hubfsm.sim.invariants import CRASH, Checker, Entry, render_json, render_text
from hubfsm.sim.play import run_seed
from hubfsm.sim.profiles import PLANNED, PROFILES, describe, select
from hubfsm.sim.scenario import Profile, Schedule, Window, WindowRule
from hubfsm.sim.world import EPOCH_ZERO
from hubfsm.transport import Request, Response, TransportError
from transports.faults import FaultMix

#: Seeds per profile in the sweeps, beside the thousand flaky ones: 5 x 500 + 1000 in all.
SWEEP_SEEDS = range(500)
SWEEP_EPOCHS = 40


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(max_workers=2) as executor:
        yield executor


def _report(failures):
    first = failures[0]
    around = render_text(first.trace[-30:])
    return (
        f"{len(failures)} failing seeds, first {first.seed} ended {first.state}: "
        f"{[str(v) for v in first.violations[:3]]}\n"
        f"replay with: {first.replay_command()}\n{around}"
    )


@pytest.mark.slow  # a sweep of hundreds of seeds
def test_a_thousand_flaky_sessions_keep_every_invariant(pool):
    results = run_seeds(range(1000), PROFILES["flaky"], 50, pool=pool, jobs=2)
    failures = [r for r in results if not r.ok or r.state != "done"]
    assert not failures, _report(failures)


@pytest.mark.slow  # a sweep of hundreds of seeds
@pytest.mark.parametrize("name", ["calm", "hostile", "partition", "revoked", "crash"])
def test_every_profile_keeps_every_invariant(pool, name):
    profile = PROFILES[name]
    results = run_seeds(SWEEP_SEEDS, profile, SWEEP_EPOCHS, pool=pool, jobs=2)
    failures = [r for r in results if not r.ok]
    assert not failures, _report(failures)
    expected = ("done", None) if profile.expect == "done" else ("refused", "AuthError")
    assert {(r.state, r.error) for r in results} == {expected}


@pytest.mark.slow  # a sweep of hundreds of seeds
def test_refusing_hubs_lose_nothing_accepted_and_a_sync_after_the_fix_delivers_it(pool):
    results = run_seeds(SWEEP_SEEDS, PROFILES["refusing"], SWEEP_EPOCHS, pool=pool, jobs=2)
    failures = [r for r in results if not r.ok]
    assert not failures, _report(failures)
    # Every kind of ending is met: delivered, or stopped by each refusal with its error.
    assert {(r.state, r.error) for r in results} == {
        ("done", None),
        ("refused", "AuthError"),
        ("refused", "HubError"),
        ("refused", "ModelNotFoundError"),
        ("refused", "ModelTrainedError"),
    }


def test_hostile_and_partition_runs_really_meet_their_windows():
    hostile = run_seed(1, profile="hostile", epochs=40)
    notes = [e.message for e in hostile.trace if e.event == "scenario"]
    assert any(n.startswith("outage begins") for n in notes)
    assert any(n.startswith("429 burst begins") for n in notes)
    partition = run_seed(1, profile="partition", epochs=40)
    refused = [e for e in partition.trace if e.event == "recv" and e.error == "connect"]
    assert len(refused) > 20
    assert partition.virtual_seconds > 3600  # it waited the partition out
    assert partition.state == "done"


def test_a_revoked_key_stops_clearly_keeps_every_event_and_does_not_spin():
    for seed in range(20):
        result = run_seed(seed, profile="revoked", epochs=30)
        assert result.ok, [str(v) for v in result.violations]
        assert result.state == "refused" and result.error == "AuthError"
        refusals = [e for e in result.trace if e.event == "recv" and e.status == 401]
        # The first 401 stops all sending: no retry, no request after it.
        assert len(refusals) == 1
        [at] = [i for i, e in enumerate(result.trace) if e.event == "refuse"]
        after = result.trace[at + 1:]
        assert not [e for e in after if e.event == "send"]
        # ...while the trainer's events go on being accepted, through to finish.
        assert [e.event for e in after if e.event == "epoch_end"]
        assert after[-1].event == "finish" and after[-1].state == "refused"


def test_a_calm_session_sends_few_requests_and_no_retries():
    result = run_seed(3, profile="calm", epochs=20)
    assert result.ok and result.state == "done"
    assert result.retries == 0
    # 20 metrics, at least one checkpoint, final, create/load, heartbeats
    assert 23 <= result.requests <= 40


def test_the_same_seed_gives_the_same_trace():
    for name in PROFILES:
        a = run_seed(42, profile=name, epochs=30)
        b = run_seed(42, profile=name, epochs=30)
        assert a.trace == b.trace
        assert render_json(a.trace) == render_json(b.trace)
        assert run_seed(43, profile=name, epochs=30).trace != a.trace


def test_traces_are_structured_and_render_as_text_and_json():
    result = run_seed(7, profile="revoked", epochs=10)
    events = {e.event for e in result.trace}
    assert {"parse", "send", "recv", "scenario", "refuse"} <= events
    for entry, line, row in zip(
        result.trace,
        render_text(result.trace).splitlines(),
        render_json(result.trace, seed=7).splitlines(),
        strict=True,
    ):
        fields = json.loads(row)
        assert fields["seed"] == 7 and fields["event"] == entry.event
        assert fields["t"] == pytest.approx(entry.t)
        assert f"{entry.t:.3f}" in line
        if entry.event == "send":
            assert entry.path in line and fields["path"] == entry.path
        if entry.event == "recv" and entry.status == 401:
            assert "401" in line and fields["status"] == 401


def test_a_violation_is_an_entry_of_the_trace():
    checker = Checker(lambda: 10.0, metrics=3, checkpoint=900, heartbeat=300, heartbeat_slack=1)
    checker.changed("unparsed", "finish", "done")
    (entry,) = [e for e in checker.trace if e.event == "violation"]
    # Seen as the change happened: in the state it left.
    assert entry == Entry(10.0, "unparsed", "violation", message=entry.message, invariant=4)
    assert "VIOLATION of invariant 4" in entry.text()
    assert json.loads(render_json([entry]))["invariant"] == 4


@pytest.mark.parametrize(("at", "violated"), [(299.0, True), (300.0, False)])
def test_the_checker_holds_a_retry_after_only_as_long_as_the_policy_honours_it(at, violated):
    now = [10.0]
    checker = Checker(
        lambda: now[0], metrics=3, checkpoint=900, heartbeat=300, heartbeat_slack=1,
        policies=CoreConfig().policies,
    )
    checker.changed("unparsed", "parse", "resolved")
    request = Request("POST", "/v1/models/" + "A" * 20, json={}, idempotency_key="k")
    checker.sent(10.0, Send(1, "metrics", 1, request))
    checker.answered(10.0, Send(1, "metrics", 1, request), Response(429, {}, retry_after=1e9))
    now[0] = 10.0 + at
    checker.sent(now[0], Send(1, "metrics", 2, request))
    assert any(v.number == 6 for v in checker.violations) is violated


# -- profiles and schedules ---------------------------------------------------------


def test_profiles_are_selected_by_name_list_or_all():
    assert [p.name for p in select("all")] == list(PROFILES)
    assert [p.name for p in select("hostile, calm,hostile")] == ["hostile", "calm"]
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        select("calm,nope")
    assert "crash" in PROFILES
    # Only a profile whose fix is still missing waits, and asking for it says why.
    assert list(PLANNED) == ["full-disk"]
    with pytest.raises(ValueError, match="'full-disk' is not available yet: .*invariant 2"):
        select("full-disk")


@pytest.mark.parametrize("protocol", ["hub", "platform"])
def test_a_key_revoked_before_the_session_opens_fails_it_as_a_bad_key_does(protocol):
    # The opening request is refused: nothing was accepted yet, so the session fails
    # with AuthError (as for a bad key) instead of going on refused.
    early = attrs.evolve(PROFILES["revoked"], revoke=(0.0, 0.0))
    for seed in range(3):
        result = run_seed(seed, profile=early, epochs=5, protocol=protocol)
        assert result.ok, _report([result])
        assert (result.state, result.error) == ("failed", "AuthError")
    # Found by a sweep: the opening's answers were lost until the key was revoked.
    late = run_seed(200938, profile="revoked", epochs=30, protocol="platform")
    assert late.ok, _report([late])
    assert late.state == "failed"


@pytest.mark.parametrize("protocol", ["hub", "platform"])
@pytest.mark.parametrize("stop", [401, 302, 404, 409])
def test_a_refusal_of_the_opening_request_is_told_at_the_open(protocol, stop):
    # Every upload refused from the start: an opening that uploads (a create) is refused
    # before the session opened. It fails naming the answer (a 409 on Platform is
    # retried as the Platform SDK does, until the opening's patience ends), and the
    # trainer is told; an opening that only reads opens, then stops at the first upload.
    refusals = attrs.evolve(PROFILES["refusing"].refusals, stops=(stop,), stop_at=(0.0, 0.0))
    early = attrs.evolve(PROFILES["refusing"], refusals=refusals, patience=600.0)
    ends = set()
    for seed in range(4):
        result = run_seed(seed, profile=early, epochs=3, protocol=protocol)
        assert result.ok, _report([result])
        opening = next(e for e in result.trace if e.event == "send")
        if opening.method == "GET":
            expected = "refused"
        else:
            expected = "resolved" if (protocol, stop) == ("platform", 409) else "failed"
        assert result.state == expected, seed
        ends.add(result.state)
    assert ends & {"failed", "resolved"}  # the seeds hold at least one refused opening


def test_describe_shows_every_profile_with_its_exact_rates():
    table = describe()
    for name in PROFILES:
        assert f"| `{name}` |" in table
    assert "20% 5xx" in table and "5% 429 (Retry-After 1–30 s)" in table
    assert "1–2 × partition of 1 h–4 h" in table
    assert "revoked at 10%–90%" in table
    assert "one of 401, 302, 404, 409 or none per seed" in table


def test_a_schedule_picks_the_window_in_force():
    loud = FaultMix(server_error=1.0)
    schedule = Schedule(FaultMix(), (Window(10.0, 20.0, loud, "outage"),))
    assert schedule.mix_at(9.999) == FaultMix()
    assert schedule.mix_at(10.0) is loud
    assert schedule.mix_at(20.0) == FaultMix()


def test_windows_and_revocation_fall_within_the_training_time():
    rule = WindowRule("outage", (2, 2), (60.0, 60.0), FaultMix(server_error=1.0))
    profile = Profile("x", "x", windows=(rule,), revoke=(0.5, 0.5), epoch_seconds=(10.0, 20.0))
    scenario = profile.draw(random.Random(1), start=100.0, epochs=10)
    windows = scenario.schedule.windows
    assert len(windows) == 2 and all(100.0 <= w.start < 200.0 for w in windows)
    assert all(w.end - w.start == 60.0 for w in windows)
    assert scenario.revoke_at == 150.0


# -- planted bugs: each must be caught within 200 seeds -----------------------------


def _first_failure(number, **kwargs):
    for seed in range(200):
        result = run_seed(seed, keep_trace=False, **kwargs)
        if any(v.number == number for v in result.violations):
            return result
    return None


def test_the_checker_catches_a_broken_rate_limit():
    # The core's metrics limit is 1 s while the checker holds it to 3 s.
    found = _first_failure(
        5,
        profile=attrs.evolve(PROFILES["flaky"], epoch_seconds=(0.5, 2.0)),
        epochs=20,
        config=CoreConfig(limits=Limits(metrics=1.0)),
        check_limits=Limits(),
    )
    assert found is not None, "a planted rate-limit bug went unnoticed for 200 seeds"


class RetriesFatalStatuses(Core):
    """Takes a 401 for a passing 503, as a client that retries everything would."""

    def receive(self, op_id, outcome, *, now):
        if isinstance(outcome, Response) and outcome.status == 401:
            outcome = Response(503, outcome.body)
        super().receive(op_id, outcome, now=now)


class ForgetsUnansweredMetrics(Core):
    """Takes a metrics request that got no answer (a timeout, a lost answer) for delivered."""

    channel = None

    def poll(self, now):
        action = super().poll(now)
        if isinstance(action, Send):
            self.channel = action.channel
        return action

    def receive(self, op_id, outcome, *, now):
        if self.channel == "metrics" and isinstance(outcome, TransportError):
            outcome = Response(200, {"success": True, "message": "", "data": {}})
        super().receive(op_id, outcome, now=now)


class ForgetsMetricsOn5xx(ForgetsUnansweredMetrics):
    """Takes a metrics request answered 5xx for delivered (the hub never applied it)."""

    def receive(self, op_id, outcome, *, now):
        if self.channel == "metrics" and isinstance(outcome, Response) and outcome.status >= 500:
            outcome = Response(200, {"success": True, "message": "", "data": {}})
        Core.receive(self, op_id, outcome, now=now)


class IgnoresRetryAfter(Core):
    """Drops the hub's Retry-After, so only its own jitter decides the wait."""

    def receive(self, op_id, outcome, *, now):
        if isinstance(outcome, Response) and outcome.retry_after is not None:
            outcome = attrs.evolve(outcome, retry_after=None)
        super().receive(op_id, outcome, now=now)


class _GrowingSchedule(core_schedule.Schedule):
    def make_due(self, now, **kwargs):
        super().make_due(now, **kwargs)
        op = self.ops["metrics"]
        if op is None or not op.attempts or not self.unsent:
            return
        body = dict(op.request.json)
        body["metrics"] = {**body["metrics"], **{str(e): m for e, m in self.unsent.items()}}
        op.request = attrs.evolve(op.request, json=body)
        op.purpose = MetricsBatch(op.purpose.epochs + tuple(self.unsent))
        self.unsent = {}


class GrowsItsMetricsBatch(Core):
    """Adds the epochs queued since to a metrics request being retried, under its old key."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule.__class__ = _GrowingSchedule


@pytest.mark.parametrize(
    ("bug", "profile", "invariant"),
    [
        (RetriesFatalStatuses, "revoked", 6),
        (ForgetsUnansweredMetrics, "flaky", 1),
        (ForgetsMetricsOn5xx, "flaky", 1),
        (IgnoresRetryAfter, "flaky", 6),
        (GrowsItsMetricsBatch, "flaky", 2),
    ],
)
def test_a_planted_bug_in_the_core_is_caught(bug, profile, invariant):
    found = _first_failure(invariant, profile=profile, epochs=30, core_factory=bug)
    assert found is not None, f"{bug.__name__} went unnoticed for 200 seeds"
    # And the failing seed replays to the same failure.
    again = run_seed(found.seed, profile=profile, epochs=30, core_factory=bug)
    assert again.violations == found.violations


def test_a_core_that_raises_fails_the_seed_instead_of_the_run():
    class Explodes(Core):
        def epoch_end(self, epoch, metrics, *, now):
            if epoch == 3:
                raise RuntimeError("boom")
            super().epoch_end(epoch, metrics, now=now)

    result = run_seed(0, profile="calm", epochs=10, core_factory=Explodes)
    assert not result.ok
    # The session's driver survives the failing event, and the epoch it carried is lost.
    assert (1, "epochs neither on the hub nor held: [3]") in [
        (v.number, v.message) for v in result.violations
    ]
    assert "VIOLATION of invariant 1: epochs neither on the hub nor held: [3]" in render_text(
        result.trace
    )


def test_a_client_that_raises_fails_the_seed_instead_of_the_run():
    class Explodes(Core):
        def poll(self, now):
            if self.stats.sent["metrics"] == 2:
                raise RuntimeError("boom")
            return super().poll(now)

    result = run_seed(0, profile="calm", epochs=10, core_factory=Explodes)
    assert not result.ok
    assert [(v.number, v.message) for v in result.violations] == [(CRASH, "RuntimeError: boom")]
    assert "CRASH: RuntimeError: boom" in render_text(result.trace)


def test_virtual_time_starts_at_the_epoch_and_the_trace_counts_from_it():
    result = run_seed(0, profile="calm", epochs=3)
    assert result.trace[0].t == 0.0
    assert result.virtual_seconds == pytest.approx(result.trace[-1].t, abs=0.2)
    assert EPOCH_ZERO > 0


# -- the crash fault ------------------------------------------------------------------


def test_crashes_happen_and_every_session_still_ends_done():
    deaths = 0
    for seed in range(20):
        result = run_seed(seed, profile="crash")
        assert result.ok and result.state == "done", _report([result])
        deaths += sum(1 for e in result.trace if e.event == "scenario"
                      and "process dies" in (e.message or ""))
    assert deaths >= 20  # one to three per seed, unless two fall on the same request


class ForgetsInFlight(Core):
    """Planted bug: after a restart, operations that were in flight are forgotten."""

    def restore(self, saved, *, now):
        super().restore(attrs.evolve(saved, ops=()), now=now)


class RekeysAfterRestart(Core):
    """Planted bug: after a restart, in-flight operations go out under fresh keys."""

    def restore(self, saved, *, now):
        ops = tuple(
            attrs.evolve(op, request=attrs.evolve(
                op.request, idempotency_key=f"{op.request.idempotency_key}-again"))
            for op in saved.ops
        )
        super().restore(attrs.evolve(saved, ops=ops), now=now)


class DropsEventsAfterARefusal(Core):
    """Planted bug: the old behaviour: after a fatal answer, trainer events are discarded."""

    def epoch_end(self, epoch, metrics, *, now):
        if self.state == "refused":
            return
        super().epoch_end(epoch, metrics, now=now)


class _WholeBatchSchedule(core_schedule.Schedule):
    def reject(self, op, response):
        if op.channel == "metrics":  # the batch stays one record
            self.ops["metrics"] = None
            record = Rejected("metrics", op.request, op.payload, response.status, "")
            self.keep(record)
            return record
        return super().reject(op, response)


class SetsAsideTheWholeBatch(Core):
    """Planted bug: a refused batch is set aside whole, good epochs with the bad one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule.__class__ = _WholeBatchSchedule


class KeepsHeartbeating(Core):
    """Planted bug: a refused heartbeat is taken for a passing failure and retried."""

    def receive(self, op_id, outcome, *, now):
        in_flight = self.schedule.in_flight
        if isinstance(outcome, Response) and outcome.status == 409 and in_flight is not None \
                and in_flight.channel == "heartbeat":
            outcome = Response(503, outcome.body)
        super().receive(op_id, outcome, now=now)


@pytest.mark.parametrize(
    ("bug", "invariant"),
    [(DropsEventsAfterARefusal, 1), (SetsAsideTheWholeBatch, 1), (KeepsHeartbeating, 6)],
)
def test_the_refusing_profile_catches_a_planted_refusal_bug(bug, invariant):
    found = _first_failure(invariant, profile="refusing", epochs=30, core_factory=bug)
    assert found is not None, f"{bug.__name__} went unnoticed for 200 seeds"


class DropsTrainerEventsAfterAFatalAnswer(Driver):
    """Planted bug in the worker: after a fatal answer, the trainer's events are dropped.

    They are taken from the journal (so it counts them as filed) and never reach the core
    or the outbox: the bug the refused state was made against, one layer up.
    """

    def apply(self, taken, now):
        if self.core.machine.refused and isinstance(taken.event, EpochEnded | CheckpointOffered):
            return
        super().apply(taken, now)


@pytest.mark.slow  # a sweep of hundreds of seeds
def test_simulate_finds_a_worker_that_drops_trainer_events_after_a_fatal_answer(
    capsys, monkeypatch
):
    # The refusing profile runs real sessions: a bug in the driver, not the core, is in
    # reach. hubfsm simulate, as users run it, must find it within 200 seeds and print
    # the failing seed with the command that replays it.
    bugs = Bugs(driver_factory=DropsTrainerEventsAfterAFatalAnswer)
    monkeypatch.setattr("hubfsm.cli.simulate.run_seed", functools.partial(run_seed, bugs=bugs))
    status = main(
        ["simulate", "--profile", "refusing", "--seeds", "0-199", "--epochs", "30", "--jobs", "1"]
    )
    out = capsys.readouterr().out
    assert status == 1
    found = re.search(r"^first failing seed of refusing: (\d+) \(ended refused\)$", out, re.M)
    assert found is not None, out
    seed = int(found.group(1))
    assert f"replay: hubfsm simulate --profile refusing --epochs 30 --seed {seed} --trace" in out
    assert "VIOLATION of invariant 1: epochs neither on the hub nor held" in out
    # The printed seed replays to the same failure, and the shipped driver passes it.
    again = run_seed(seed, profile="refusing", epochs=30, bugs=bugs)
    assert any("neither on the hub nor held" in v.message for v in again.violations)
    assert run_seed(seed, profile="refusing", epochs=30).ok


@pytest.mark.parametrize("bug,invariant", [(ForgetsInFlight, 1), (RekeysAfterRestart, 2)])
def test_the_crash_profile_catches_a_planted_recovery_bug(bug, invariant):
    for seed in range(200):
        result = run_seed(seed, profile="crash", core_factory=bug)
        if any(v.number == invariant for v in result.violations):
            return
    pytest.fail(f"{bug.__name__} went unnoticed for 200 seeds")


# -- bugs planted in the session, journal, outbox and sync layers --------------------


def _recover_without_the_journal(outbox, core, *, now, quiet=False):
    """Planted bug: recovery takes back the outbox only, not the journal's newer records."""
    saved = outbox.load()
    core.restore(saved, now=now)
    return saved


def _first_violation(invariant, profile, bugs, *, epochs=30):
    for seed in range(200):
        result = run_seed(seed, profile=profile, epochs=epochs, bugs=bugs, keep_trace=False)
        if any(v.number == invariant for v in result.violations):
            return result
    return None


def test_sync_that_ignores_journal_only_records_is_caught(monkeypatch):
    # The trainer is killed between two calls and never comes back: what it logged last
    # is in the journal only, and hubfsm sync must send it. The planted sync neither
    # folds the journal in when it surveys the outboxes nor when it opens one.
    monkeypatch.setattr("hubfsm.runtime.sync.fold", lambda outbox: 0)
    abandoning = attrs.evolve(PROFILES["crash"], abandon=1.0)
    bugs = Bugs(sync_recover=_recover_without_the_journal)
    found = _first_violation(1, abandoning, bugs)
    assert found is not None, "a sync that skips the journal went unnoticed for 200 seeds"
    assert any("neither on the hub nor held" in v.message for v in found.violations)


def test_idempotency_keys_from_the_users_seed_are_caught():
    # Every process of the run draws the same nonce, so a restarted session reuses the
    # keys of the one before it and the hub answers new uploads with old replies.
    found = None
    for seed in range(200):
        result = run_seed(seed, profile="crash", epochs=30, bugs=Bugs(nonce_from_seed=True),
                          keep_trace=False)
        if not result.ok:
            found = result
            break
    assert found is not None, "nonces from the user's seed went unnoticed for 200 seeds"
    assert {v.number for v in found.violations} & {1, 2}


def test_a_restarted_process_takes_back_what_the_outbox_kept():
    # The world's sessions file what they keep in a real outbox and journal: after a
    # death, the new session's core is handed what the dead one left there.
    seen = []

    class Watching(Core):
        def restore(self, saved, *, now):
            seen.append(saved.counts())
            super().restore(saved, now=now)

    result = None
    for seed in range(20):
        result = run_seed(seed, profile="crash", epochs=20, core_factory=Watching)
        assert result.ok, result.violations
        if any(any(c.values()) for c in seen):
            break
    assert any(any(c.values()) for c in seen), "no restart took anything back from an outbox"


class _LabelsCheckpointsLate(Session):
    """Planted bug: an integration counting epochs from 1 offers epoch e as e + 1."""

    def save_checkpoint(self, path, *, epoch, is_best=False):
        super().save_checkpoint(path, epoch=epoch + 1, is_best=is_best)


def test_a_checkpoint_holding_another_epochs_bytes_is_caught():
    # The trainer writes last.pt again at every checkpoint, as ultralytics does: the
    # hub's checkpoint of an epoch must hold what the file held when that epoch was offered.
    bugs = Bugs(session_class=_LabelsCheckpointsLate)
    found = _first_violation(3, "flaky", bugs)
    assert found is not None, "checkpoints named for the wrong epoch went unnoticed"
    assert any("hold other bytes than offered then" in v.message for v in found.violations)
    # Without the planted bug the same seed keeps the invariant.
    clean = run_seed(found.seed, profile="flaky", epochs=30, keep_trace=False)
    assert clean.ok, clean.violations


def test_the_trainer_writes_one_last_pt_again_in_place(tmp_path):
    # Faithful to ultralytics (torch.save truncates the file it opens): one file, one inode.
    seen = []

    class Watching(Session):
        def save_checkpoint(self, path, *, epoch, is_best=False):
            st = os.stat(path)
            seen.append((os.path.basename(path), st.st_ino, st.st_mtime_ns))
            super().save_checkpoint(path, epoch=epoch, is_best=is_best)

    result = run_seed(0, profile="calm", epochs=12, bugs=Bugs(session_class=Watching))
    assert result.ok, result.violations
    assert len(seen) >= 2
    assert {name for name, _, _ in seen} == {"last.pt"}
    assert len({inode for _, inode, _ in seen}) == 1
    # Each write has a stamp of its own (the simulated time), as epochs minutes apart do.
    assert len({mtime for _, _, mtime in seen}) == len(seen)


@pytest.mark.parametrize("profile", ["flaky", "crash"])
def test_outboxes_in_memory_give_the_same_run_as_outboxes_on_files(profile):
    # The simulator's in-memory outboxes run the outbox's own code on an in-memory
    # database: a seed must play out exactly as it does with files.
    for seed in range(3):
        memory = run_seed(seed, profile=profile, epochs=15, durability="memory")
        files = run_seed(seed, profile=profile, epochs=15, durability="files")
        assert memory.ok and files.ok, (memory.violations, files.violations)
        assert render_text(memory.trace) == render_text(files.trace)


def test_an_abandoned_run_is_left_to_sync():
    # The trainer is killed between two calls and does not come back: hubfsm sync opens
    # the outbox, takes the journal back and sends what it holds.
    abandoning = attrs.evolve(PROFILES["crash"], abandon=1.0)
    synced = 0
    for seed in range(12):
        result = run_seed(seed, profile=abandoning, epochs=20)
        gave_up = any(
            e.event == "scenario" and "gives up" in (e.message or "") for e in result.trace
        )
        synced += gave_up
        assert result.ok, _report([result])
        # Sync loads the model and delivers; only a trainer that comes back finishes.
        assert result.state == ("loaded" if gave_up else "done"), seed
    assert synced >= 6
