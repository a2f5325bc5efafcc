"""``hubfsm simulate`` as users run it: summaries, traces, replays and exit statuses."""

import functools
import json
import os
import re
import subprocess
import sys

import pytest

from hubfsm.cli.main import main
from hubfsm.core.engine import Core
from hubfsm.sim.play import run_seed
from hubfsm.sim.profiles import PROFILES
from hubfsm.transport import Response


def simulate(capsys, *args):
    try:
        status = main(["simulate", *args])
    except SystemExit as exited:  # the parser itself refuses malformed options
        status = exited.code
    out, err = capsys.readouterr()
    return status, out, err


def without_wall_time(summary):
    # The last column of each table row is the wall time; nothing else may differ.
    return re.sub(r"\| [0-9.]+ s \|$", "| - |", summary, flags=re.M)


@pytest.mark.parametrize("profile", ["flaky", "hostile", "revoked"])
def test_one_seed_traced_twice_prints_the_same_bytes(capsys, profile):
    args = ["--profile", profile, "--epochs", "20", "--seed", "11"]
    first = simulate(capsys, *args, "--trace")
    second = simulate(capsys, *args, "--trace")
    assert first[0] == 0 and first == second
    assert first[1].startswith(f"# seed 11, profile {profile}, 20 epochs: ended ")
    assert " send #1.1 control " in first[1]
    as_json = simulate(capsys, *args, "--json")
    assert as_json == simulate(capsys, *args, "--json")
    rows = [json.loads(line) for line in as_json[1].splitlines()]
    assert {row["seed"] for row in rows} == {11} and {row["profile"] for row in rows} == {profile}
    # The text and JSON are two renderings of the same entries.
    assert len(rows) == len(first[1].splitlines()) - 1
    assert list(rows[1])[:5] == ["seed", "profile", "t", "state", "event"]


@pytest.mark.slow  # sweeps seeds twice, once in a process pool
def test_the_summary_does_not_depend_on_the_number_of_processes(capsys):
    args = ["--profile", "all", "--seeds", "0-59", "--epochs", "20"]
    one = simulate(capsys, *args, "--jobs", "1")
    two = simulate(capsys, *args, "--jobs", "2")
    assert one[0] == two[0] == 0
    assert without_wall_time(one[1]) == without_wall_time(two[1])
    lines = one[1].splitlines()
    assert lines[0] == "60 seeds x 20 epochs per profile, on a virtual clock"
    assert lines[2].startswith("| profile | seeds | failing seeds | violations |")
    assert [line.split(" | ")[0] for line in lines[4:]] == [
        "| calm", "| flaky", "| hostile", "| partition", "| revoked", "| crash", "| refusing",
        "| finish-kill", "| poison", "", "machine faults injected: finish-kill 44, poison 79",
    ]  # fmt: skip
    [revoked] = [line for line in lines if line.startswith("| revoked |")]
    assert "| refused (AuthError) 60 |" in revoked


def test_a_comma_list_runs_those_profiles_once_each(capsys):
    status, out, _ = simulate(capsys, "--profile", "calm,revoked,calm", "--seeds", "0-4")
    assert status == 0
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| c")] == [
        "| calm"
    ]
    assert "| revoked | 5 | 0 | 0 |" in out


class RetriesFatalStatuses(Core):
    def receive(self, op_id, outcome, *, now):
        if isinstance(outcome, Response) and outcome.status == 401:
            outcome = Response(503, outcome.body)
        super().receive(op_id, outcome, now=now)


def test_a_failing_seed_is_shown_with_its_replay_command_and_trace(capsys, monkeypatch):
    buggy = functools.partial(run_seed, core_factory=RetriesFatalStatuses)
    monkeypatch.setattr("hubfsm.cli.simulate.run_seed", buggy)
    status, out, _ = simulate(capsys, "--profile", "revoked", "--seeds", "3-6", "--epochs", "10")
    assert status == 1
    assert "| revoked | 4 | 4 |" in out
    assert "first failing seed of revoked: 3" in out
    replay = "hubfsm simulate --profile revoked --epochs 10 --seed 3 --trace"
    assert f"replay: {replay}" in out
    assert "recv #" in out and " 401 invalid or revoked API key" in out
    assert "VIOLATION of invariant 6" in out
    # The printed command replays the same failure.
    status, trace, err = simulate(capsys, *replay.split()[2:])
    assert status == 1
    assert "VIOLATION of invariant 6" in trace
    assert "seed 3 (revoked) failed:" in err


def test_traced_failing_seeds_say_a_few_lines_each_and_name_the_invariant(capsys, monkeypatch):
    # Before, --trace listed every violation of every failing seed on stderr: 23,595
    # lines for 20 seeds of this bug, beside the trace that already holds them.
    buggy = functools.partial(run_seed, core_factory=RetriesFatalStatuses)
    monkeypatch.setattr("hubfsm.cli.simulate.run_seed", buggy)
    status, trace, err = simulate(
        capsys, "--profile", "revoked", "--seeds", "3-4", "--epochs", "10", "--trace"
    )
    assert status == 1
    lines = err.splitlines()
    assert [line for line in lines if not line.startswith("  ")] == [
        "seed 3 (revoked) failed:", "seed 4 (revoked) failed:"
    ]
    assert len(lines) <= 2 * (1 + 5 + 2), err
    assert re.search(r"^  \.\.\. and \d+ more$", err, re.M)
    assert err.count("(invariants broken: 6: retries follow the policy") == 2
    assert trace.count("VIOLATION of invariant 6") > 5  # the trace keeps them all
    status, out, _ = simulate(capsys, "--profile", "revoked", "--seed", "3", "--epochs", "10")
    assert "  (invariants broken: 6: retries follow the policy" in out


