"""The docs cannot rot: their code runs, their commands parse, their generated parts are
current, the tests they cite exist, and the site builds with ``mkdocs build --strict``.

- Every ```python block of docs/**/*.md and of the README runs in a fresh interpreter, in a temporary
  directory, with ``ULTRALYTICS_HUB_API``, ``ULTRALYTICS_HUB_WEB`` and ``HUB_API_KEY``
  pointing at a local hub. A block after a ``<!-- no-test -->`` line (for the real HUB
  only) is compiled, not run.
- Every ```bash line must be a known program; a ``hubfsm`` line must parse with the
  command's own parser. In the hand-written pages, ``hubfsm parse``, ``hubfsm simulate``
  and ``hubfsm demo`` on its embedded hub also run. When such a block is followed by an
  output block, ``hubfsm parse`` must print exactly that output, and ``hubfsm simulate
  --trace`` every line of it, in order. The examples in generated blocks come from the
  commands' own help: they are parsed, not run.
- Every ```json block is valid JSON.
- Every ``tests/...py::test_name`` the docs cite exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator

import attrs
import pytest

import hubfsm
from hubfsm.cli.main import build_parser
from hubfsm.hub.server import LocalHub
from tools import docs_gen

ROOT = pathlib.Path(__file__).parents[1]
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test -->"
TIMEOUT = 180

#: The programs a ```bash block may run (only ``hubfsm`` lines are parsed and run).
PROGRAMS = {"hubfsm", "python", "export", "unset", "pip", "ruff", "mypy", "mkdocs", "bash"}

_FENCE = re.compile(r"^(`{3,})([\w+-]*)[ \t]*$")


@attrs.frozen
class Block:
    """One fenced block of a page."""

    page: pathlib.Path
    line: int
    lang: str
    code: str
    skip: bool
    generated: bool = False  # inside a block that tools.docs_gen writes
    output: Block | None = None  # the block right after it, when only blank lines part them

    @property
    def id(self) -> str:
        base = DOCS if self.page.is_relative_to(DOCS) else ROOT
        return f"{self.page.relative_to(base)}:{self.line}"


def blocks_of(page: pathlib.Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[tuple[int, int, str, str, bool, bool]] = []
    generated = False
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            if lines[i].startswith("<!-- generated: "):
                generated = True
            elif lines[i].startswith(docs_gen.END):
                generated = False
            i += 1
            continue
        fence, lang = match.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == fence), None)
        assert end is not None, f"{page}:{i + 1}: unclosed code fence"
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append((i, end, lang, code, before == NO_TEST, generated))
        i = end + 1
    result: list[Block] = []
    for n in range(len(found) - 1, -1, -1):
        start, end, lang, code, skip, generated = found[n]
        output = None
        if n + 1 < len(found) and result:
            next_start = found[n + 1][0]
            if all(not line.strip() for line in lines[end + 1 : next_start]):
                output = result[0]
        result.insert(0, Block(page, start + 1, lang, code, skip, generated, output))
    return result


PAGES = sorted(DOCS.rglob("*.md"))
#: The README's examples run like the docs' (its first two blocks are also checked, word
#: for word, by tests/test_readme.py).
README = ROOT / "README.md"
BLOCKS = [block for page in [*PAGES, README] for block in blocks_of(page)]


def of(lang: str) -> list[Block]:
    return [block for block in BLOCKS if block.lang == lang]


def ids(blocks: list[Block]) -> list[str]:
    return [block.id for block in blocks]


# -- an environment for the examples -------------------------------------------------


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local hub for the whole module, and the environment that points at it."""
    with LocalHub(tmp_path_factory.mktemp("hub")) as local:
        yield {
            "ULTRALYTICS_HUB_API": local.url,
            "ULTRALYTICS_HUB_WEB": local.url,
            "HUB_API_KEY": local.api_key,
        }


