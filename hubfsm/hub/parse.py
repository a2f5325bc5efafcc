"""Checking what clients send: strict JSON, metrics, upload forms, names, tags and notes.

Most of it raises :class:`ValueError` with a message for the client (the hub answers it
as a 400); Platform's counts and numbers are told apart by :func:`whole_count` and
:func:`plain_number`, and its training arguments read by :func:`started_fields`. The
rules follow what ``ultralytics==8.2.0`` and hub-sdk send (see ``PROTOCOL.md``): the
given values are kept as they are, only their shapes are checked.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, TypeGuard

#: How deep JSON may nest; the API's bodies need 4 levels.
MAX_DEPTH = 32
#: The longest name, dataset or architecture accepted.
MAX_TEXT = 2000
#: The longest notes on a run.
MAX_NOTES = 20_000
#: The most tags a run has, and the longest tag.
MAX_TAGS = 50
MAX_TAG = 100
#: The most JSON text a run's training arguments take.
MAX_PARAMS = 64 * 1024
#: The largest integer (either sign) in a training config: the largest a JSON number
#: carries exactly (I-JSON, RFC 7493; JavaScript's ``Number.MAX_SAFE_INTEGER``).
MAX_INT = 2**53 - 1
#: The largest integer (either sign) anywhere in a body: the largest a JSON number can
#: hold at all (a double, RFC 8259). Past it a value is no number a reader can use, and
#: arithmetic with it (the pages' progress, the best metric) fails.
MAX_JSON_INT = int(sys.float_info.max)

_SURROGATE = re.compile("[\ud800-\udfff]")
_TRUE = frozenset({"true", "True", "TRUE", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "0"})


def loads(raw: bytes | str) -> object:
    """Decode strict JSON: ValueError for NaN/Infinity, nesting too deep, or bad text."""

    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON (send null or a string)")

    try:
        value = json.loads(raw, parse_constant=refuse)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    problem = check_json(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def check_json(value: object) -> str | None:
    """Why ``value`` is not storable JSON (too deep, lone surrogates, NaN), or None."""
    if type(value) is dict and _plain(value, 0):
        return None
    return _walk(value)


def _walk(value: object) -> str | None:
    """``check_json`` the long way: every item, whatever its type."""
    # Each item with the key it is under (its list's key, in a list), to name it.
    stack: list[tuple[object, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, under = stack.pop()
        if depth > MAX_DEPTH:
            return f"JSON nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, str):
            # ASCII text (nearly all of it) cannot hold a surrogate: skip the search.
            if not item.isascii() and _SURROGATE.search(item):
                return "text holds a lone surrogate (not valid Unicode)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "NaN and Infinity are not JSON"
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -MAX_JSON_INT <= item <= MAX_JSON_INT:
                where = f" in '{under[:100]}'" if under else ""
                return f"an integer{where} is larger than a JSON number holds (about 1.8e308)"
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    return "object keys must be strings"
                # The key is checked first (popped first), so no bad text is ever named.
                stack.append((child, depth + 1, key))
                stack.append((key, depth + 1, under))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1, under) for child in item)
    return None


def _plain(mapping: dict[Any, Any], depth: int) -> bool:
    """True for a dict ``check_json`` passes without a doubt; False to have it look closer.

    Every request body is checked, and nearly all are small dicts of ASCII text, numbers
    and dicts: this walks those at a fraction of the general walk's cost, and leaves
    anything else (lists, other text, other types) to it, so the answers are the same.
    """
    if depth >= MAX_DEPTH:
        return not mapping  # its keys and values would be nested too deep
    for key, item in mapping.items():
        if type(key) is not str or not key.isascii():
            return False
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return False
        elif kind is dict:
            if not _plain(item, depth + 1):
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is int:
            if not -MAX_JSON_INT <= item <= MAX_JSON_INT:
                return False
        elif kind is not bool and item is not None:
            return False
    return True


def metrics_text(text: object, epoch: int) -> str:
    """The JSON text to store for one epoch's metrics: strict, NaN and Infinity as null.

    A diverging loss is NaN, and ultralytics sends it as ``NaN``: the epoch is kept (with
    null), rather than refused, since a trainer cannot send it any other way.
    """
    if not isinstance(text, str):
        raise ValueError(f"metrics of epoch {epoch} must be a string holding a JSON object")
    stored, problem = _checked_metrics(text)
    if stored is None:
        if problem is None:
            raise ValueError(f"metrics of epoch {epoch} must be a string holding a JSON object")
        raise ValueError(f"metrics of epoch {epoch}: {problem}")
    return stored


# What trainers send: a flat JSON object of printable ASCII names (no quote or backslash
# in them) and plain numbers. The numbers' digits are bounded so that none decodes to an
# infinity (they stay under 1e115) or runs past Python's limit on an integer's digits.
_WS = r"[ \t\n\r]*"
_NAME = r'"[ !#-\[\]-~]*"'
_NUMBER = r"-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,40})?(?:[eE][+-]?[0-9]{1,2})?"
_PAIR = f"{_WS}{_NAME}{_WS}:{_WS}{_NUMBER}{_WS}"
_FLAT_OBJECT = re.compile(rf"{_WS}\{{(?:{_PAIR}(?:,{_PAIR})*|{_WS})\}}{_WS}")


@functools.lru_cache(maxsize=1024)
def _checked_metrics(text: str) -> tuple[str | None, str | None]:
    """``metrics_text`` without the epoch: (text to store, None) or (None, problem or None).

    Cached: a client sends the same epoch's text again on every retry and in every batch
    that repeats it, and the answer depends on the text alone.
    """
    # A text of the usual shape is storable as it is: recognising it costs half as much
    # as decoding it, and the metrics of every epoch pass here.
    if _FLAT_OBJECT.fullmatch(text) is not None:
        return text, None
    return _decoded_metrics(text)


def _decoded_metrics(text: str) -> tuple[str | None, str | None]:
    """``_checked_metrics`` by decoding the text, whatever its shape."""
    replaced = False
    try:
        # One shared decoder (json.loads with a hook builds a new one per call); the rare
        # text holding NaN or Infinity is decoded again below with the hook that nulls them.
        value = _STRICT.decode(text)
    except _ConstantSeen:
        value = None
        replaced = True
    except (ValueError, RecursionError):
        value = None
    if replaced:

        def null(constant: str) -> None:
            return None

        try:
            value = json.loads(text, parse_constant=null)
        except (ValueError, RecursionError):
            value = None
    if not isinstance(value, dict):
        return None, None
    if not _flat_numbers(value):
        problem = check_json(value)
        if problem is not None:
            return None, problem
    return (json.dumps(value) if replaced else text), None


class _ConstantSeen(Exception):
    """NaN, Infinity or -Infinity in a text being decoded."""


def _constant_seen(constant: str) -> object:
    raise _ConstantSeen(constant)


_STRICT = json.JSONDecoder(parse_constant=_constant_seen)


#: The types a trainer's metrics are made of.
_NUMBERS = frozenset({int, float})


def _flat_numbers(value: dict[str, Any]) -> bool:
    """True for what trainers send: ASCII names of finite numbers (check_json would pass it).

    False sends the text to ``check_json``, which has the last word; so a sum too large
    for a float, though its numbers are finite, costs only that closer look.
    """
    # The keys of a decoded JSON object are text: one join checks them all at once.
    if not "".join(value).isascii() or not _NUMBERS.issuperset(map(type, value.values())):
        return False
    try:
        return math.isfinite(sum(value.values()))  # NaN or an infinity makes the sum one
    except OverflowError:  # an integer too large for a float
        return False


#: Platform counts stay under this.
_MAX_COUNT = 10**9


def whole_count(value: object) -> TypeGuard[int]:
    """True for an integer from 0 to under a billion (a Platform count: epochs, lines)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT


