"""The simulation's scenarios over real HTTP: a local hub on loopback, a real clock."""

import threading

import pytest

from hubfsm.cli.main import main
from hubfsm.sim.http_world import run_http_seed
from hubfsm.sim.invariants import render_text


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
