"""``hubfsm sync`` where nothing listens: both dialects fail within seconds, naming the address.

A HUB outbox's sync opens the model first, and that request meets the refused
connection; a Platform outbox that names its run opens with no request, so its first
contact is a data request. Before, that one was retried for the whole ``--timeout``
(and ten seconds of closing), saying the hub was lost.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

import hubfsm
from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from hubfsm.hub.keys import new_platform_key
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.sync import status, sync

FAST = {
    "hub": CoreConfig().scaled(0.001),
    "platform": CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001),
}


def leave_outbox(local: LocalHub, root: Path, dialect: str, left: str) -> tuple[str, str]:
    """A run whose hub went away before ``left`` (an epoch, or the final weights) reached it.

    Returns the model id and the key.
    """
    if dialect == "platform":
        key = new_platform_key()
        local.hub.add_key(key, "platform")
        identifier, args = "alice/birds", {"name": "run1", "epochs": 2}
    else:
        key, identifier, args = local.api_key, "yolov8n.yaml", {"data": "coco8.yaml"}
    s = hubfsm.Session(identifier, api_key=key, api_root=local.url, config=FAST[dialect],
                       outbox_dir=root, train_args=args)  # fmt: skip
    s.start()
    s.log_metrics({"loss": 1.0}, epoch=0)
    assert s.flush(timeout=30.0)
    if left == "epoch":
        local.stop()
        s.log_metrics({"loss": 0.5}, epoch=1)
        s.close(timeout=0.0)
    else:
        local.stop()
        best = root.parent / "best.pt"
        best.write_bytes(b"best weights")
        with pytest.raises(hubfsm.DeliveryIncomplete):
            s.finish(best, map50_95=0.5, timeout=0.5)
        s.close(timeout=0.0)
    assert s.model_id is not None
    return s.model_id, key


def pending(root: Path) -> str:
    out = io.StringIO()
    status(root, out=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("dialect", "left"), [("hub", "epoch"), ("platform", "epoch"), ("platform", "final")]
)
def test_sync_where_nothing_listens_fails_fast_naming_the_address_and_keeps_it_all(
    tmp_path: Path, dialect: str, left: str
) -> None:
    root = tmp_path / "outbox"
    with LocalHub(tmp_path / "hub") as local:
        model_id, key = leave_outbox(local, root, dialect, left)
        before = pending(root)
        assert model_id in before
        out = io.StringIO()
        started = time.monotonic()
        code = sync(root, api_key=key, timeout=60.0, out=out)
        took = time.monotonic() - started
        said = out.getvalue()
        assert code == 1, said
        # Within the first contact's few attempts (5 s), not the 60 s --timeout.
        assert took < 10.0, f"sync took {took:.1f}s: {said}"
        assert f"is the hub at {local.url} running?" in said, said
        assert "refused the connection" in said and "lost the hub" not in said, said
        assert f"its records stay in {root / model_id}" in said, said
        assert key not in said
        assert pending(root) == before  # nothing lost, nothing marked
        # The hub back, the same outbox is delivered.
        local.start()
        out = io.StringIO()
        assert sync(root, api_key=key, timeout=60.0, out=out) == 0, out.getvalue()
        epochs = [row["epoch"] for row in local.hub.metrics(model_id)]
        assert epochs == ([0, 1] if left == "epoch" else [0])
        if left == "final":
            assert local.hub.record(model_id)["status"] == "trained"
        assert "no outboxes" in pending(root)