def clean_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    """This process's environment without the hub's variables, plus ``extra``.

    The user data directory (where the local hub and any session files would go) moves
    into ``tmp_path``, and this checkout comes first on the import path.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ULTRALYTICS_HUB_API", "ULTRALYTICS_HUB_WEB", "HUB_API_KEY")
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(
    argv: list[str], cwd: pathlib.Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def explain(what: str, done: subprocess.CompletedProcess[str]) -> str:
    return f"{what} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


# -- python ---------------------------------------------------------------------------


def test_the_docs_have_examples() -> None:
    assert len(of("python")) >= 10
    assert len(of("bash")) >= 10


@pytest.mark.slow  # each example in its own interpreter
@pytest.mark.parametrize("block", of("python"), ids=ids(of("python")))
def test_python_example_runs(block: Block, hub_env: dict[str, str], tmp_path: pathlib.Path) -> None:
    code = compile(block.code, block.id, "exec")
    if block.skip:
        assert code is not None  # it needs the real HUB: compiled, not run
        return
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    done = run([sys.executable, str(script)], tmp_path, clean_env(tmp_path, **hub_env))
    assert done.returncode == 0, explain(block.id, done)


def test_no_test_marks_only_real_hub_examples() -> None:
    for block in BLOCKS:
        if block.skip:
            assert block.lang == "python", f"{block.id}: only python blocks can be skipped"
            assert "hub.ultralytics.com" in block.code, (
                f"{block.id}: only examples that need the real HUB may skip the test"
            )


# -- bash -----------------------------------------------------------------------------


def commands(block: Block) -> list[str]:
    """The commands of a shell block, continuations joined."""
    text = block.code.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()]


def words_of(command: str) -> list[str]:
    """A command's words, up to a comment, a redirection, a pipe or a list operator."""
    # As in a shell, '#' starts a comment only at the start of a word (not in a URL).
    lexer = shlex.shlex(re.sub(r"(^|\s)#.*", "", command), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words = []
    for word in lexer:
        if word and set(word) <= set("<>|&;"):
            break
        words.append(word)
    return words


def runs_here(args: argparse.Namespace) -> bool:
    """Commands cheap and self-contained enough to run: no server, no real hub, no faults."""
    if args.command in ("parse", "simulate"):
        return True
    return args.command == "demo" and not args.hub and not args.fault_rate


@pytest.mark.slow  # each command in a subprocess, one of 1,000 seeds
@pytest.mark.parametrize("block", of("bash"), ids=ids(of("bash")))
def test_shell_example(block: Block, tmp_path: pathlib.Path) -> None:
    env = clean_env(tmp_path)
    ran: list[subprocess.CompletedProcess[str]] = []
    for command in commands(block):
        words = words_of(command)
        scoped = dict(env)
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # VAR=value command
            name, _, value = words.pop(0).partition("=")
            scoped[name] = value
        if not words:
            continue
        assert words[0] in PROGRAMS, f"{block.id}: unknown program in {command!r}"
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            if "$" not in value and "<" not in value:
                env[name] = value
            continue
        if words[0] == "unset":
            for name in words[1:]:
                env.pop(name, None)
            continue
        if words[0] != "hubfsm":
            continue
        try:
            args = build_parser().parse_args(words[1:])
        except SystemExit as exit:
            assert exit.code == 0, f"{block.id}: {command!r} is not a valid hubfsm command"
            continue
        if not block.generated and runs_here(args):
            done = run([sys.executable, "-m", "hubfsm", *words[1:]], tmp_path, scoped)
            if args.command != "parse":
                assert done.returncode == 0, explain(command, done)
            ran.append(done)
    output = block.output
    if output is None or len(ran) != 1 or output.lang not in ("json", "text"):
        return
    argv = words_of(commands(block)[0])
    printed = (ran[0].stdout + ran[0].stderr).strip()
    if argv[1] == "parse":
        assert printed == output.code.strip(), f"{block.id}: the output shown is stale"
    elif argv[1] == "simulate" and "--trace" in argv:
        # A seed's trace is the same byte for byte (invariant 8): every line shown must
        # be printed, in the same order.
        lines = iter(line.strip() for line in printed.splitlines())
        for shown in output.code.strip().splitlines():
            assert shown.strip() in lines, f"{block.id}: the trace shown is stale at {shown!r}"


def test_every_shown_parse_has_its_output_checked() -> None:
    for block in of("bash"):
        if block.generated:
            continue
        for command in commands(block):
            if command.startswith("hubfsm parse"):
                assert block.output is not None and len(commands(block)) == 1, (
                    f"{block.id}: show `hubfsm parse` alone, followed by its output"
                )


@pytest.mark.parametrize("block", of("json"), ids=ids(of("json")))
def test_json_example_is_json(block: Block) -> None:
    json.loads(block.code)


# -- generated parts and cross-references ---------------------------------------------


def test_the_generated_parts_are_current() -> None:
    stale = [str(page.relative_to(ROOT)) for page in docs_gen.stale(ROOT)]
    assert not stale, f"stale generated docs in {stale}: run python -m tools.docs_gen"


def test_every_generated_block_is_used() -> None:
    text = "".join(page.read_text(encoding="utf-8") for page in PAGES)
    for name in docs_gen.BLOCKS:
        assert f"<!-- generated: {name} -->" in text, f"no page shows the {name!r} block"


def test_the_cli_reference_names_every_command_and_option() -> None:
    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    for words, sub, _ in docs_gen._commands(parser, ("hubfsm",)):
        assert f"## `{' '.join(words)}`" in text
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text or option in ("-h", "--help"), (words, option)
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text


def test_the_tests_the_docs_cite_exist() -> None:
    cited = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path, name in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text):
            cited += 1
            source = ROOT / path
            assert source.is_file(), f"{page.name} cites {path}, which does not exist"
            assert re.search(rf"^def {name}\(", source.read_text(encoding="utf-8"), re.M), (
                f"{page.name} cites {path}::{name}, which does not exist"
            )
    assert cited >= 10


