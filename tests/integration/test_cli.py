"""The ``hubfsm`` command, run as a user runs it: in a subprocess, with real sockets."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import signal
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

KEY = "Ab12" * 10 + "Cd"  # 42 characters, like a hub API key
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

    # The records outlive the demo: a hub started on the same directory serves them.
    with LocalHub(data) as local:
        assert local.api_key == key
        record = local.hub.record(model_id)
        assert record is not None
        assert record["status"] == "trained" and record["has_best_weights"]
        assert record["epochs"] == 3 and record["final_epoch"] == 2
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
    # session retries at least twice whatever the timing. Verbose, so the debug logs of
    # every request go through the leak guard too.
    data = tmp_path / "hub"
    done = cli(
        "-v", "demo", "--fault-rate", "0.3", "--epochs", "3", "--seed", "4", "--data", str(data)
    )
    leaks.watch((data / "api_key").read_text().strip())

    assert done.returncode == 0, done.stderr
    assert int(summary_value(done.stdout, r"retries: (\d+)$")) >= 2
    assert summary_value(done.stdout, r"^epochs logged: 3, acknowledged: (\d+)$") == "3"
    assert "on the hub: status trained, 3 epochs of metrics" in done.stdout
    assert "request.failed" in done.stderr  # retries are reported as warnings
    assert "http.response" in done.stderr  # and -v shows each answer


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

    code, seconds = served.spawned.stop(signal.SIGINT)
    assert code == 0 and seconds < 3
    assert "Stopping." in served.spawned.stdout
    leaks.check(served.spawned.stdout + served.spawned.stderr, "serve output")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{served.url}/v1/auth", headers={"x-api-key": served.key}, timeout=2)


def test_hub_serve_stops_on_sigterm(
    serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub", "--fault-rate", "0.2", "--rate-limit", "5")
    assert "faults:" in served.banner and "limit:" in served.banner
    code, seconds = served.spawned.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM) and seconds < 3
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
