"""Masking of secrets before they reach a repr, a log line or an error message."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "MIN_RUN",
    "mask_key",
    "one_line",
    "redact",
    "redact_value",
    "show_untrusted",
    "show_url",
]

_VISIBLE = 4

#: The shortest run of a secret's characters that :func:`redact` blots out: a hostile
#: server that echoes part of a key gives away that much of it.
MIN_RUN = 8

#: What a blotted-out run becomes.
BLOT = "***"


def mask_key(key: str) -> str:
    """Hide all but the last four characters of a secret.

    Args:
        key: The secret, typically an API key.

    Returns:
        The key with every character but the last four replaced by ``*``; a key of
        four characters or fewer is masked entirely, since its tail would be all of it.
    """
    if len(key) <= _VISIBLE:
        return "*" * len(key)
    return "*" * (len(key) - _VISIBLE) + key[-_VISIBLE:]


def redact(text: str, secret: str | None, *, min_run: int = MIN_RUN) -> str:
    """``text`` with every run of ``min_run`` or more characters of ``secret`` blotted out.

    Matching ignores (ASCII) case, since a server may echo a key upper-cased. A secret shorter
    than ``min_run`` is only blotted out whole.

    Args:
        text: Text that may quote the secret (from a server, say).
        secret: The secret; None or empty leaves ``text`` as it is.
        min_run: The shortest run of the secret that counts as a leak.
    """
    if not secret or not text:
        return text
    run = min(min_run, len(secret))
    grams = {secret[i : i + run] for i in range(len(secret) - run + 1)}
    # A lookahead finds every start, overlapping ones too; the regex engine does the scan.
    pattern = re.compile("(?=(" + "|".join(map(re.escape, sorted(grams))) + "))", re.IGNORECASE)
    folded_secret = secret.lower()
    covered = [False] * len(text)
    hit = False
    for match in pattern.finditer(text):
        start = match.start()
        # Grow the match as far as it stays a run of the secret.
        end = start + run
        while end < len(text) and text[start : end + 1].lower() in folded_secret:
            end += 1
        for j in range(start, end):
            covered[j] = True
        hit = True
    if not hit:
        return text
    out: list[str] = []
    for j, char in enumerate(text):
        if not covered[j]:
            out.append(char)
        elif j == 0 or not covered[j - 1]:
            out.append(BLOT)
    return "".join(out)


def redact_value(value: Any, secret: str | None) -> Any:
    """A JSON value with :func:`redact` applied to every string in it, keys included.

    Raises:
        RecursionError: The value nests deeper than the interpreter can follow.
    """
    if not secret:
        return value
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, dict):
        return {redact(str(k), secret): redact_value(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, secret) for v in value]
    return value


def show_untrusted(value: Any, *, limit: int = 24) -> str:
    """A short, escaped rendering of a value from an untrusted source, for a message.

    Strings are cut to ``limit`` characters and shown with ``repr`` (so control
    characters and path separators are visible as what they are); anything else is
    named by its type only.
    """
    if not isinstance(value, str):
        return f"a JSON {type(value).__name__}"
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}\u2026 ({len(value)} characters)"


def one_line(text: str, *, limit: int = 300) -> str:
    """Untrusted text (a hub's message) as one printable line of at most ``limit`` characters.

    Runs of whitespace become one space and any other character that is not printable
    (escape sequences, bidirectional overrides) ``?``: what a hub says reaches a terminal,
    where it must not clear the screen, colour it or forge a line of its own.
    """
    return _printable(" ".join(text.split()), limit)


def show_url(url: str, *, limit: int = 200) -> str:
    """A URL for a message: without credentials, query or fragment, on one printable line.

    A signed storage URL's query is a credential of its own, and a URL from the hub is
    untrusted text: it is cut to ``limit`` characters and control characters become ``?``.
    """
    parts = urlsplit(url)
    return _printable(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}", limit)


def _printable(text: str, limit: int) -> str:
    """``text`` with every character that is not printable as ``?``, cut to ``limit``."""
    if not text.isprintable():  # checked whole first: a hub answers every request
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
