"""Writes the generated parts of the docs (``python -m tools.docs_gen [ROOT] [--check]``).

A generated part of a page under ``docs/`` sits between ``<!-- generated: NAME -->`` and
``<!-- end generated -->``. Each is drawn from the code it describes, so the docs cannot
drift, and a test fails when a page is stale:

- ``state diagram``: the machine's declaration, as Mermaid.
- ``cli``: every command and option of the ``hubfsm`` argument parser.
- ``retry defaults``: the retry policy of each channel, with the reason given for it in
  :class:`~hubfsm.core.config.ChannelPolicies`' docstring.
- ``retry waits``: the waits of :meth:`~hubfsm.core.config.RetryPolicy.schedule` over many seeds.
- ``retry plot``: the same waits for the final upload, as an inline SVG chart.
- ``simulation profiles``: the fault mixes ``hubfsm simulate`` can run.

With ``--check`` nothing is written; the exit status is 1 when a page is stale.

``mkdocs.yml`` also loads this module as a build hook: :func:`on_page_content` turns the
Sphinx roles of docstrings into links.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import pathlib
import random
import re
import statistics
import sys
from collections.abc import Callable, Iterator

import attrs

from hubfsm.core.config import ChannelPolicies, RetryPolicy
from hubfsm.core.machine import to_mermaid

BEGIN = "<!-- generated: state diagram -->"
END = "<!-- end generated -->"

_BLOCK = re.compile(r"<!-- generated: (?P<name>[^>]+?) -->.*?<!-- end generated -->", re.S)

#: Seeds the retry tables and the plot are drawn over.
SEEDS = 1000

#: The channel whose waits the plot shows: the one with the most retries.
PLOT_CHANNEL = "final"


# -- the state diagram ---------------------------------------------------------------


def state_diagram() -> str:
    """The machine as a Mermaid ``stateDiagram-v2`` fence."""
    return f"```mermaid\n{to_mermaid()}```"


# -- the command line ----------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command under ``parser``: its words, its parser and its one-line summary."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*words, name), sub, summaries.get(name, "")
                yield from _commands(sub, (*words, name))


def _subcommands(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    value = action.default
    if isinstance(value, range) and value.step == 1 and len(value):
        return f"`{value.start}-{value[-1]}`"
    if value is None or value is False or value == argparse.SUPPRESS:
        return ""
    if isinstance(value, (str, int, float)):
        return f"`{value}`"
    return ""


def _metavar(action: argparse.Action) -> str:
    metavar = action.metavar
    if isinstance(metavar, tuple):
        return " ".join(metavar)
    return metavar or action.dest.upper()


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{_metavar(action)}`"
    takes_value = action.nargs != 0
    metavar = _metavar(action)
    names = ", ".join(action.option_strings)
    return f"`{names} {metavar}`" if takes_value else f"`{names}`"


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % dict(vars(action), prog="hubfsm")
    return _cell(text)


def _everywhere(action: argparse.Action) -> bool:
    """Options every command takes (``-v`` after the command): said once, at the top."""
    return action.dest == "verbose_after"


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [
        action
        for action in parser._actions
        if not isinstance(action, (argparse._SubParsersAction, argparse._HelpAction))
        and action.help != argparse.SUPPRESS
        and not _everywhere(action)
    ]
    if not rows:
        return []
    lines = ["| argument | default | meaning |", "|---|---|---|"]
    for action in rows:
        lines.append(f"| {_argument(action)} | {_default(action)} | {_help(action)} |")
    for group in parser._mutually_exclusive_groups:
        names = " and ".join(f"`{a.option_strings[0]}`" for a in group._group_actions)
        lines += ["", f"{names} exclude each other."]
    return lines


def _synopsis(words: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    parts = list(words)
    if any(
        a.option_strings
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not _everywhere(a)
    ):
        parts.append("[OPTIONS]")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parts.append("COMMAND")
        elif not action.option_strings:
            parts.append(_metavar(action))
    return " ".join(parts)


def _example(parser: argparse.ArgumentParser) -> list[str]:
    epilog = parser.epilog or ""
    head, found, body = epilog.partition("example:\n")
    if not found:
        return []
    commands = inspect.cleandoc(body)
    return ["Example:", "", "```bash", commands, "```"]


def cli_reference() -> str:
    """Every ``hubfsm`` command: synopsis, options with defaults, and its example."""
    from hubfsm.cli.main import build_parser

    root = build_parser()
    lines = [f"## `{root.prog}`", "", _cell(root.description or ""), ""]
    lines += ["```text", _synopsis((root.prog,), root), "```", ""]
    lines += _options_table(root)
    lines += [
        "",
        "`-h`, `--help` after any command prints its help; `-v` and `-vv` work after the "
        "command too (`hubfsm demo -v`).",
        "",
    ]
    top = _subcommands(root)
    if top is not None:
        lines += ["| command | does |", "|---|---|"]
        for words, _, summary in _commands(root, (root.prog,)):
            lines.append(f"| [`{' '.join(words)}`](#{'-'.join(words)}) | {_cell(summary)} |")
        lines.append("")
    for words, parser, summary in _commands(root, (root.prog,)):
        name = " ".join(words)
        lines += [f"## `{name}` {{#{'-'.join(words)}}}", ""]
        lines += [_cell(parser.description or summary), ""]
        lines += ["```text", _synopsis(words, parser), "```", ""]
        table = _options_table(parser)
        if table:
            lines += [*table, ""]
        sub = _subcommands(parser)
        if sub is not None:
            names = ", ".join(f"[`{name} {n}`](#{'-'.join((*words, n))})" for n in sub.choices)
            lines += [f"Commands: {names}.", ""]
        example = _example(parser)
        if example:
            lines += [*example, ""]
    return "\n".join(lines).rstrip()


# -- the retry schedule ----------------------------------------------------------------


def _attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring, as name to text."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    _, _, section = doc.partition("Attributes:\n")
    found: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.fullmatch(r" {4}(\w+): (.*)", line)
        if match:
            name = match[1]
            found[name] = match[2].strip()
        elif name is not None and line.startswith(" " * 8):
            found[name] += " " + line.strip()
        else:
            break
    return found


def _policies() -> list[tuple[str, RetryPolicy]]:
    defaults = ChannelPolicies()
    return [(f.name, getattr(defaults, f.name)) for f in attrs.fields(ChannelPolicies)]


def _seconds(value: float) -> str:
    return f"{value:g} s"


def longest_round(policy: RetryPolicy) -> float:
    """The longest one round of retries can wait in all, with no ``Retry-After``."""
    total = 0.0
    for retry in range(policy.max_attempts - 1):
        bound = policy.bound(retry)
        if total + bound > policy.deadline:
            return policy.deadline
        total += bound
    return total


def retry_defaults() -> str:
    """The default retry policy of every channel, and why it is so."""
    why = _attribute_docs(ChannelPolicies)
    lines = [
        "| channel | base | cap | attempts | deadline | max `Retry-After` | longest round"
        " | covers, and why |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, policy in _policies():
        if name not in why:
            raise LookupError(f"ChannelPolicies' docstring does not describe {name!r}")
        lines.append(
            f"| `{name}` | {_seconds(policy.base)} | {_seconds(policy.cap)} | "
            f"{policy.max_attempts} | {_seconds(policy.deadline)} | "
            f"{_seconds(policy.max_retry_after)} | {_seconds(longest_round(policy))} | "
            f"{_cell(why[name])} |"
        )
    return "\n".join(lines)


@functools.cache
def _schedules(policy: RetryPolicy, seeds: int = SEEDS) -> tuple[tuple[float, ...], ...]:
    """The schedule of an operation that always fails, once per seed."""
    return tuple(tuple(policy.schedule(random.Random(seed))) for seed in range(seeds))


def _waits(policy: RetryPolicy) -> list[tuple[float, ...]]:
    """Per retry, the waits before it over every seed whose schedule reaches it."""
    schedules = _schedules(policy)
    longest = max(map(len, schedules), default=0)
    return [tuple(s[n] for s in schedules if len(s) > n) for n in range(longest)]


def _elapsed(policy: RetryPolicy) -> list[tuple[float, ...]]:
    """Per retry, the seconds from the first attempt to it, over the same seeds."""
    schedules = _schedules(policy)
    longest = max(map(len, schedules), default=0)
    return [tuple(sum(s[: n + 1]) for s in schedules if len(s) > n) for n in range(longest)]


def _quantile(values: tuple[float, ...], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def retry_waits() -> str:
    """Min, median and max of the wait before each retry, per channel, over many seeds."""
    lines = [
        "| channel | retry | bound | min | median | max | median time since the first attempt |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, policy in _policies():
        columns = zip(_waits(policy), _elapsed(policy), strict=True)
        for retry, (waits, elapsed) in enumerate(columns, start=1):
            lines.append(
                f"| `{name}` | {retry} | {policy.bound(retry - 1):.2f} | {min(waits):.2f} | "
                f"{statistics.median(waits):.2f} | {max(waits):.2f} | "
                f"{statistics.median(elapsed):.2f} |"
            )
    return "\n".join(lines)


def retry_plot(channel: str = PLOT_CHANNEL) -> str:
    """The waits before each retry of ``channel`` over many seeds, as an inline SVG."""
    policy: RetryPolicy = getattr(ChannelPolicies(), channel)
    waits = _waits(policy)
    width, height = 640, 300
    left, right, top, bottom = 56, 16, 16, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = max(policy.bound(n) for n in range(len(waits)))
    step = next((s for s in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300) if y_max / s <= 6), 600)
    y_top = step * -(-y_max // step)

    def x(retry: int) -> float:
        return left + plot_w * (retry - 0.5) / len(waits)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / y_top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-labelledby="retry-plot-title" '
        'style="max-width:100%;height:auto">',
        f'<title id="retry-plot-title">Waits before each retry of the {channel} channel, '
        f"over {SEEDS} seeds</title>",
        '<g font-size="12" fill="currentColor" stroke="none">',
    ]
    ticks = [step * i for i in range(int(y_top // step) + 1)]
    for tick in ticks:
        out.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for retry in range(1, len(waits) + 1):
        out.append(
            f'<text x="{x(retry):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{retry}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">retry</text>'
    )
    out.append(
        f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">seconds</text>'
    )
    out.append("</g>")
    out.append('<g stroke="currentColor" stroke-opacity="0.25" stroke-width="1">')
    for tick in ticks:
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
        )
    out.append("</g>")
    bound = " ".join(
        f"{x(n + 1) + dx:.1f},{y(policy.bound(n)):.1f}"
        for n in range(len(waits))
        for dx in (-plot_w / len(waits) / 2, plot_w / len(waits) / 2)
    )
    out.append(
        f'<polyline points="{bound}" fill="none" stroke="currentColor" stroke-width="1.5" '
        'stroke-dasharray="5 4"/>'
    )
    half = plot_w / len(waits) * 0.22
    out.append('<g stroke="#3f51b5" stroke-width="1.5">')
    for retry, column in enumerate(waits, start=1):
        cx = x(retry)
        lo, q1, mid, q3, hi = (_quantile(column, q) for q in (0.0, 0.25, 0.5, 0.75, 1.0))
        out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}"/>')
        out.append(
            f'<rect x="{cx - half:.1f}" y="{y(q3):.1f}" width="{2 * half:.1f}" '
            f'height="{y(q1) - y(q3):.1f}" fill="#3f51b5" fill-opacity="0.35"/>'
        )
        out.append(
            f'<line x1="{cx - half:.1f}" x2="{cx + half:.1f}" y1="{y(mid):.1f}" '
            f'y2="{y(mid):.1f}" stroke-width="3"/>'
        )
    out.append("</g>")
    out.append("</svg>")
    caption = (
        f"The wait before each retry of the <code>{channel}</code> channel, over {SEEDS} seeds: "
        "whiskers from min to max, boxes from the first to the third quartile, a thick bar at "
        "the median. The dashed line is the bound min(cap, base &times; 2<sup>n</sup>); every "
        "wait is drawn uniformly below it."
    )
    figure = ["<figure>", *out, f"<figcaption>{caption}</figcaption>", "</figure>"]
    return "\n".join(figure)


# -- the simulation ---------------------------------------------------------------------


def simulation_profiles() -> str:
    """The fault profiles of ``hubfsm simulate``, with the exact rate of every fault."""
    from hubfsm.sim.profiles import describe

    return describe()


def machine_profiles() -> str:
    """The profiles of machine faults, with the exact rate of every fault."""
    from hubfsm.sim.profiles import MACHINE
    from hubfsm.sim.scenario import profile_table

    return profile_table(MACHINE)


# -- the site build -------------------------------------------------------------------

_ROLE = re.compile(r":(?:class|meth|func|data|mod|attr|exc|obj):<code>(~?)([\w.]+)</code>")


def sphinx_roles_to_links(html: str) -> str:
    """Turn Sphinx roles left in rendered docstrings into cross-references.

    mkdocstrings renders ``:class:`~hubfsm.Session``` as the text ``:class:`` and the code
    ``~hubfsm.Session``. This makes it a link to the object when the site documents it,
    and plain code otherwise; ``~`` shows the last name only, as Sphinx does.
    """

    def link(match: re.Match[str]) -> str:
        short, target = match.groups()
        shown = target.rsplit(".", 1)[-1] if short else target
        return f'<autoref optional identifier="{target}"><code>{shown}</code></autoref>'

    return _ROLE.sub(link, html)


def on_page_content(html: str, **kwargs: object) -> str:
    """The mkdocs hook (``hooks:`` in ``mkdocs.yml``): fix each page's rendered HTML."""
    return sphinx_roles_to_links(html)


