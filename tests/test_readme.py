import pathlib
import re

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