def test_bad_arguments_exit_2_with_a_clear_message(capsys):
    status, _, err = simulate(capsys, "--profile", "stormy")
    assert status == 2 and "unknown profile 'stormy'" in err
    status, _, err = simulate(capsys, "--epochs", "0")
    assert status == 2 and "--epochs" in err


def test_describe_prints_the_profiles_table(capsys):
    status, out, _ = simulate(capsys, "--describe")
    assert status == 0
    assert out.startswith("| profile | rehearses |")
    assert "| `partition` |" in out


def test_the_trace_is_the_same_in_another_interpreter():
    # Another process with another hash seed: nothing may hang on set or dict order.
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        command = [sys.executable, "-m", "hubfsm", "simulate", "--profile", "all", "--seed", "5"]
        outputs.add(subprocess.run([*command, "--json"], env=env, capture_output=True).stdout)
    assert len(outputs) == 1 and outputs.pop().count(b"\n") > 100


def test_protocol_platform_runs_every_profile_and_says_so(capsys):
    status, out, err = simulate(
        capsys, "--protocol", "platform", "--profile", "all", "--seeds", "0-1", "--epochs", "10"
    )
    assert status == 0, out + err
    assert "speaking the Platform dialect" in out.splitlines()[0]
    rows = [line for line in out.splitlines() if line.startswith("| ") and "seeds" not in line]
    assert len(rows) == len(PROFILES)
    assert all(row.split(" | ")[2:4] == ["0", "0"] for row in rows), rows


def test_protocol_platform_traces_only_platform_requests(capsys):
    status, out, _ = simulate(
        capsys, "--protocol", "platform", "--profile", "flaky", "--epochs", "5", "--seed", "3",
        "--trace",
    )  # fmt: skip
    assert status == 0
    sends = [line for line in out.splitlines() if " send #" in line]
    assert sends and all("/api/webhooks/" in line or " PUT http" in line for line in sends)
    assert "/v1/" not in out


def test_protocol_platform_over_http_runs_one_seed(capsys):
    status, out, err = simulate(
        capsys, "--protocol", "platform", "--http", "--profile", "calm", "--seed", "0",
        "--epochs", "4",
    )  # fmt: skip
    assert status == 0, out + err
    assert "over HTTP against a local hub, speaking the Platform dialect" in out


def test_an_unknown_protocol_is_a_usage_error(capsys):
    status, _, err = simulate(capsys, "--protocol", "grpc")
    assert status == 2 and "--protocol" in err


def test_over_http_the_failing_seed_is_printed_with_its_replay(capsys, monkeypatch):
    # A planted bug in the sessions' idempotency keys: only a world that restarts real
    # sessions from their outbox, against the real hub, can see it.
    from hubfsm.sim import http_world
    from hubfsm.sim.bugs import Bugs

    planted = functools.partial(http_world.run_http_seed, bugs=Bugs(nonce_from_seed=True))
    monkeypatch.setattr(http_world, "run_http_seed", planted)
    status, out, _ = simulate(capsys, "--http", "--profile", "crash", "--seeds", "0-2")
    assert status == 1
    found = re.search(r"^first failing seed of crash: (\d+) ", out, flags=re.M)
    assert found, out
    seed = found.group(1)
    assert f"replay: hubfsm simulate --http --profile crash --epochs 8 --seed {seed} --trace" in out


def test_the_simulated_sessions_log_lines_stay_off_the_screen_unless_asked(capsys):
    # Their lines speak of a world that exists only in the simulation: a session
    # "contacting" the public API, a record kept aside in a simulated outbox.
    args = ["--profile", "calm,poison", "--seeds", "0-40", "--epochs", "7"]
    status, out, err = simulate(capsys, *args)
    assert status == 0 and out.startswith("41 seeds x 7 epochs")
    assert err == ""
    status, _, err = simulate(capsys, "-v", *args)
    assert status == 0
    lines = err.splitlines()
    assert [line.split(":")[1] for line in lines] == [" calm", " poison"], err
    assert all(re.fullmatch(r"simulate: \w+: 41 seeds, 0 failing, [0-9.]+ s", x) for x in lines)
    # -vv shows what the sessions said, for debugging the simulator itself.
    status, _, err = simulate(capsys, "-vv", *args)
    assert status == 0
    assert "journal.record_kept_aside" in err and "session.contacting" in err


def test_jobs_default_to_a_pool_only_once_it_pays():
    from hubfsm.cli.simulate import POOL_FROM, default_jobs

    # The default run (100 seeds of one profile) and short runs stay in one process.
    assert default_jobs(100, http=False, cpus=8) == 1
    assert default_jobs(POOL_FROM - 1, http=False, cpus=8) == 1
    # From there, one process per 200 sessions, up to one per usable CPU.
    assert default_jobs(POOL_FROM, http=False, cpus=8) == 1
    assert default_jobs(2 * POOL_FROM, http=False, cpus=8) == 2
    assert default_jobs(10_000, http=False, cpus=2) == 2
    assert default_jobs(10_000, http=False, cpus=8) == 8
    # Each HTTP session serves a hub of its own: never a pool unless asked.
    assert default_jobs(10_000, http=True, cpus=8) == 1
    assert default_jobs(10_000, http=False) >= 1
