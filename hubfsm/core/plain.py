"""One converter from what trainers log to plain values JSON and the journal can carry."""

from __future__ import annotations

from collections.abc import Mapping
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
    # numpy scalars and one-element arrays or tensors (on any device) have item(); larger
    # arrays and tensors have tolist().
    for method in ("item", "tolist"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                return plain(convert())
            except (TypeError, ValueError, RuntimeError):
                pass
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return str(value)
