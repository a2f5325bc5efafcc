"""The hub's shortcuts give the answers of the long way round, for any input.

Every request body is checked, every epoch's metrics text is validated and every upload
replaces the model record; each has a quick path for the usual case. These tests hold
each quick path to the general one it stands in for, over seeded random inputs and the
edge cases of JSON numbers, names and nesting.
"""

from __future__ import annotations

import json
import random
from typing import Any

import attrs
import pytest

from hubfsm.hub import parse, records
from hubfsm.hub.calls import HubCall
from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore
from hubfsm.hub.stored import ModelRecord

KEY = "k" * 42

# Texts at the edges of what the quick metrics check may accept.
EDGE_TEXTS = [
    "{}",
    " { \t} \n",
    '{"a": 1}',
    '{"a":1,"a":2}',
    '{"a": -0}',
    '{"a": 0e5}',
    '{"a": 1E+05, "b": -2.5e-07}',
    '{"a": 9999999999999999.9e99}',
    '{"a": 1e99}',
    '{"a": 1e999}',
    '{"a": -1e400}',
    '{"a": 1' + "0" * 400 + "}",
    '{"a": 1' + "0" * 400 + ".0}",
    '{"a": 1' + "0" * 5000 + "}",
    '{"a": .5}',
    '{"a": 1.}',
    '{"a": +1}',
    '{"a": 01}',
    '{"a": 1,}',
    '{"a": 1}{}',
    '{"a": 1} x',
    '{"a": NaN}',
    '{"a": Infinity, "b": 1}',
    '{"a": -Infinity}',
    '{"a": true}',
    '{"a": null}',
    '{"a": "text"}',
    '{"a": [1, 2]}',
    '{"a": {"b": 1}}',
    '{"\\ud800": 1}',
    '{"a\\"b": 1}',
    '{"a\\\\b": 1}',
    '{"\u00e9": 1}',
    '{"a\tb": 1}',
    '{"\ud800": 1}',
    "[1, 2]",
    "1",
    '"{}"',
    "",
    "{",
    '{"a" 1}',
    "{a: 1}",
    "{'a': 1}",
]


def _random_number(rng: random.Random) -> str:
    choice = rng.randrange(8)
    if choice == 0:
        return str(rng.randrange(-(10**20), 10**20))
    if choice == 1:
        mantissa = f"{rng.uniform(-9.99, 9.99):.{rng.randrange(0, 20)}f}"
        return f"{mantissa}{rng.choice('eE')}{rng.choice(['', '+', '-'])}{rng.randrange(400)}"
    if choice == 2:
        return rng.choice(["NaN", "Infinity", "-Infinity", "true", "false", "null", '"x"'])
    if choice == 3:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 30)))
        return rng.choice(["", "-"]) + digits + rng.choice(["", ".5", "e5", "E-3", "."])
    return repr(rng.uniform(-1e6, 1e6))


def _random_name(rng: random.Random) -> str:
    alphabet = "abcXYZ019/_ -.:" + '"\\\t\u00e9\ud800\U0001f600'
    name = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
    if rng.random() < 0.5:
        return json.dumps(name)  # escaped as JSON would
    return '"' + name + '"'  # raw, maybe not JSON at all


def _random_text(rng: random.Random) -> str:
    space = ["", " ", "  ", "\t", "\n", "\r\n", "\u00a0"]
    pairs = [
        f"{rng.choice(space)}{_random_name(rng)}{rng.choice(space)}:"
        f"{rng.choice(space)}{_random_number(rng)}{rng.choice(space)}"
        for _ in range(rng.randrange(0, 10))
    ]
    return rng.choice(space) + "{" + ",".join(pairs) + "}" + rng.choice(space)


def _trainer_text(rng: random.Random) -> str:
    names = [f"metrics/m{i}" for i in range(rng.randrange(1, 12))] + ["train/loss"]
    return json.dumps({n: round(rng.uniform(0, 10), rng.randrange(1, 8)) for n in names})


@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_the_quick_metrics_check_accepts_only_what_decoding_keeps_as_sent(text: str) -> None:
    slow = parse._decoded_metrics(text)
    assert parse._checked_metrics.__wrapped__(text) == slow
    if parse._FLAT_OBJECT.fullmatch(text) is not None:
        assert slow == (text, None)


def test_the_quick_metrics_check_agrees_on_random_texts() -> None:
    rng = random.Random(20240601)
    accepted = 0
    for _ in range(5000):
        text = _random_text(rng)
        slow = parse._decoded_metrics(text)
        if parse._FLAT_OBJECT.fullmatch(text) is not None:
            accepted += 1
            assert slow == (text, None), text
        assert parse._checked_metrics.__wrapped__(text) == slow, text
    assert accepted > 100  # the random texts did reach the quick path