def plain_number(value: object) -> bool:
    """True for None or a finite number under 1e15 (a Platform metric a chart can show)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and abs(value) < 1e15


#: The longest text kept of a Platform training argument (a model, a dataset, a device).
_MAX_ARG_TEXT = 1000


def started_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The record fields Platform's ``training_started`` tells: model, data, epochs, ..."""
    args = data.get("trainArgs")
    args = args if isinstance(args, dict) else {}

    def text(value: object) -> str | None:
        if isinstance(value, str) and value not in ("", "None"):
            return value[:_MAX_ARG_TEXT]
        return None

    def whole(value: object) -> int | None:
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 9:
            return int(value)
        return value if whole_count(value) else None

    config: dict[str, Any] = {
        "cfg": text(args.get("model")) or "",
        "dataset": text(args.get("data")),
        "epochs": whole(data.get("epochs")) or whole(args.get("epochs")),
        "batch_size": whole(args.get("batch")),
        "imgsz": whole(args.get("imgsz")),
        "patience": whole(args.get("patience")),
        "device": text(data.get("device")) or text(args.get("device")),
    }
    # Every argument, as the client sent it (Platform sends each as text).
    params = json.dumps(args) if args else None
    if params is not None and len(params) <= MAX_PARAMS:
        config["params"] = params
    return config