# -- the pages -----------------------------------------------------------------------

#: Every generated block, by the name in its marker.
BLOCKS: dict[str, Callable[[], str]] = {
    "state diagram": state_diagram,
    "cli": cli_reference,
    "retry defaults": retry_defaults,
    "retry waits": retry_waits,
    "retry plot": retry_plot,
    "simulation profiles": simulation_profiles,
    "machine profiles": machine_profiles,
}


def render(text: str) -> str:
    """Replace every generated block of ``text`` with its current content.

    Raises:
        KeyError: A marker names no known block.
    """

    def block(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise KeyError(f"unknown generated block {name!r}; known: {', '.join(BLOCKS)}")
        return f"<!-- generated: {name} -->\n\n{BLOCKS[name]()}\n\n{END}"

    return _BLOCK.sub(block, text)


def pages(root: pathlib.Path) -> list[pathlib.Path]:
    """The pages under ``root/docs`` that hold a generated block."""
    return [
        page
        for page in sorted((root / "docs").rglob("*.md"))
        if _BLOCK.search(page.read_text(encoding="utf-8"))
    ]


def stale(root: pathlib.Path) -> list[pathlib.Path]:
    """The pages under ``root/docs`` whose generated blocks are out of date."""
    return [
        page for page in pages(root) if render(text := page.read_text(encoding="utf-8")) != text
    ]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated blocks of the docs in the given or current directory."""
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    rest = [a for a in args if a != "--check"]
    root = pathlib.Path(rest[0] if rest else ".")
    if check:
        out_of_date = stale(root)
        for page in out_of_date:
            print(f"{page} is stale: run python -m tools.docs_gen", file=sys.stderr)
        return 1 if out_of_date else 0
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            page.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