def test_trainer_metrics_take_the_quick_path() -> None:
    rng = random.Random(7)
    for _ in range(200):
        text = _trainer_text(rng)
        assert parse._FLAT_OBJECT.fullmatch(text) is not None, text
        assert parse.metrics_text(text, 3) == text


def _random_value(rng: random.Random, depth: int) -> Any:
    choice = rng.randrange(12 if depth < 40 else 6)
    if choice == 0:
        return rng.choice(["plain", "", "caf\u00e9", "odd \ud800", "\udfff", "\U0001f600"])
    if choice == 1:
        return rng.choice([0.5, -1e308, float("nan"), float("inf"), -float("inf"), 0.0])
    if choice == 2:
        return rng.choice([0, -5, 10**30, True, False])
    if choice == 3:
        return None
    if choice == 4:
        return object() if rng.random() < 0.05 else 1
    if choice == 5:
        return "x"
    if choice in (6, 7, 8):
        keys = ["a", "b", "caf\u00e9", "\ud800", 1, None] if rng.random() < 0.1 else ["a", "b"]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if choice == 9:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if choice == 10:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {"n": _random_value(rng, depth + 1)}


def _nested(levels: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"n": value}
    return value


def test_the_quick_json_check_agrees_with_the_full_walk() -> None:
    rng = random.Random(99)
    values: list[Any] = [_random_value(rng, 0) for _ in range(5000)]
    leaves: list[Any] = [{}, {"a": 1}, 1, [], "x"]
    for levels in range(parse.MAX_DEPTH - 2, parse.MAX_DEPTH + 3):
        values += [_nested(levels, leaf) for leaf in leaves]
    refused = 0
    for value in values:
        expected = parse._walk(value)
        refused += expected is not None
        assert parse.check_json(value) == expected
    assert 0 < refused < len(values)


def _full_record() -> ModelRecord:
    return ModelRecord(
        id="a" * 20,
        name="run",
        created_at=1.0,
        cfg="yolov8n.yaml",
        dataset="coco8.yaml",
        parent="yolov8n.pt",
        batch_size=16,
        epochs=300,
        imgsz=[640, 480],  # the converter makes it a tuple
        patience=50,
        device=[0, "1"],
        cache="ram",
        status="training",
        has_last_weights=True,
        has_best_weights=False,
        last_epoch=4,
        final_epoch=None,
        map50_95=None,
        agent_id="b" * 20,
        owner="owner",
        metrics_epoch=5,
        started_at=2.0,
        updated_at=3.0,
        heartbeat_at=4.0,
        agent="agent",
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"status": "trained", "final_epoch": 9, "map50_95": 0.5},
        {"imgsz": [320], "device": "cpu"},
        {"id": "c" * 20, "agent": None, "updated_at": 7.5},
        {field.name: None for field in attrs.fields(ModelRecord) if field.default is None},
    ],
)
def test_record_evolve_matches_attrs_evolve(changes: dict[str, Any]) -> None:
    record = _full_record()
    quick = records.evolve(record, **changes)
    assert quick == attrs.evolve(record, **changes)
    assert type(quick.imgsz) is type(attrs.evolve(record, **changes).imgsz)


def test_every_record_field_survives_a_metrics_upload() -> None:
    hub = Hub(MemoryStore(), clock=lambda: 10.0, keys=[KEY])
    record = attrs.evolve(_full_record(), owner=hub.principal(KEY))
    hub.store.put_model(record)
    body = {"type": "metrics", "metrics": {"7": json.dumps({"loss": 1.0})}}
    reply = hub.handle(HubCall("POST", f"/v1/models/{record.id}", KEY, body))
    assert reply.ok
    after = hub.store.get_model(record.id)
    assert after == attrs.evolve(record, metrics_epoch=7, updated_at=10.0)


def test_idempotency_keys_of_any_text_still_replay() -> None:
    hub = Hub(MemoryStore(), clock=lambda: 10.0, keys=[KEY])
    created = hub.handle(
        HubCall("POST", "/v1/models", KEY, {"lineage": {"architecture": {"name": "yolov8n"}}})
    )
    model_id = created.body["data"]["id"]
    for key in ["plain-key", "caf\u00e9", "odd \ud800 key"]:
        body = {"type": "metrics", "metrics": {"1": '{"loss": 1.0}'}}
        call = HubCall("POST", f"/v1/models/{model_id}", KEY, body, idempotency_key=key)
        first, again = hub.handle(call), hub.handle(call)
        assert first.ok and "Idempotent-Replayed" not in first.headers
        assert again.body == first.body and again.headers["Idempotent-Replayed"] == "true"
    assert hub.audit().replayed == {"upload_metrics": 3}