def epoch_of(value: object) -> int | None:
    """A non-negative epoch number (under a billion) from an int or a string of digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < 1_000_000_000 else None
    if isinstance(value, str) and 0 < len(value) < 10 and value.isascii() and value.isdigit():
        return int(value)
    return None


def tags_of(value: object, where: str = "tags") -> tuple[str, ...]:
    """Tags from a list of text: trimmed, empty ones and repeats dropped; ValueError if bad."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"'{where}' must be a list of strings")
    found: dict[str, None] = {}
    for tag in value:
        tag = " ".join(tag.split())
        if len(tag) > MAX_TAG:
            raise ValueError(f"a tag in '{where}' is longer than {MAX_TAG} characters")
        if tag:
            found[tag] = None
    if len(found) > MAX_TAGS:
        raise ValueError(f"'{where}' holds more than {MAX_TAGS} tags")
    return tuple(found)


def notes_of(value: object, where: str = "notes") -> str | None:
    """Notes as text (None for none); ValueError if not text or too long."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{where}' must be a string")
    if len(value) > MAX_NOTES:
        raise ValueError(f"'{where}' is longer than {MAX_NOTES} characters")
    return value


def name_of(value: object, where: str = "name") -> str:
    """A run's new name: text of 1 to ``MAX_TEXT`` characters; ValueError if not."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{where}' must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise ValueError(f"'{where}' is longer than {MAX_TEXT} characters")
    return value.strip()


def interrupted_of(extra: object) -> str | None:
    """Why a run stopped, from a heartbeat's ``hubfsm`` object; None when it did not say.

    Raises:
        ValueError: The object is not ``{"ended": "interrupted", "reason": <text>}``.
    """
    if extra is None:
        return None
    if not isinstance(extra, Mapping) or extra.get("ended") != "interrupted":
        raise ValueError("'hubfsm' on a heartbeat must be {'ended': 'interrupted', 'reason': ...}")
    reason = extra.get("reason")
    if not isinstance(reason, str) or not reason or len(reason) > 200:
        raise ValueError("'hubfsm.reason' must be a string of 1 to 200 characters")
    return reason


def upload_fields(
    fields: Mapping[str, str], file_name: str | None, has_file: bool
) -> tuple[str, int, bool, float | None]:
    """Check an upload's form: (type, epoch, isBest, map); ValueError says what is off."""
    upload_type = fields.get("type")
    if upload_type not in ("epoch", "final"):
        raise ValueError("field 'type' must be 'epoch' or 'final'")
    epoch = epoch_of(fields.get("epoch"))
    if epoch is None:
        raise ValueError("field 'epoch' must be a non-negative integer")
    is_best = False
    map50_95 = None
    if upload_type == "epoch":
        flag = str(fields.get("isBest", "false"))
        if flag not in _TRUE and flag not in _FALSE:
            raise ValueError("field 'isBest' must be true or false")
        is_best = flag in _TRUE
    elif fields.get("map") not in (None, ""):
        try:
            map50_95 = float(str(fields["map"]))
        except ValueError:
            map50_95 = math.nan
        if not math.isfinite(map50_95):
            raise ValueError("field 'map' must be a finite number")
    expected = "last.pt" if upload_type == "epoch" else "best.pt"
    if not has_file:
        raise ValueError(f"missing file part '{expected}'")
    if file_name != expected:
        raise ValueError(f"{upload_type} uploads carry one file part named '{expected}'")
    return upload_type, epoch, is_best, map50_95
