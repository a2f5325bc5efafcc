"""Closing with only a rate-held checkpoint left: the close ends at once, not at its limit.

The hub takes a checkpoint at most every 900 s. A script that ends (or gets SIGTERM) a
few epochs after the first checkpoint went up leaves the newest held back by that limit;
no wait within ``exit_timeout`` can send it, so waiting the whole limit only held the
trainer (10 s at every exit, or a scheduler's grace period) before saying it is kept.
"""

import time
from pathlib import Path

import hubfsm
from tests.support import KEY, new_model
from transports.memory import InMemoryTransport


def test_a_close_with_only_a_rate_held_checkpoint_left_does_not_wait_its_limit(hub, tmp_path):
    model_id = new_model(hub)
    session = hubfsm.Session(
        model_id, transport=InMemoryTransport(hub, KEY), outbox_dir=tmp_path, exit_timeout=20.0
    )
    session.start()
    weights = Path(tmp_path / "last.pt")
    weights.write_bytes(b"weights of epoch 0")
    session.log_metrics({"train/loss": 1.0}, epoch=0)
    session.save_checkpoint(weights, epoch=0)
    deadline = time.monotonic() + 10.0
    while not hub.record(model_id)["has_last_weights"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hub.record(model_id)["has_last_weights"]  # the first goes at once
    weights.write_bytes(b"weights of epoch 1")
    session.log_metrics({"train/loss": 0.5}, epoch=1)
    session.save_checkpoint(weights, epoch=1)  # held: the next is due in 900 s

    began = time.monotonic()
    session.close()
    took = time.monotonic() - began

    assert took < 8.0  # the metrics wait their 3 s interval; the checkpoint cannot go
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0, 1]
    assert session.pending() == {"metrics": 0, "checkpoint": 1, "final": 0}
    assert session.state == "resumable"
