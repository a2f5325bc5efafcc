"""The ``hubfsm`` command, run as a user runs it: in a subprocess, with real sockets."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import hubfsm.cli.main as cli
from hubfsm.hub.server import LocalHub
from tests.support import KEY

pytestmark = pytest.mark.slow  # the CLI in subprocesses against served hubs

MODEL = "Mo12" * 5  # 20 characters, like a model id


def summary_value(stdout: str, pattern: str) -> str:
    found = re.search(pattern, stdout, re.MULTILINE)
    assert found, f"{pattern!r} not in {stdout!r}"
    return found.group(1)


# -- demo ----------------------------------------------------------------------------------


def test_demo_trains_and_keeps_the_records(cli: Any, tmp_path: Path, leaks: Any) -> None:
    data = tmp_path / "hub data"
    done = cli("demo", "--epochs", "3", "--data", str(data))
    key = leaks.watch((data / "api_key").read_text().strip())

    assert done.returncode == 0, done.stderr
    url = summary_value(done.stdout, r"^model page: (http://127\.0\.0\.1:\d+/models/\w{20})$")
    model_id = url.rsplit("/", 1)[1]
    assert summary_value(done.stdout, r"^epochs logged: 3, acknowledged: (\d+)$") == "3"
    assert "state: done" in done.stdout
    assert "on the hub: status trained, 3 epochs of metrics, final weights: yes" in done.stdout
    # And it says how to look at them later.
    assert done.stdout.splitlines()[-1] == (
        f"(the hub's data stays in {data}; browse it with "
        f"`hubfsm hub serve --data {shlex.quote(str(data))}`)"
    )

    # The records outlive the demo: a hub started on the same directory serves them.
    with LocalHub(data) as local:
        assert local.api_key == key
        record = local.hub.record(model_id)
        assert record is not None
        assert record["status"] == "trained" and record["has_best_weights"]
        assert record["epochs"] == 3 and record["final_epoch"] == 2
        # The seed that reproduces the run is kept with it (the demo's default, 0).
        assert record["tags"] == ["seed=0", "demo"] and "seed 0" in record["notes"]
        assert [row["epoch"] for row in local.hub.metrics(model_id)] == [0, 1, 2]
        info = local.hub.weights_info(model_id, "best")
        assert info is not None and info.size > 0
        best = requests.get(
            f"{local.url}/v1/models/{model_id}/weights/best",
            headers={"x-api-key": key},
            timeout=10,
        )
        assert hashlib.sha256(best.content).hexdigest() == info.sha256
        assert json.loads(best.content)["epoch"] <= 2


def test_demo_rides_out_a_flaky_hub(cli: Any, tmp_path: Path, leaks: Any) -> None:
    # Seed 4 fails the first two requests (a dropped connection, then a 504), so the
    # session retries at least twice whatever the timing. -vv, so the debug logs of
    # every request go through the leak guard too.
    data = tmp_path / "hub"
    done = cli(
        "-vv", "demo", "--fault-rate", "0.3", "--epochs", "3", "--seed", "4", "--data", str(data)
    )
    leaks.watch((data / "api_key").read_text().strip())

    assert done.returncode == 0, done.stderr
    assert int(summary_value(done.stdout, r"retries: (\d+)$")) >= 2
    assert summary_value(done.stdout, r"^epochs logged: 3, acknowledged: (\d+)$") == "3"
    assert "on the hub: status trained, 3 epochs of metrics" in done.stdout
    assert "request.failed" in done.stderr  # -v shows each failed attempt
    assert "http.response" in done.stderr  # and -vv shows each answer


def test_demo_against_a_served_hub_with_the_key_from_the_environment(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub")
    env = dict(os.environ, HUB_API_KEY=served.key)
    done = cli("demo", "--epochs", "2", "--hub", served.url, env=env)
    assert done.returncode == 0, done.stderr
    url = summary_value(done.stdout, r"^model page: (\S+)$")
    assert url.startswith(f"{served.url}/models/")
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "trained" in page.text


def test_demo_with_a_hub_but_no_key_says_so(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    done = cli("demo", "--hub", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "needs an API key" in done.stderr


# -- parse ---------------------------------------------------------------------------------


def test_parse_masks_the_key(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    done = cli("parse", f"{KEY}_{MODEL}")
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert parsed["kind"] == "model"
    assert parsed["model_id"] == MODEL
    assert parsed["filename"] is None
    assert parsed["api_key"] == "*" * 38 + KEY[-4:]


@pytest.mark.parametrize(
    "identifier",
    [
        pytest.param(f"{KEY}_{MODEL[:-1]}", id="model id one short"),
        pytest.param(f"{KEY}_{MODEL}_x", id="two underscores"),
        pytest.param(f"{KEY}x_{MODEL}", id="key one too long"),
        pytest.param(f"https://example.com/models/{MODEL}?key={KEY}", id="key in a query"),
        pytest.param(KEY, id="key alone"),
    ],
)
def test_parse_rejects_a_bad_identifier_without_echoing_the_key(
    cli: Any, identifier: str, tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    done = cli("parse", identifier)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: invalid model identifier")


def test_parse_a_model_url_of_a_local_web_root(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    root = "http://127.0.0.1:8000"
    done = cli("parse", f"{root}/models/{MODEL}", "--web-root", root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "kind": "model",
        "api_key": None,
        "model_id": MODEL,
        "filename": None,
    }


# -- help ----------------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and subcommand of ``parser``, with the words that name it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


COMMANDS = [path for path, _ in commands(cli.build_parser())]


def test_the_command_tree_is_what_the_docs_say(leaks: Any) -> None:
    leaks.watch(KEY)
    assert {" ".join(path) for path in COMMANDS} >= {
        "demo",
        "parse",
        "hub",
        "hub serve",
        "simulate",
    }


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_of_every_command(
    path: tuple[str, ...], capfd: pytest.CaptureFixture[str], leaks: Any
) -> None:
    leaks.watch(KEY)
    parser = dict(commands(cli.build_parser()))[path]
    with pytest.raises(SystemExit) as exited:
        cli.main([*path, "--help"])
    assert exited.value.code == 0
    text = capfd.readouterr().out
    assert text.startswith(f"usage: hubfsm {' '.join(path)}")
    assert parser.description and " ".join(parser.description.split()) in " ".join(text.split())
    assert "\nexample:\n" in text
    examples = [
        line.strip() for line in text.split("\nexample:\n", 1)[1].splitlines() if line.strip()
    ]
    assert examples
    # Every example parses as it is written (after its environment and redirections).
    for example in examples:
        words = command_words(example)
        assert words[0] == "hubfsm" and tuple(words[1 : 1 + len(path)]) == path, example
        cli.build_parser().parse_args(words[1:])


def command_words(line: str) -> list[str]:
    """The words of a shell example line, without ``VAR=...`` prefixes and redirections."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)
    for i, word in enumerate(words):
        if word and set(word) <= set("<>|&;"):
            return words[:i]
    return words


