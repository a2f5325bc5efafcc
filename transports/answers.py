"""Reading the hub's answers: the body within its limit, the JSON envelope, the headers.

Nothing in an answer is believed beyond the protocol, and nothing taken from one goes on
without the API key blotted out of it (see :func:`hubfsm.masking.redact`).
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Mapping
from typing import Any

import requests

from hubfsm.masking import redact, redact_value
from hubfsm.transport import RateLimit
from transports.deadline import Deadline

__all__ = [
    "MAX_RESPONSE_BYTES",
    "BadAnswer",
    "decode",
    "int_header",
    "parse_retry_after",
    "rate_limit",
    "read_body",
    "redirect_envelope",
    "sanitize",
]

#: The largest response body read; the API's answers are small JSON, so more means
#: trouble (a misrouted request, a hostile server), and it must not exhaust memory.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

#: How much of a redirect's ``Location`` a message quotes.
_LOCATION_CHARS = 120

#: How much of an unexpected body an error message quotes.
_SNIPPET_CHARS = 80

_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_TYPES[type(None)] = "null"


class BadAnswer(Exception):
    """An answer breaks the protocol; the message (already masked) says how."""


def sanitize(text: str, limit: int) -> str:
    """One printable line of at most ``limit`` characters."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def int_header(value: str | None) -> int | None:
    """A header's integer value, or None when it is absent or unreadable."""
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None


def _float_header(value: str | None) -> float | None:
    try:
        number = float(value.strip()) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Read a ``Retry-After`` header as seconds from ``now`` (a POSIX timestamp).

    Accepts delta-seconds and HTTP-dates (RFC 9110); a date in the past is 0 seconds,
    and more digits than a float holds are infinity (a policy honours it only up to its
    ``max_retry_after``). Anything unreadable is None, as if the header were absent.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # float() of the text, not of int(text): that would raise past 4300 digits.
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The ``X-RateLimit-*`` headers that are present and readable, or None."""
    limit = int_header(headers.get("X-RateLimit-Limit"))
    remaining = int_header(headers.get("X-RateLimit-Remaining"))
    reset = _float_header(headers.get("X-RateLimit-Reset"))
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset=reset)


def read_body(answer: requests.Response, *, deadline: Deadline, read_timeout: float) -> bytes:
    """The whole response body, refusing one larger than :data:`MAX_RESPONSE_BYTES`.

    Raises:
        BadAnswer: The body is (or says it is) too large.
    """
    declared = int_header(answer.headers.get("Content-Length"))
    if declared is not None and declared > MAX_RESPONSE_BYTES:
        raise BadAnswer(
            f"answered {answer.status_code} with a body of {declared} bytes, over "
            f"{MAX_RESPONSE_BYTES}"
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in answer.iter_content(64 * 1024):
        deadline.cap(read_timeout)  # a session handed in has no socket cap
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise BadAnswer(
                f"answered {answer.status_code} with a body over {MAX_RESPONSE_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def redirect_envelope(
    headers: Mapping[str, str], *, secret: str | None, netloc: str
) -> tuple[str, dict[str, Any]]:
    """Where a redirect pointed (masked, one line), and its envelope, which says so.

    A redirect is never followed: the API key would go with it.
    """
    location = sanitize(redact(headers.get("Location") or "nowhere", secret), _LOCATION_CHARS)
    message = (
        f"the hub redirected to {location!r}; not followed, since the API key goes only to {netloc}"
    )
    return location, {"success": False, "message": message}


def decode(
    status: int, content_type: str | None, content: bytes, *, secret: str | None
) -> Mapping[str, Any]:
    """The JSON envelope of an answer, the key masked out; only a 2xx must have one.

    Raises:
        BadAnswer: A 2xx answer whose body is not a JSON object.
    """
    value: Any = None
    valid = False
    if content:
        try:
            value = json.loads(content)
            valid = True
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            pass
    if isinstance(value, dict):
        try:
            # Whatever the hub says goes on to messages and logs: never the key.
            masked: dict[str, Any] = redact_value(value, secret)
            return masked
        except RecursionError:
            value, valid = None, False
    if not 200 <= status < 300:
        return {}  # the status says it all; an error page is no protocol breach
    if not content:
        what = "an empty body"
    elif not valid:
        what = "invalid JSON"
    else:
        what = f"a JSON {_JSON_TYPES.get(type(value), 'value')}"
    ctype = sanitize(redact(content_type or "no content-type", secret), 60)
    quote = sanitize(redact(content[:400].decode("utf-8", "replace"), secret), _SNIPPET_CHARS)
    reason = f"answered {status} with {what} ({ctype}, {len(content)} bytes), not a JSON object"
    if quote:
        reason += f": {quote!r}"
    raise BadAnswer(reason)
