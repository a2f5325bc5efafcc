"""The checks on a trainer's calls: a wrong call fails there and then, saying what to do.

An epoch the hub cannot take (a float, a string, a negative number) passed the call
before and was found hours later: the hub rejected its metrics, and a ``finish`` that
took its epoch from it had the final weights rejected too; so did a NaN mAP50-95, and a
None one left ``finish`` waiting out its timeout. A call the session's state
does not allow named the machine's event and state, not what the caller should do.
"""

from __future__ import annotations

import math
import operator

from hubfsm.errors import IllegalEventError
from hubfsm.logs import get_logger

__all__ = ["MAX_EPOCH", "epoch_number", "illegal_call", "map_value", "metrics_not_a_mapping"]

log = get_logger("hubfsm")

#: The largest epoch a session sends: the local hub takes epochs under a billion.
MAX_EPOCH = 999_999_999


def epoch_number(value: object, call: str) -> int:
    """``value`` as an epoch: a whole number from 0 to :data:`MAX_EPOCH`.

    Integers of other types (numpy's, torch's) are taken as their value.

    Args:
        value: What the caller passed as ``epoch``.
        call: The method, named in the message.

    Raises:
        TypeError: It is no integer (a bool, a float, a string).
        ValueError: It is negative or beyond :data:`MAX_EPOCH`.
    """
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    try:
        if isinstance(value, bool):
            raise TypeError
        epoch = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{call}(): epoch {shown} is a {type(value).__name__}; pass the epoch as an int "
            "counted from 0 (int(epoch) for a whole float or a string of digits)"
        ) from None
    if not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(
            f"{call}(): epoch {shown} is out of range: epochs count from 0, up to {MAX_EPOCH:,}"
        )
    return epoch


#: The machine's event each of the trainer's calls is.
EVENTS = {
    "start": "start",
    "log_metrics": "epoch_end",
    "save_checkpoint": "checkpoint",
    "finish": "finish",
}


def illegal_call(state: str, call: str, *, closed: bool) -> IllegalEventError:
    """The error for ``call`` in ``state``, saying what the caller can do instead.

    Args:
        state: The session's state.
        call: The method the caller called (a key of :data:`EVENTS`).
        closed: The session was closed (``close``, the end of ``with``, the exit hook).
    """
    if closed and state != "done":
        hint = (
            f"the session is closed, so {call}() is no longer taken; what it kept goes "
            "first when a session opens this model again (hubfsm.open(model_id)), or "
            "with `hubfsm sync`"
        )
    elif state in ("created", "loaded"):
        hint = (
            f"the session is open but not started: call start() before {call}(), or "
            "open it in a `with` block or with hubfsm.open(), which start it"
        )
    elif call == "start" and state == "training":
        hint = "the session is started already (`with` and hubfsm.open() start it)"
    elif state == "done":
        hint = (
            f"the session finished and the hub has the final weights, so {call}() is no "
            "longer taken; a trained model does not train again: open a session on a "
            ".yaml or .pt to train a new model"
        )
    elif state == "failed":  # the session never opened
        hint = "the session failed to open; its error says why"
    else:  # finish() was called: it returned resumable, raised, or was interrupted
        hint = (
            f"finish() was called, so {call}() is no longer taken; the final weights "
            "not yet acknowledged wait in the outbox for `hubfsm sync` or the model's "
            "next session"
        )
    return IllegalEventError(state, EVENTS[call], hint)


def map_value(value: object, *, warn: bool = True) -> float:
    """``value`` as the mAP50-95 ``finish`` sends: a float, 0.0 for NaN or infinity.

    The hub takes only a finite number, and rejecting the final weights for a diverged
    run's score would cost the weights; a NaN or an infinity is sent as 0, as the
    training-loop callbacks do.

    Args:
        value: What the caller passed as ``map50_95``.
        warn: Log that a NaN or an infinity is sent as 0.

    Raises:
        TypeError: ``float()`` cannot take it (None, an object, a word).
    """
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(
            f"finish(): map50_95 must be a number (the model's mAP50-95), not a "
            f"{type(value).__name__}"
        ) from None
    if not math.isfinite(number):
        if warn:
            log.warning("finish.map_not_finite", map50_95=repr(number), sent=0.0)
        return 0.0
    return number


def metrics_not_a_mapping(value: object) -> TypeError:
    """The error for metrics that are no mapping (a list of pairs, a number)."""
    return TypeError(
        f"log_metrics(): metrics must be a mapping of names to values, such as "
        f"{{'train/loss': 0.5}}, not a {type(value).__name__}"
    )
