import ast
from pathlib import Path

import pytest

from hubfsm import env
from tests.support import KEY
from transports.settings import Secret, check_root


def test_an_empty_variable_counts_as_unset():
    assert env.api_key({"HUB_API_KEY": ""}) is None
    assert env.api_root({"ULTRALYTICS_HUB_API": "http://127.0.0.1:8000"}) == "http://127.0.0.1:8000"
    assert env.rank({"RANK": "  "}) is None and env.rank({"RANK": " 3 "}) == "3"


@pytest.mark.parametrize(("text", "on"), [("1", True), ("Yes", True), ("true", True), ("0", False), ("", False)])
def test_offline_takes_one_true_or_yes(text, on):
    assert env.offline({"HUBFSM_OFFLINE": text}) is on


def test_the_transport_reads_the_api_root_through_env_and_an_argument_wins(monkeypatch):
    monkeypatch.setenv("ULTRALYTICS_HUB_API", "http://127.0.0.1:9")
    key = Secret(KEY)
    assert check_root(None, allow_insecure=False, key=key)[0] == "http://127.0.0.1:9"
    assert check_root("http://127.0.0.1:8", allow_insecure=False, key=key)[0] == "http://127.0.0.1:8"


def test_no_module_but_env_reads_the_environment():
    root = Path(__file__).resolve().parents[2]
    readers = []
    for path in [*root.joinpath("hubfsm").rglob("*.py"), *root.joinpath("transports").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = None
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                value = node.value
                name = value.id if isinstance(value, ast.Name) else None
            if name == "os" and path.name != "env.py":
                readers.append(str(path.relative_to(root)))
    assert readers == []