def test_help_in_a_subprocess(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    top = cli("--help")
    assert top.returncode == 0
    assert "usage: hubfsm" in top.stdout
    for name in ("demo", "parse", "hub", "simulate"):
        assert name in top.stdout
    serve = cli("hub", "serve", "--help")
    assert serve.returncode == 0 and "example:" in serve.stdout and "--port" in serve.stdout
    bare = cli()
    assert bare.returncode == 2 and "usage: hubfsm" in bare.stdout


# -- hub serve -----------------------------------------------------------------------------


def test_hub_serve_says_how_to_use_it_and_stops_on_ctrl_c(
    serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    data = tmp_path / "hub data"  # a space, so the printed shell line must quote the path
    served = serve_hub(data)
    banner = served.banner
    leaks.check(banner, "serve stdout")
    assert f"Local hub serving at {served.url}" in banner
    assert f"API key:  in {served.key_file}" in banner
    assert f"export ULTRALYTICS_HUB_API={served.url}" in banner
    assert "export HUB_API_KEY=$(cat " in banner
    assert stat.S_IMODE(served.key_file.stat().st_mode) == 0o600

    # The printed export lines work as they are, and give the key that the hub accepts.
    exports = [line.strip() for line in banner.splitlines() if line.strip().startswith("export ")]
    probe = (
        "import hashlib, os; print(os.environ['ULTRALYTICS_HUB_API'], "
        "hashlib.sha256(os.environ['HUB_API_KEY'].encode()).hexdigest())"
    )
    script = "; ".join(exports) + f"; exec {shlex.quote(sys.executable)} -c {shlex.quote(probe)}"
    shell = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=10, cwd=tmp_path
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == [served.url, hashlib.sha256(served.key.encode()).hexdigest()]
    auth = requests.post(f"{served.url}/v1/auth", headers={"x-api-key": served.key}, timeout=10)
    assert auth.status_code == 200

    code, _ = served.spawned.stop(signal.SIGINT)  # raises if it had to be killed
    assert code == 0
    assert "Stopping." in served.spawned.stdout
    leaks.check(served.spawned.stdout + served.spawned.stderr, "serve output")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{served.url}/v1/auth", headers={"x-api-key": served.key}, timeout=2)


def test_hub_serve_stops_on_sigterm(
    serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub", "--fault-rate", "0.2", "--rate-limit", "5")
    assert "faults:" in served.banner and "limit:" in served.banner
    code, _ = served.spawned.stop(signal.SIGTERM)  # raises if it had to be killed
    assert code in (0, -signal.SIGTERM)
    leaks.check(served.spawned.stdout + served.spawned.stderr, "serve output")


# -- simulate ------------------------------------------------------------------------------


def test_simulate_prints_the_table(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    done = cli("simulate", "--seeds", "0-19")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| profile |"))
    header = [cell.strip() for cell in lines[at].strip("|").split("|")]
    assert set(lines[at + 1]) <= set("|-: ")
    cells = [cell.strip() for cell in lines[at + 2].strip("|").split("|")]
    assert len(cells) == len(header)
    row = dict(zip(header, cells, strict=True))
    assert row["profile"] == "flaky" and row["seeds"] == "20"
    assert row["failing seeds"] == "0" and row["violations"] == "0"
    assert row["end states"] == "done 20"


def test_simulate_refuses_a_backwards_range(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    done = cli("simulate", "--seeds", "9-3")
    assert done.returncode == 2
    assert "N <= M" in done.stderr


# -- first contact: usage errors, a wrong address, outboxes --------------------------------


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The single line a failed command printed; no traceback, nothing on stdout."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def refused_port() -> int:
    """A port that refuses connections: bound, never listening, until the tests end.

    Closed at once, it could be listened on by another test's server before use.
    """
    import atexit
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    atexit.register(probe.close)
    return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["demo", "--hub", "127.0.0.1:8765"], "http:// or https:// URL"),
        (["demo", "--hub", "http://127.0.0.1:8799x"], "invalid port"),
        (["demo", "--epochs", "0"], "at least 1"),
        (["demo", "--epochs", "-2"], "at least 1"),
        (["demo", "--epochs", "many"], "not a number"),
        (["demo", "--fault-rate", "2"], "from 0 to 1"),
        (["demo", "--data", "a-file"], "is a file"),
        (["demo", "--key", KEY], "only with --hub"),
        (["demo", "--web-root", "http://127.0.0.1:1"], "only with --hub"),
        (["hub", "serve", "--fault-rate", "1.5"], "from 0 to 1"),
        (["hub", "serve", "--latency", "-1"], "0 or more seconds"),
        (["hub", "serve", "--port", "99999"], "from 1 to 65535"),
        (["hub", "serve", "--data", "a-file"], "is a file"),
        (["hub", "serve", "--rate-limit", "nan"], "not a finite number"),
        # Before, a hub that answered nothing, or refused every JSON body or upload with
        # 413 "body larger than -1048576 bytes"; and "cannot convert float NaN to integer".
        (["hub", "serve", "--timeout", "-1"], "more than 0"),
        (["hub", "serve", "--timeout", "nan"], "not a finite number"),
        (["hub", "serve", "--max-json-mib", "-1"], "more than 0"),
        (["hub", "serve", "--max-upload-mib", "0"], "at least 1"),
        # Before, a cut-off in the future: every upload under way deleted.
        (["hub", "sweep", "--older-than-hours", "-1"], "0 or more"),
        (["sync", "--timeout", "0"], "more than 0"),
        (["simulate", "--jobs", "0"], "at least 1"),
        (["status", "no-such-dir"], "no-such-dir does not exist"),
        (["sync", "no-such-dir"], "no-such-dir does not exist"),
    ],
    ids=" ".join,
)
def test_bad_input_is_one_line_and_exit_2(
    cli: Any, tmp_path: Path, leaks: Any, args: list[str], says: str
) -> None:
    leaks.watch(KEY)
    (tmp_path / "a-file").write_text("not a directory")
    done = cli(*args)
    assert says in one_line_error(done, 2)
    assert done.stdout == ""
    assert not (tmp_path / "hub-data").exists()


def test_a_hub_that_is_not_running_fails_in_seconds_and_says_so(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    root = f"http://127.0.0.1:{refused_port()}"
    env = dict(os.environ, HUB_API_KEY=leaks.watch(KEY))
    done = cli("demo", "--hub", root, "--epochs", "1", env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # One line: no warning per attempt before it (those are for -v).
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: cannot reach the hub")
    assert f"is the hub at {root} running?" in line
    assert "model created" not in done.stdout


def test_https_against_a_plain_http_hub_is_fatal_at_once(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub")
    tls_root = served.url.replace("http://", "https://")
    env = dict(os.environ, HUB_API_KEY=served.key)
    done = cli("demo", "-v", "--hub", tls_root, "--epochs", "1", env=env)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: cannot reach the hub") and "check the scheme" in last
    # Fatal at the first attempt: one request, never retried (-v after the command works).
    assert done.stderr.count("request.failed") == 1


def test_hub_serve_on_a_port_in_use_is_one_line_and_leaves_no_directory(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "new-hub"
        done = cli("hub", "serve", "--data", str(data), "--port", str(port))
    line = one_line_error(done, 1)
    assert line == (
        f"error: cannot serve at 127.0.0.1:{port}: the port is in use (another `hubfsm hub "
        "serve`?); pick another with --port N, or --port 0 for any free one"
    )
    assert not data.exists()


def test_hub_serve_on_a_port_in_use_keeps_an_existing_hub(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    data = tmp_path / "hub"
    with LocalHub(data) as local:
        leaks.watch(local.api_key)
        done = cli("hub", "serve", "--data", str(data), "--port", str(local.port))
        one_line_error(done, 1)
    assert (data / "api_key").read_text().strip() == local.api_key


def test_a_refused_key_is_one_line_with_no_warning_before_it(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub")
    env = dict(os.environ, HUB_API_KEY=leaks.watch(KEY))
    done = cli("demo", "--hub", served.url, "--epochs", "1", env=env)
    line = one_line_error(done, 1)
    assert line == (
        "error: the hub refused the API key (401) on POST /v1/models: invalid or revoked API key"
    )


def test_keys_list_with_a_misspelled_data_directory_creates_nothing(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    data = tmp_path / "hub"
    with LocalHub(data) as local:
        leaks.watch(local.api_key)
    typo = tmp_path / "hbu"
    for words in (["list"], ["revoke", "abcd"]):
        done = cli("hub", "keys", *words, "--data", str(typo))
        line = one_line_error(done, 1)
        assert line == (
            f"error: {typo} holds no local hub (no api_key file): check --data, or create "
            f"one with `hubfsm hub serve --data {typo}`"
        )
        assert not typo.exists()
    listed = cli("hub", "keys", "list", "--data", str(data))
    assert listed.returncode == 0 and "api_key file" in listed.stdout


def test_two_demo_runs_against_one_hub_create_two_models(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub")
    key_file = tmp_path / "key"
    key_file.write_text(served.key + "\n")
    key_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "HUB_API_KEY"}
    urls = []
    for _ in range(2):
        done = cli(
            "demo", "--epochs", "1", "--hub", served.url, "--key-file", str(key_file), env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # an owner-only key file, and a quiet library
        urls.append(summary_value(done.stdout, r"^model page: (\S+)$"))
    assert urls[0] != urls[1]


def test_a_key_file_others_can_read_is_warned_about(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub")
    key_file = tmp_path / "key"
    key_file.write_text(served.key)
    key_file.chmod(0o644)
    done = cli("demo", "--epochs", "1", "--hub", served.url, "--key-file", str(key_file))
    assert done.returncode == 0, done.stderr
    assert "can be read by other users" in done.stderr and "chmod 600" in done.stderr


def test_the_demo_is_quiet_on_stderr_and_verbose_on_request(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    quiet = cli("demo", "--epochs", "1")
    assert quiet.returncode == 0 and quiet.stderr == ""
    info = cli("-v", "demo", "--epochs", "1")
    assert "session.transition" in info.stderr and "http.response" not in info.stderr
    assert "session.transition" not in info.stdout


def test_ctrl_c_in_the_demo_says_what_it_does_and_leaves_no_outbox(
    spawn: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    outboxes = Path(os.environ["HUBFSM_OUTBOX"])
    running = spawn("demo", "--epochs", "200")
    running.wait_for_line("epoch 2/200", timeout=30)
    code, _ = running.stop(signal.SIGINT, timeout=20)
    assert code == 130, running.stderr
    assert "interrupted: sending what the hub has not acknowledged" in running.stderr
    assert "Traceback" not in running.stderr
    assert "hubfsm sync" not in running.stdout + running.stderr
    assert not outboxes.exists() or list(outboxes.iterdir()) == []


def test_ctrl_c_in_the_demo_keeps_the_outbox_with_the_kept_data(
    spawn: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    data = tmp_path / "kept"
    running = spawn("demo", "--epochs", "200", "--data", str(data))
    running.wait_for_line("epoch 2/200", timeout=30)
    leaks.watch((data / "api_key").read_text().strip())
    code, _ = running.stop(signal.SIGINT, timeout=20)
    assert code == 130, running.stderr
    # Whatever was left waits beside the hub's records, not in the user's outbox root.
    outboxes = Path(os.environ["HUBFSM_OUTBOX"])
    assert not outboxes.exists() or list(outboxes.iterdir()) == []
    for line in running.stderr.splitlines():
        if "hubfsm sync" in line:
            assert str(data / "outbox") in line
            assert "--key " not in line
    if (data / "outbox").is_dir() and any((data / "outbox").iterdir()):
        # The embedded hub is gone: the way back names its port and its key file.
        assert f"hubfsm hub serve --data {data} --port" in running.stderr
        assert f"--key-file {data / 'api_key'} {data / 'outbox'}" in running.stderr


def offline_outbox(root: Path, model_id: str = MODEL, epochs: int = 2) -> Path:
    """An outbox under ``root`` holding ``epochs`` epochs that were never sent."""
    import hubfsm

    session = hubfsm.Session(model_id, api_key=KEY, outbox_dir=root, offline=True)
    session.start()
    for epoch in range(epochs):
        session.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    session.close(timeout=5)
    return root / model_id


def test_sync_without_a_key_names_the_options(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    offline_outbox(tmp_path / "outbox")
    env = {k: v for k, v in os.environ.items() if k != "HUB_API_KEY"}
    line = one_line_error(cli("sync", str(tmp_path / "outbox"), env=env), 2)
    assert "HUB_API_KEY" in line and "--key" in line and "api_key=" not in line


def test_sync_tells_a_gone_model_from_an_unreachable_hub(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    root = tmp_path / "outbox"
    offline_outbox(root)
    served = serve_hub(tmp_path / "hub")
    env = dict(os.environ, HUB_API_KEY=served.key)

    gone = cli("sync", str(root), "--hub", served.url, env=env)
    assert gone.returncode == 1
    assert f"sending 2 epochs of metrics to {served.url}" in gone.stdout
    # Models belong to the key that made them: a 404 is no advice to delete what is kept.
    assert "not found for this key" in gone.stdout
    assert "discard" not in gone.stdout and "is gone" not in gone.stdout

    down = f"http://127.0.0.1:{refused_port()}"
    unreachable = cli("sync", str(root), "--hub", down, env=env)
    assert unreachable.returncode == 1
    assert "cannot reach the hub (" in unreachable.stdout
    assert "could not reach" not in unreachable.stdout  # said once, not wrapped again
    assert f"is the hub at {down} running?" in unreachable.stdout
    assert "Traceback" not in gone.stderr + unreachable.stderr


def test_status_points_at_sync_and_discard(cli: Any, tmp_path: Path, leaks: Any) -> None:
    leaks.watch(KEY)
    offline_outbox(tmp_path / "outbox")
    done = cli("status", str(tmp_path / "outbox"))
    assert done.returncode == 0
    assert re.search(rf"^{MODEL} +2 ", done.stdout, re.M), done.stdout
    assert "hubfsm discard MODEL_ID" in done.stdout
    # Aligned columns that fit a terminal (the root is named once, above them).
    table = done.stdout.splitlines()[1:3]
    assert table[0].split()[:4] == ["model", "metrics", "ckpt", "final"]
    assert all(len(line) <= 100 for line in table), table

    shown = cli("status", "--json", str(tmp_path / "outbox"))
    assert shown.returncode == 0, shown.stderr
    (outbox,) = json.loads(shown.stdout)["outboxes"]
    assert outbox["model_id"] == MODEL and outbox["pending"]["metrics"] == 2
    assert outbox["directory"] == str(tmp_path / "outbox" / MODEL)
    assert outbox["hub"]["api_root"] == "https://api.ultralytics.com"


def test_discard_asks_first_then_deletes_only_the_outbox(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    root = tmp_path / "outbox"
    directory = offline_outbox(root)
    other = offline_outbox(root, "Ot12" * 5)
    env = dict(os.environ, HUBFSM_OUTBOX=str(root))

    asked = cli("discard", MODEL, env=env)  # stdin is not a terminal: no answer possible
    assert "--yes" in one_line_error(asked, 1) and directory.exists()

    done = cli("discard", MODEL, "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert "discarded the outbox of model" in done.stdout and "2 epochs" in done.stdout
    assert not directory.exists() and other.exists() and root.exists()

    again = cli("discard", MODEL, "--yes", env=env)
    assert "no outbox for model" in one_line_error(again, 1)


@pytest.mark.parametrize("target", ["..", "../outbox", "not-an-outbox", "a/b"])
def test_discard_refuses_what_is_not_an_outbox(
    cli: Any, tmp_path: Path, leaks: Any, target: str
) -> None:
    leaks.watch(KEY)
    root = tmp_path / "outbox"
    offline_outbox(root)
    (tmp_path / "not-an-outbox").mkdir()
    env = dict(os.environ, HUBFSM_OUTBOX=str(root))
    one_line_error(cli("discard", target, "--yes", env=env), 1)
    assert (root / MODEL / "outbox.sqlite3").exists() and (tmp_path / "not-an-outbox").exists()


def test_discard_refuses_an_outbox_in_use(cli: Any, tmp_path: Path, leaks: Any) -> None:
    import hubfsm

    leaks.watch(KEY)
    root = tmp_path / "outbox"
    directory = offline_outbox(root)
    session = hubfsm.Session(MODEL, api_key=KEY, outbox_dir=root, offline=True)
    try:
        done = cli("discard", str(directory), "--yes")
        assert "running session" in one_line_error(done, 1)
        assert directory.exists()
    finally:
        session.close(timeout=5)


def test_parse_takes_a_local_hub_url_from_the_environment(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    root = "http://127.0.0.1:8000"
    env = dict(os.environ, ULTRALYTICS_HUB_WEB=root)
    done = cli("parse", f"{root}/models/{MODEL}", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_id"] == MODEL
    bare = {k: v for k, v in os.environ.items() if k != "ULTRALYTICS_HUB_WEB"}
    refused = cli("parse", f"{root}/models/{MODEL}", env=bare)
    assert "--web-root" in one_line_error(refused, 2)


def test_simulate_help_lists_every_profile(capfd: pytest.CaptureFixture[str], leaks: Any) -> None:
    from hubfsm.sim.profiles import PROFILES

    leaks.watch(KEY)
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    text = " ".join(capfd.readouterr().out.split())
    for name in PROFILES:
        assert name in text
    assert "or all" in text


def test_key_options_say_where_else_the_key_can_come_from(
    capfd: pytest.CaptureFixture[str], leaks: Any
) -> None:
    leaks.watch(KEY)
    for command in (["demo"], ["sync"]):
        with pytest.raises(SystemExit):
            cli.main([*command, "--help"])
        text = " ".join(capfd.readouterr().out.split())
        assert "--key-file" in text and "HUB_API_KEY" in text and "ps" in text


def test_discard_rejected_drops_only_what_the_hub_refused(
    cli: Any, tmp_path: Path, leaks: Any
) -> None:
    from hubfsm.core import protocol
    from hubfsm.core.values import Rejected
    from hubfsm.durable.outbox import Outbox

    leaks.watch(KEY)
    root = tmp_path / "outbox"
    offline_outbox(root)  # two epochs pending
    outbox = Outbox.open(MODEL, root)
    refused = protocol.upload_metrics(MODEL, {7: '{"loss": "NaN"}'}, key="k-7")
    outbox.apply([Rejected("metrics", refused, (7,), 400, "loss is not a number")])
    outbox.close()
    env = dict(os.environ, HUBFSM_OUTBOX=str(root))
    assert "rejected by the hub" in cli("status", env=env).stdout

    done = cli("discard", MODEL, "--rejected", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert "discarded 1 rejected record(s)" in done.stdout
    after = cli("status", env=env)
    assert "rejected by the hub" not in after.stdout
    assert re.search(rf"^{MODEL} +2 +0 +0 +0 ", after.stdout, re.M), after.stdout


def hub_model(served: Any) -> str:
    """Create a model on a served hub; returns its id."""
    from hubfsm.core import protocol

    created = requests.post(
        f"{served.url}/v1/models",
        json=protocol.create_payload("yolov8n.yaml", {}),
        headers={"x-api-key": served.key},
        timeout=10,
    )
    assert created.status_code == 200, created.text
    return str(created.json()["data"]["id"])


def truncate_outbox(directory: Path) -> None:
    """Cut an outbox's database in half, as a full disk or a bad copy leaves it."""
    db = directory / "outbox.sqlite3"
    with open(db, "r+b") as f:
        f.truncate(os.path.getsize(db) // 2)
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)


def test_sync_sets_a_damaged_outbox_aside_and_delivers_the_others(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    leaks.watch(KEY)
    served = serve_hub(tmp_path / "hub")
    model = hub_model(served)
    root = tmp_path / "outbox"
    offline_outbox(root, model, epochs=5)
    truncate_outbox(offline_outbox(root, MODEL, epochs=50))
    env = dict(os.environ, HUB_API_KEY=served.key)

    done = cli("sync", str(root), "--hub", served.url, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"damaged: the outbox in {root / MODEL}" in done.stdout
    assert "set aside as" in done.stdout and "synced 1 of 1" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    arrived = requests.get(
        f"{served.url}/v1/models/{model}/metrics", headers={"x-api-key": served.key}, timeout=10
    ).json()["data"]
    assert len(arrived) == 5


def test_the_printed_sync_command_sends_to_the_hub_the_outbox_was_made_for(
    cli: Any,
    serve_hub: Callable[..., Any],
    tmp_path: Path,
    leaks: Any,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import hubfsm

    served = serve_hub(tmp_path / "hub")
    model = hub_model(served)
    root = tmp_path / "outbox"
    session = hubfsm.Session(
        model, api_key=served.key, api_root=served.url, outbox_dir=root, offline=True
    )
    session.start()
    for epoch in range(3):
        session.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    session.close(timeout=5)
    hint = re.search(r"`(HUB_API_KEY=\.\.\. hubfsm sync [^`]*)`", capfd.readouterr().err)
    assert hint, "no sync command printed"
    words = shlex.split(hint.group(1))
    assert words[:5] == ["HUB_API_KEY=...", "hubfsm", "sync", "--hub", served.url]
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("ULTRALYTICS_", "HUB_"))}

    listed = cli("status", str(root), env=bare)
    assert served.url in listed.stdout

    # Another hub in the environment: refused, with the commands that work.
    elsewhere = f"http://127.0.0.1:{refused_port()}"
    refused = cli(
        "sync", str(root), env=dict(bare, HUB_API_KEY=served.key, ULTRALYTICS_HUB_API=elsewhere)
    )
    assert refused.returncode == 1
    assert f"made for the hub at {served.url}" in refused.stdout
    assert f"hubfsm sync --hub {served.url}" in refused.stdout

    # As printed, with the key where the command says: delivered to the hub it was made for.
    done = cli(*words[2:], env=dict(bare, HUB_API_KEY=served.key))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"to {served.url}" in done.stdout and "all sent" in done.stdout
    arrived = requests.get(
        f"{served.url}/v1/models/{model}/metrics", headers={"x-api-key": served.key}, timeout=10
    ).json()["data"]
    assert len(arrived) == 3


def test_after_a_key_is_revoked_transfer_lets_the_new_key_sync_what_was_kept(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub")
    data = str(tmp_path / "hub")
    model = hub_model(served)  # made with the hub's first key
    root = tmp_path / "outbox"
    offline_outbox(root, model, epochs=3)
    listed = cli("hub", "keys", "list", "--data", data)
    old_id = listed.stdout.splitlines()[1].split()[0]
    assert cli("hub", "keys", "revoke", old_id, "--data", data).returncode == 0
    from hubfsm.hub import admin

    new_key = leaks.watch(admin.add(data, "new", out=io.StringIO()))  # printed once, not here
    key_file = tmp_path / "new_key"
    key_file.write_text(new_key)
    key_file.chmod(0o600)

    before = cli("sync", str(root), "--hub", served.url, "--key-file", str(key_file))
    assert before.returncode == 1
    assert "not found for this key" in before.stdout and "hubfsm hub keys transfer" in before.stdout
    assert (root / model / "outbox.sqlite3").exists()  # nothing was advised away

    moved = cli("hub", "keys", "transfer", old_id, "new", "--data", data)
    assert moved.returncode == 0, moved.stderr
    after = cli("sync", str(root), "--hub", served.url, "--key-file", str(key_file))
    assert after.returncode == 0, after.stdout + after.stderr
    assert "all sent" in after.stdout
    arrived = requests.get(
        f"{served.url}/v1/models/{model}/metrics", headers={"x-api-key": new_key}, timeout=10
    ).json()["data"]
    assert len(arrived) == 3


def _refused_platform_run(
    cli: Any, served: Any, data: str, leaks: Any, capfd: pytest.CaptureFixture[str], root: Path
) -> tuple[str, str, list[str]]:
    """A Platform run whose key is revoked after it opened, its model then handed to a new
    key: (the model, the new key, the sync command the run printed, as words)."""
    import hubfsm
    from hubfsm.hub import admin

    old_key = leaks.watch(admin.add(data, "old", out=io.StringIO(), platform=True))
    new_key = leaks.watch(admin.add(data, "new", out=io.StringIO(), platform=True))
    session = hubfsm.Session(
        "alice/birds",
        protocol="platform",
        api_key=old_key,
        api_root=served.url,
        outbox_dir=root,
        train_args={"name": "run1", "epochs": 3},
    )
    model = session.model_id
    assert model is not None
    session.start()
    listed = cli("hub", "keys", "list", "--data", data).stdout.splitlines()
    old_id = next(line.split()[0] for line in listed if " old " in line)
    assert cli("hub", "keys", "revoke", old_id, "--data", data).returncode == 0
    try:
        for epoch in range(3):
            session.log_metrics({"train/loss": 1.0 / (epoch + 1)}, epoch=epoch)
        session.flush(timeout=30)  # the hub refuses the revoked key: nothing is sent
    finally:
        with pytest.raises(hubfsm.AuthError):
            session.close(timeout=5)
    hint = re.search(r"`([A-Z_]+=\.\.\. hubfsm sync [^`]*)`", capfd.readouterr().err)
    assert hint, "no sync command printed"
    assert cli("hub", "keys", "transfer", old_id, "new", "--data", data).returncode == 0
    return model, new_key, shlex.split(hint.group(1))


@pytest.mark.parametrize("key_in", ["the variable", "yolo login"])
def test_the_sync_command_a_platform_run_prints_after_a_revoked_key_works_as_printed(
    key_in: str,
    cli: Any,
    serve_hub: Callable[..., Any],
    tmp_path: Path,
    leaks: Any,
    capfd: pytest.CaptureFixture[str],
) -> None:
    served = serve_hub(tmp_path / "hub")
    model, new_key, words = _refused_platform_run(
        cli, served, str(tmp_path / "hub"), leaks, capfd, tmp_path / "outbox"
    )
    assert words[:5] == ["ULTRALYTICS_API_KEY=...", "hubfsm", "sync", "--hub", served.url]
    # As printed, with the new key where the command says, and nothing else set; or, as a
    # user of ultralytics 8.4 who signed in with `yolo login` and set no variable, with the
    # key where ultralytics keeps it (YOLO_CONFIG_DIR; 8.4 keeps an Ultralytics folder).
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("ULTRALYTICS_", "HUB_"))}
    config = tmp_path / "yolo"
    env = dict(bare, YOLO_CONFIG_DIR=str(config))
    if key_in == "the variable":
        env["ULTRALYTICS_API_KEY"] = new_key
    else:
        nowhere = cli(*words[2:], env=env)
        assert nowhere.returncode == 2
        assert "ULTRALYTICS_API_KEY, `yolo login KEY`" in nowhere.stderr
        settings = config / "Ultralytics" / "settings.json"
        settings.parent.mkdir(parents=True)
        # As 8.4 writes it; a HUB key in 8.2's file beside it is not offered to Platform.
        settings.write_text(json.dumps({"settings_version": "0.0.8", "api_key": new_key}))
        (config / "settings.yaml").write_text("api_key: " + "h" * 42 + "\n")
    done = cli(*words[2:], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all sent" in done.stdout
    assert new_key not in done.stdout + done.stderr
    record = requests.get(f"{served.url}/models/{model}/data.json", timeout=10).json()
    assert [row["epoch"] for row in record["metrics"]] == [0, 1, 2]
