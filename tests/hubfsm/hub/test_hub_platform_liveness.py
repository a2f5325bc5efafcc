"""A Platform run's signs of life on the local hub, which sees no heartbeat from ultralytics 8.4."""

from __future__ import annotations

from hubfsm.hub.calls import HubCall
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import new_platform_key
from hubfsm.hub.store import MemoryStore
from hubfsm.hub.summary import state

METRICS = "/api/webhooks/training/metrics"
STALL_AFTER = 600.0


def _hub() -> tuple[Hub, str, list[float]]:
    key, now = new_platform_key(), [1000.0]
    return Hub(MemoryStore(), clock=lambda: now[0], keys=[key]), key, now


def _event(hub: Hub, key: str, body: dict) -> dict:
    reply = hub.handle(HubCall("POST", METRICS, key, body))
    assert reply.status == 200, reply.body
    return dict(reply.body)


def _start(hub: Hub, key: str) -> str:
    data = {"trainArgs": {"epochs": "3"}, "epochs": 3, "device": "cpu"}
    body = {"project": "alice/birds", "name": "long", "event": "training_started", "data": data}
    return str(_event(hub, key, body)["modelId"])


def test_console_chunks_keep_a_long_epoch_from_looking_stalled() -> None:
    # ultralytics 8.4 sends no heartbeat; during an epoch longer than the stall time its
    # console chunks (every 5 s, progress bars included) are what says the trainer lives.
    hub, key, now = _hub()
    model_id = _start(hub, key)
    for chunk in range(1, 4):
        now[0] += 400.0
        data = {"chunkId": chunk, "content": f"batch {chunk}\n", "lineCount": 1}
        _event(hub, key, {"modelId": model_id, "event": "console_output", "data": data})
    record = hub.record(model_id)
    assert record is not None
    assert state(record, now[0], STALL_AFTER) == "training"
    # Silence after that is a run killed or lost, as before.
    now[0] += STALL_AFTER + 1.0
    assert state(record, now[0], STALL_AFTER) == "stalled"


def test_the_sdks_liveness_events_count_as_signs_of_life_too() -> None:
    hub, key, now = _hub()
    model_id = _start(hub, key)
    now[0] += 700.0
    _event(hub, key, {"modelId": model_id, "event": "training_progress", "data": {"step": 1}})
    record = hub.record(model_id)
    assert record is not None and state(record, now[0], STALL_AFTER) == "training"
