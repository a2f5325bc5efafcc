"""One converter from what trainers log to plain values JSON and the journal can carry.

:func:`plain` is lenient (a trainer's callbacks hand it whatever a framework holds);
:func:`carried` is the rule at ``log_metrics``: it converts what has a plain value and
refuses, naming the key, what the wire cannot carry.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from json import encoder as _json_encoder
from typing import Any

#: Exactly these types pass as they are; their subclasses (numpy's float64 is a float)
#: are converted, since the journal's marshal takes only the exact types.
_AS_IS = (bool, int, float, str, type(None))


def plain(value: Any) -> Any:
    """Turn a logged value into plain Python: numpy and torch scalars become numbers.

    Args:
        value: A number, a string, an array or tensor, or a list or dict of those.

    Returns:
        The same value made of ``bool``, ``int``, ``float``, ``str``, ``None``, lists and
        dicts (with string keys); anything else becomes its ``str``.
    """
    if type(value) in _AS_IS:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    native = _native(value)
    if native is not _NONE:
        return plain(native)
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return str(value)


_NONE = object()


def _native(value: Any) -> Any:
    """The Python value of a numpy or torch scalar, array or tensor, else ``_NONE``."""
    # numpy scalars and one-element arrays or tensors (on any device) have item(); larger
    # arrays and tensors have tolist().
    for method in ("item", "tolist"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                return convert()
            except (TypeError, ValueError, RuntimeError):
                pass
    return _NONE


_Number = numbers.Number

#: The integers every JSON reader keeps exactly enough to be of use: 64-bit ones. A
#: larger one is refused rather than rounded or sent as 5,000 digits a hub refuses.
INT_LIMIT = 2**63
#: How deeply a metric's value may nest lists and dicts (the local hub takes 32 levels
#: for the whole body, which wraps the metrics in 3).
MAX_DEPTH = 16


def carried(metrics: Mapping[Any, Any]) -> dict[str, Any]:
    """One epoch's metrics as the wire carries them; the rule of ``log_metrics``.

    Names must be strings. Values are numbers, strings, booleans, None, and lists and
    dicts (with string keys) of them; numpy and torch scalars, arrays and tensors become
    their Python values, and other real numbers (``Decimal``, ``Fraction``) floats. NaN
    and infinities are kept here and sent as JSON ``null`` (see
    :func:`hubfsm.core.protocol.encode_metrics`).

    Raises:
        TypeError: A name is not a string, or a value is none of the above (an
            integer beyond 64 bits, an object): the message names the key.
    """
    out: dict[str, Any] = dict(metrics)
    # The usual epoch, string names to floats, passes with a look at each item: this
    # runs on the training thread when there is no journal to do it.
    for name, value in out.items():
        if type(name) is not str or type(value) is not float:
            break
    else:
        return out
    out = {}
    for name, value in metrics.items():
        if type(name) is not str:
            if not isinstance(name, str):
                raise TypeError(
                    f"metric name {name!r} is of type {type(name).__name__}: names must be strings"
                )
            name = str(name)  # a str subclass (an enum's value, say) is its text
        out[name] = _carried(value, name, 0)
    return out


def _carried(value: Any, name: str, depth: int) -> Any:
    kind = type(value)
    if kind is float or kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -INT_LIMIT <= value < INT_LIMIT:
            return value
        digits = int(value.bit_length() * 0.30103) + 1  # str() refuses 4,300 digits and more
        raise TypeError(
            f"metric {name!r}: an integer of about {digits} digits is beyond 64 bits, more "
            "than JSON readers keep exactly; log it as a float or a string"
        )
    if depth >= MAX_DEPTH:
        raise TypeError(f"metric {name!r}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        inner: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"metric {name!r}: key {key!r} is of type {type(key).__name__}: keys must be "
                    "strings"
                )
            inner[str(key)] = _carried(item, f"{name}.{key}", depth + 1)
        return inner
    if isinstance(value, (list, tuple)):
        return [_carried(item, name, depth + 1) for item in value]
    for plain_kind in (bool, int, float, str):  # subclasses: IntEnum, numpy's float64
        if isinstance(value, plain_kind):
            return _carried(plain_kind(value), name, depth)
    native = _native(value)
    if native is not _NONE:
        return _carried(native, name, depth + 1)
    if isinstance(value, _Number):
        number: Any = value  # Decimal, Fraction: they have __float__; complex has not
        try:
            return float(number)
        except (TypeError, ValueError, OverflowError):
            pass
    raise TypeError(
        f"metric {name!r}: a value of type {type(value).__name__} cannot be sent to the hub "
        "(numbers, strings, booleans, None, and lists and dicts of them)"
    )


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities, at any depth, as None (JSON's ``null``)."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


#: The C encoder ``json.dumps`` uses (None where the interpreter has no ``_json``); not
#: in the module's stubs, as it is not public.
_C_ENCODER: Callable[..., Callable[[Any, int], Any]] | None = getattr(
    _json_encoder, "c_make_encoder", None
)
#: What ``json.dumps`` calls for a value it cannot encode: it raises the same TypeError.
_NOT_JSON: Callable[[Any], Any] = json.JSONEncoder().default


def json_text(
    value: Any,
    *,
    sort_keys: bool = False,
    allow_nan: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``json.dumps(value, sort_keys=..., allow_nan=..., default=...)``, the same text.

    ``json.dumps`` with any argument makes an encoder object, and even without one makes
    a closure and the C encoder on each call, which costs more than encoding a small
    value: every epoch's metrics, every request the outbox keeps and every call the hub
    binds to its idempotency key go through here. Only the C encoder is made, with a
    fresh set of the objects being encoded, so a circular value is still a ValueError.
    """
    if _C_ENCODER is None:  # an interpreter without the C accelerator
        return json.dumps(value, sort_keys=sort_keys, allow_nan=allow_nan, default=default)
    if isinstance(value, str):
        return _json_encoder.encode_basestring_ascii(value)
    encode = _C_ENCODER(
        {},
        _NOT_JSON if default is None else default,
        _json_encoder.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        sort_keys,
        False,
        allow_nan,
    )
    return "".join(encode(value, 0))
