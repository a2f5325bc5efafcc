"""How far a Platform run got, as the local hub tells it: signs of life, the last epoch."""

from __future__ import annotations

from hubfsm.hub.calls import HubCall
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import new_platform_key
from hubfsm.hub.store import MemoryStore
from hubfsm.hub.summary import state, summarize

METRICS = "/api/webhooks/training/metrics"
STALL_AFTER = 600.0


def _hub() -> tuple[Hub, str, list[float]]:
    key, now = new_platform_key(), [1000.0]
    return Hub(MemoryStore(), clock=lambda: now[0], keys=[key]), key, now


def _event(hub: Hub, key: str, body: dict) -> dict:
    reply = hub.handle(HubCall("POST", METRICS, key, body))
    assert reply.status == 200, reply.body
    return dict(reply.body)


def _start(hub: Hub, key: str, epochs: int = 3) -> str:
    data = {"trainArgs": {"epochs": str(epochs)}, "epochs": epochs, "device": "cpu"}
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


def _epoch_end(hub: Hub, key: str, model_id: str, epoch: int, loss: float, lr: float) -> None:
    metrics = {"train/box_loss": loss, "train/cls_loss": loss / 2, "lr": lr}
    metrics["metrics/mAP50-95(B)"] = 0.1 * epoch
    data = {"epoch": epoch, "metrics": metrics, "fitness": 0.1, "best_fitness": 0.1}
    _event(hub, key, {"modelId": model_id, "event": "epoch_end", "data": data})


def test_a_run_stopped_early_counts_the_epochs_it_trained_not_its_final_validation() -> None:
    # Cancelled (or stopped by patience) after epochs 0-4 of 30: ultralytics validates
    # best.pt and reports it as epoch 5, with epoch 4's training losses and lr.
    hub, key, now = _hub()
    model_id = _start(hub, key, epochs=30)
    for epoch in range(5):
        now[0] += 10.0
        _epoch_end(hub, key, model_id, epoch, loss=1.0 / (epoch + 1), lr=0.01 - epoch / 1000)
    _epoch_end(hub, key, model_id, 5, loss=1.0 / 5, lr=0.01 - 4 / 1000)
    record = hub.record(model_id)
    assert record is not None and record["last_epoch"] == 4
    assert sorted(e for e, _ in hub.store.get_metrics(model_id)) == [*range(6)]  # charted
    results = {"metrics": {"metrics/mAP50-95(B)": 0.4}, "bestEpoch": 4, "bestFitness": 0.4}
    data = {"results": results, "runId": 1}
    _event(hub, key, {"modelId": model_id, "event": "training_complete", "data": data})
    record = hub.record(model_id)
    assert record is not None and record["final_epoch"] == 4
    summary = summarize(record, hub.metrics(model_id), now[0])
    assert summary["progress"] == "epoch 5 of 5 (30 planned)"


def test_an_epoch_that_trained_counts_even_with_the_same_validation() -> None:
    hub, key, _ = _hub()
    model_id = _start(hub, key, epochs=30)
    _epoch_end(hub, key, model_id, 0, loss=1.0, lr=0.01)
    _epoch_end(hub, key, model_id, 1, loss=0.9, lr=0.01)  # the same lr, new losses
    record = hub.record(model_id)
    assert record is not None and record["last_epoch"] == 1


def test_a_run_without_console_is_stalled_only_after_two_of_its_epochs() -> None:
    # hubfsm's own Platform client (install()) sends no console: between two epochs of
    # 700 s the hub hears nothing, and must not call the run stalled after 600 s.
    hub, key, now = _hub()
    model_id = _start(hub, key, epochs=30)
    for epoch in range(2):
        now[0] += 700.0
        _epoch_end(hub, key, model_id, epoch, loss=1.0 / (epoch + 1), lr=0.01)
    record = hub.record(model_id)
    assert record is not None
    assert state(record, now[0] + 1000.0, STALL_AFTER) == "training"
    assert state(record, now[0] + 1401.0, STALL_AFTER) == "stalled"
