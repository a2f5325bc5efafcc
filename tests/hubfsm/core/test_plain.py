"""The one converter from logged values to plain Python."""

from __future__ import annotations

import enum
import functools
import json
import marshal
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubfsm.core.plain import json_text, plain
from hubfsm.core.protocol import create_payload, encode_metrics


class Scalar:
    """Like a numpy scalar or a one-element tensor."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


class Array:
    """Like a numpy array or a tensor of several elements."""

    def __init__(self, values):
        self.values = values

    def item(self):
        raise ValueError("only one element tensors can be converted to Python scalars")

    def tolist(self):
        return list(self.values)


class Float64(float):
    """Like numpy's float64: a float subclass, which marshal refuses."""

    def item(self):
        return float(self)


class Opaque:
    def __str__(self):
        return "opaque"


class Level(enum.IntEnum):
    HIGH = 3


def test_framework_scalars_arrays_and_containers_become_plain():
    assert plain({"a": Scalar(1.5), "b": [Scalar(2), (3, None)], "c": True, 4: "x"}) == {
        "a": 1.5,
        "b": [2, [3, None]],
        "c": True,
        "4": "x",
    }
    assert plain(Array([Scalar(1), 2.5])) == [1, 2.5]
    assert plain(Scalar(Scalar(4))) == 4
    assert plain(Opaque()) == "opaque"
    assert math.isnan(plain(float("nan")))


def test_subclasses_of_plain_types_become_the_exact_type():
    value = plain(Float64(0.25))
    assert value == 0.25 and type(value) is float
    assert plain(Level.HIGH) == 3 and type(plain(Level.HIGH)) is int
    marshal.dumps(plain(("m", 1, {"loss": Float64(1.0)})), 2)  # marshal refused the subclass


def test_metrics_and_the_create_payload_use_it():
    assert json.loads(encode_metrics({"loss": Scalar(0.5), "map": Float64(0.25)})) == {
        "loss": 0.5,
        "map": 0.25,
    }
    payload = create_payload("yolov8n.yaml", {"data": "coco8.yaml", "batch": Scalar(16)})
    assert payload["config"]["batchSize"] == 16


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(plain_values)
def test_plain_values_are_kept_as_they_are(value):
    assert plain(value) == value
    assert json.loads(json.dumps(plain(value))) == value


# -- the rule at log_metrics: what the wire carries, or a TypeError naming the key ---------


def test_carried_converts_what_has_a_plain_value():
    import decimal
    import fractions

    from hubfsm.core.plain import carried

    got = carried(
        {
            "a": Scalar(1.5),
            "b": Float64(2.5),
            "c": Level.HIGH,
            "d": fractions.Fraction(1, 4),
            "e": decimal.Decimal("0.5"),
            "f": [Array([1, 2])],
            "g": {"x": None, "y": "s"},
            "h": True,
        }
    )
    assert got == {
        "a": 1.5,
        "b": 2.5,
        "c": 3,
        "d": 0.25,
        "e": 0.5,
        "f": [[1, 2]],
        "g": {"x": None, "y": "s"},
        "h": True,
    }
    assert [type(got[k]) for k in "abcd"] == [float, float, int, float]
    marshal.dumps(got)  # the journal's format takes it as it is


def test_carried_keeps_non_finite_floats_and_the_wire_sends_them_as_null():
    from hubfsm.core.plain import carried

    got = carried({"loss": float("nan"), "lr": float("inf"), "ok": 0.5})
    assert math.isnan(got["loss"]) and got["lr"] == math.inf
    text = encode_metrics(got)
    assert json.loads(text) == {"loss": None, "lr": None, "ok": 0.5}
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize(
    ("metrics", "named"),
    [
        ({"loss": 0.9, 7: 1.0}, "7"),
        ({"big": 10**5000}, "'big'"),
        ({"big": 2**63}, "'big'"),
        ({"thing": object()}, "'thing'"),
        ({"c": 1j}, "'c'"),
        ({"nested": {"k": {1: 2.0}}}, "'nested.k'"),
        ({"deep": functools.reduce(lambda inner, _: [inner], range(20), 1)}, "'deep'"),
    ],
)
def test_carried_refuses_what_the_wire_cannot_carry_naming_the_key(metrics, named):
    from hubfsm.core.plain import carried

    with pytest.raises(TypeError, match=named):
        carried(metrics)


def test_the_largest_64_bit_integers_are_carried():
    from hubfsm.core.plain import carried

    assert carried({"a": 2**63 - 1, "b": -(2**63)}) == {"a": 2**63 - 1, "b": -(2**63)}


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(_JSON_VALUES, st.booleans(), st.booleans())
def test_json_text_is_the_text_json_dumps_gives(value, sort_keys, allow_nan) -> None:
    """The same text, or the same error, as ``json.dumps`` with the same arguments."""
    try:
        expected: object = json.dumps(value, sort_keys=sort_keys, allow_nan=allow_nan)
    except ValueError as exc:
        expected = ("ValueError", str(exc))
    try:
        got: object = json_text(value, sort_keys=sort_keys, allow_nan=allow_nan)
    except ValueError as exc:
        got = ("ValueError", str(exc))
    assert got == expected


def test_json_text_refuses_what_json_dumps_refuses() -> None:
    """An object JSON cannot hold, and a value that holds itself, fail as they do there."""
    circular: list[object] = []
    circular.append(circular)
    for value, error in (({"a": object()}, TypeError), (circular, ValueError)):
        with pytest.raises(error) as ours:
            json_text(value)
        with pytest.raises(error) as theirs:
            json.dumps(value)
        assert str(ours.value) == str(theirs.value)
    assert json_text({"a": object()}, default=lambda o: "made") == '{"a": "made"}'
