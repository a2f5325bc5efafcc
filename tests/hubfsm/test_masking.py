"""What reaches a terminal or a log from untrusted text and URLs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hubfsm.masking import one_line, show_url


def _one_line_char_by_char(text: str, limit: int = 300) -> str:
    """The rule spelled out one character at a time, as the docstring states it."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


@given(st.text(max_size=400))
def test_one_line_is_the_rule_for_any_text(text: str) -> None:
    line = one_line(text)
    assert line == _one_line_char_by_char(text)
    assert line.isprintable() and len(line) <= 300


def test_one_line_folds_whitespace_and_defuses_control_characters() -> None:
    assert one_line("model\n  not\tfound") == "model not found"
    assert one_line("\x1b[2Jcleared \u202eevil") == "?[2Jcleared ?evil"
    assert one_line("x" * 400) == "x" * 299 + "\u2026"


def test_show_url_drops_credentials_query_and_control_characters() -> None:
    shown = show_url("https://user:secret@hub.example/api/\x1bx?X-Amz-Signature=abc#frag")
    assert shown == "https://hub.example/api/?x"


@given(st.text(max_size=300))
def test_show_url_is_one_printable_line_of_at_most_the_limit(path: str) -> None:
    shown = show_url(f"https://k:s@hub.example/{path}?sig=1", limit=120)
    assert shown.isprintable() and len(shown) <= 120
    assert shown.startswith("https://hub.example/")  # the credentials are gone
