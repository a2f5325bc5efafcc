import pathlib
import re

import tomllib

ROOT = pathlib.Path(__file__).parents[1]


def fenced_commands(text):
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_the_readme_starts_with_the_install_and_test_commands():
    blocks = fenced_commands((ROOT / "README.md").read_text())
    assert blocks[0] == "pip install -e . && hubfsm demo"
    assert blocks[1].startswith("pip install -e '.[test]'")


def test_ci_runs_the_readme_test_command_word_for_word():
    test_command = fenced_commands((ROOT / "README.md").read_text())[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_ci_also_runs_the_tests_the_readme_command_leaves_out():
    # The default run deselects `slow` (pyproject's addopts); CI runs those next, so the
    # two runs together are the whole suite.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    addopts = pyproject["tool"]["pytest"]["ini_options"]["addopts"]
    assert addopts.endswith("-m 'not slow'")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    readme_line = ci.index(fenced_commands((ROOT / "README.md").read_text())[1])
    assert ci[readme_line + 1] == "python -m pytest -q -m slow"