def test_a_session_leaves_the_signal_handlers_alone(
    hub_env: dict[str, str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**hub_env, "XDG_DATA_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    handled = (signal.SIGINT, signal.SIGTERM)
    before = [signal.getsignal(s) for s in handled]
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"final weights")
    with hubfsm.Session("yolov8n.yaml", train_args={"data": "coco8.yaml"}) as session:
        during = [signal.getsignal(s) for s in handled]
        session.finish(weights)
    assert during == before
    assert [signal.getsignal(s) for s in handled] == before


# -- the site -------------------------------------------------------------------------


def test_the_site_config_builds_offline() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*font: false$", config, re.M), "web fonts would be fetched"
    assert not re.search(r"^\s*- privacy\b", config, re.M), "the privacy plugin downloads"
    assert not re.search(r"^\s*(inventories|import):", config, re.M), "remote inventories"
    assert re.search(r"^use_directory_urls: false$", config, re.M), "file:// needs page.html"
    for script in re.findall(r"^\s*- (assets/vendor/\S+\.js)$", config, re.M):
        assert (DOCS / script).is_file(), f"{script} is not in docs/"
        licence = DOCS / pathlib.Path(script).parent / "LICENSE"
        assert licence.is_file(), f"{script} comes without its licence"


@pytest.mark.slow  # the whole site built in a subprocess
def test_mkdocs_build_strict(tmp_path: pathlib.Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    done = run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        ROOT,
        clean_env(tmp_path, NO_MKDOCS_2_WARNING="1"),
    )
    assert done.returncode == 0, explain("mkdocs build --strict", done)
    # mkdocstrings formats signatures with ruff or black; the docs extra must bring one.
    assert "ruff" not in done.stderr.lower() and "black" not in done.stderr.lower(), done.stderr
    for page in PAGES:
        html = site / page.relative_to(DOCS).with_suffix(".html")
        assert html.is_file(), f"{page} did not become {html}"
        text = html.read_text(encoding="utf-8")
        assert not re.search(r":(class|meth|func|data|attr|mod|exc):<code>", text), (
            f"{html}: a Sphinx role was left as text"
        )
        check_browsable_from_disk(site, html, text)
    # The state diagram and the layers render with the site's own mermaid, not a CDN's.
    for name in ("state-machine.html", "explanation/architecture.html"):
        diagram = (site / name).read_text(encoding="utf-8")
        assert 'class="mermaid"' in diagram, name
        scripts = re.findall(r'<script[^>]* src="([^"]+)"', diagram)
        assert any(src.endswith("/mermaid.min.js") for src in scripts), (name, scripts)
    # Search works without a server: its index is inlined into a script.
    assert (site / "search" / "search_index.js").is_file()


def check_browsable_from_disk(site: pathlib.Path, html: pathlib.Path, text: str) -> None:
    """Every link of a page opens a file, and every script and style is in the site."""
    for attribute, url in re.findall(r'\b(href|src)="([^"]*)"', text):
        if re.match(r"^(https?:|mailto:|#|data:)", url):
            assert attribute == "href", f"{html}: a {url} script or image needs the network"
            continue
        target = url.split("#", 1)[0].split("?", 1)[0]
        if not target:
            continue
        resolved = (html.parent / target).resolve()
        assert not target.endswith("/"), f"{html}: {url} opens a directory listing from disk"
        assert resolved.is_file(), f"{html}: {url} names no file in the site"


def test_sphinx_roles_become_cross_references() -> None:
    html = docs_gen.sphinx_roles_to_links(
        "see :class:<code>~hubfsm.errors.AuthError</code> and :meth:<code>close</code>"
    )
    assert html == (
        'see <autoref optional identifier="hubfsm.errors.AuthError"><code>AuthError</code>'
        '</autoref> and <autoref optional identifier="close"><code>close</code></autoref>'
    )


# -- the tutorial, as a new user follows it ---------------------------------------------


def tutorial_block(after: str, lang: str) -> str:
    """The first ``lang`` block after the line ``after`` in the tutorial."""
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    rest = text[text.index(after) :]
    found = re.search(rf"```{lang}\n(.*?)```", rest, re.S)
    assert found, f"no {lang} block after {after!r}"
    return found.group(1)


def test_the_tutorial_shows_what_hub_serve_prints(tmp_path: pathlib.Path) -> None:
    shown = tutorial_block("hubfsm hub serve --data ./hub-data", "text")
    process = subprocess.Popen(
        [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", "./hub-data", "--port", "0"],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # bounded: the banner ends with the Ctrl-C line
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
    finally:
        process.terminate()
        process.communicate(timeout=10)
    banner = "".join(lines)
    url = re.search(r"serving at (\S+)", banner)
    assert url, banner
    assert banner.replace(url.group(1), "http://127.0.0.1:8000") == shown


def test_what_the_tutorial_leaves_in_a_checkout_is_ignored() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout, so there is no .gitignore at work")
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    left = {f"{d}/" for d in re.findall(r"--data \./([\w-]+)", text)}
    left |= set(re.findall(r"Save this as `([^`]+)`", text))
    left |= {f"epoch{n}.pt" for n in range(2)} if 'f"epoch{epoch}.pt"' in text else set()
    assert {"hub-data/", "first_session.py", "epoch0.pt"} <= left
    for path in sorted(left):
        done = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, timeout=30
        )
        assert done.returncode == 0, f"{path} is not in .gitignore"
