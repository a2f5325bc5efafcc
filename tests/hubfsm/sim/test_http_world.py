"""The simulation's scenarios over real HTTP: a local hub on loopback, a real clock."""

import threading

import pytest

from hubfsm.cli.main import main
from hubfsm.sim.bugs import MACHINE_BUGS, Bugs
from hubfsm.sim.http_world import run_http_seed
from hubfsm.sim.invariants import CRASH, render_text


@pytest.mark.parametrize(("profile", "seed"), [("flaky", 0), ("partition", 1), ("revoked", 2)])
def test_a_seed_over_http_keeps_every_invariant(profile, seed):
    before = set(threading.enumerate())
    result = run_http_seed(seed, profile=profile, epochs=8)
    assert result.ok, [str(v) for v in result.violations] + [render_text(result.trace)]
    # The seed is bounded: its runner raises once its clock passes the hard deadline, and
    # what the seed started (the hub's server threads) has stopped when it returns.
    assert set(threading.enumerate()) - before == set()
    assert result.http
    if profile == "revoked":
        assert (result.state, result.error) == ("refused", "AuthError")
    else:
        assert result.state == "done"
    if profile == "flaky":
        assert result.retries > 0  # the server did inject faults
    if profile == "partition":
        notes = [e.message for e in result.trace if e.event == "scenario"]
        assert "partition begins: the local hub is stopped" in notes
        assert any(e.event == "recv" and e.error == "refused" for e in result.trace)


def test_the_command_runs_over_http_and_names_it_in_the_replay(capsys):
    status = main(["simulate", "--http", "--profile", "calm", "--seeds", "0-1", "--epochs", "4"])
    out = capsys.readouterr().out
    assert status == 0
    assert out.splitlines()[0] == "2 seeds x 4 epochs per profile, over HTTP against a local hub"
    assert "| calm | 2 | 0 | 0 |" in out


# -- the session users get, over HTTP: journal, outbox, restarts, sync -----------------


def _notes(result):
    return [e.message for e in result.trace if e.event == "scenario"]


def _first_seed(found, seeds=range(10), **kwargs):
    """The first result among ``seeds`` for which ``found(result)`` holds, or None."""
    for seed in seeds:
        result = run_http_seed(seed, epochs=8, **kwargs)
        if found(result):
            return result
    return None


def test_a_process_that_dies_over_http_restarts_from_its_outbox_and_journal():
    died = _first_seed(
        lambda r: "the process dies; a new one starts from the outbox" in _notes(r),
        profile="crash",
    )
    assert died is not None, "no process died in 10 seeds of the crash profile"
    assert died.ok, [str(v) for v in died.violations]
    assert died.state == "done"


def test_a_trainer_killed_inside_finish_is_finished_by_sync_over_http():
    killed = _first_seed(
        lambda r: any("inside finish()" in note for note in _notes(r)), profile="finish-kill"
    )
    assert killed is not None, "no process was killed inside finish() in 10 seeds"
    # The trainer never came back: hubfsm sync, over HTTP, delivered the final weights.
    assert killed.ok, [str(v) for v in killed.violations]
    assert killed.state == "done"
    assert killed.faults > 0


def test_idempotency_keys_from_the_users_seed_are_caught_over_http():
    # Restarted sessions reuse the keys of the one before: the real hub sees it.
    found = _first_seed(lambda r: not r.ok, profile="crash", bugs=Bugs(nonce_from_seed=True))
    assert found is not None, "nonces from the user's seed went unnoticed for 10 seeds"
    assert {v.number for v in found.violations} & {1, 2}
    assert found.replay_command().startswith("hubfsm simulate --http --profile crash")


def test_a_recovery_that_stops_on_a_poison_record_is_caught_over_http():
    found = _first_seed(
        lambda r: any(v.number == CRASH for v in r.violations),
        profile="poison",
        bugs=MACHINE_BUGS["poison stops recovery"],
    )
    assert found is not None, "a recovery stopped by one bad record went unnoticed"


def test_a_seed_past_its_time_bound_fails_instead_of_hanging(monkeypatch):
    monkeypatch.setattr("hubfsm.sim.http_world.HARD_TIMEOUT", 0.2)
    monkeypatch.setattr("hubfsm.sim.http_world.EPOCH_ALLOWANCE", 0.0)
    result = run_http_seed(0, profile="calm", epochs=8)
    assert not result.ok
    assert any(v.number == CRASH and "RunTimeout" in v.message for v in result.violations)


@pytest.mark.slow  # 40 epochs at the HTTP world's pace
def test_a_seed_is_given_time_for_the_epochs_it_runs(monkeypatch):
    # 40 epochs of 0.05 to 0.15 s each: about 4 s of training alone, past a 1 s bound on
    # the whole run. Before, the bound ignored the epochs: at --epochs 150 to 300 seeds
    # failed with RunTimeout while every invariant held.
    monkeypatch.setattr("hubfsm.sim.http_world.HARD_TIMEOUT", 1.0)
    result = run_http_seed(0, profile="calm", epochs=40)
    assert result.ok, [str(v) for v in result.violations]
    assert result.state == "done"
