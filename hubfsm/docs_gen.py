"""Writes the generated parts of the docs (``python -m hubfsm.docs_gen``).

The state diagram is drawn from the machine's declaration, so the docs cannot drift.
"""

from __future__ import annotations

import pathlib
import sys

from hubfsm.machine import to_mermaid

BEGIN = "<!-- generated: state diagram -->"
END = "<!-- end generated -->"


def render(text: str) -> str:
    """Replace the generated block of ``text`` with the current diagram."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n```mermaid\n{to_mermaid()}```\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite ``docs/state-machine.md`` in the given or current directory."""
    root = pathlib.Path((argv or sys.argv[1:] or ["."])[0])
    page = root / "docs" / "state-machine.md"
    page.write_text(render(page.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
