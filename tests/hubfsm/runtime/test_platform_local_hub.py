"""A Platform session against the local hub's Platform API, over loopback HTTP."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import hubfsm
from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from hubfsm.hub.keys import new_platform_key
from hubfsm.hub.server import LocalHub

FAST = CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


@pytest.fixture
def key(local: LocalHub) -> str:
    made = new_platform_key()
    local.hub.add_key(made, "platform")
    return made


def test_a_session_reports_a_whole_run_to_the_local_hub(local, key, tmp_path):
    best = tmp_path / "best.pt"
    best.write_bytes(os.urandom(200_000))
    last = tmp_path / "last.pt"
    last.write_bytes(b"epoch zero")
    with hubfsm.Session("alice/birds", api_key=key, api_root=local.url, config=FAST,
                        train_args={"name": "run1", "epochs": 3}) as s:  # fmt: skip
        assert s.protocol == "platform" and s.run_id is not None
        for epoch in range(3):
            s.log_metrics({"train/box_loss": 1.0 / (epoch + 1), "fitness": 0.1 * epoch})
            if epoch == 0:
                s.save_checkpoint(last, epoch=0)
                assert s.flush(timeout=30.0)
        s.finish(best, map50_95=0.25)
        assert s.state == "done"
        model_id = s.model_id
    epochs = [row["epoch"] for row in local.hub.metrics(model_id)]
    assert epochs == [0, 1, 2]
    # The final weights are the model's best weights on the hub, byte for byte.
    files = requests.get(
        f"{local.url}/api/models/alice/birds/run1/files",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert files.status_code == 200, files.text
    urls = [f["downloadUrl"] for f in files.json()["files"]]
    digests = {hashlib.sha256(requests.get(u, timeout=10).content).hexdigest() for u in urls}
    assert hashlib.sha256(best.read_bytes()).hexdigest() in digests


def test_a_session_reports_to_the_local_hub_in_memory_too(tmp_path):
    from hubfsm.hub.domain import Hub
    from hubfsm.hub.store import MemoryStore
    from transports.memory import InMemoryTransport

    key = new_platform_key()
    # Signed URLs need an address to be URLs; the in-memory transport keeps their path.
    hub = Hub(MemoryStore(), public_root="http://hub.invalid")
    hub.add_key(key, "platform")
    best = tmp_path / "best.pt"
    best.write_bytes(b"best weights")
    with hubfsm.Session("alice/birds", api_key=key, transport=InMemoryTransport(hub, key),
                        config=FAST, train_args={"name": "run1"}) as s:  # fmt: skip
        for epoch in range(4):
            s.log_metrics({"train/box_loss": 1.0 / (epoch + 1)})
        s.finish(best, map50_95=0.3, timeout=30.0)
        assert s.state == "done"
    assert [row["epoch"] for row in hub.metrics(s.model_id)] == [0, 1, 2, 3]
    assert hub.record(s.model_id)["has_best_weights"]


def test_a_hub_restarted_between_an_upload_and_its_event_gets_the_upload_again(tmp_path):
    from hubfsm.hub.domain import Hub
    from hubfsm.hub.store import MemoryStore
    from transports.memory import InMemoryTransport

    key = new_platform_key()
    hub = Hub(MemoryStore(), public_root="http://hub.invalid")
    hub.add_key(key, "platform")
    inner = InMemoryTransport(hub, key)
    restarts = []

    class RestartsOnce(InMemoryTransport):
        def send(self, request):
            event = (request.json or {}).get("event")
            if event == "checkpoint_saved" and len(restarts) < 2:
                # A restart forgets the uploads waiting for their event (the PUT's bytes).
                for model in hub.store.list_models():
                    hub.store.uploads.drop(model.id)
                restarts.append(event)
            return inner.send(request)

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    last.write_bytes(b"epoch zero")
    best.write_bytes(b"best weights")
    with hubfsm.Session("alice/birds", api_key=key, transport=RestartsOnce(hub, key),
                        config=FAST, train_args={"name": "run1"}) as s:  # fmt: skip
        s.log_metrics({"train/box_loss": 1.0})
        s.save_checkpoint(last, epoch=0)
        s.log_metrics({"train/box_loss": 0.5})
        # Before, the 404 ("Nothing was uploaded to that uploadPath") stopped all sending
        # as "model ... not found on the hub", and finish() raised ModelNotFoundError.
        s.finish(best, map50_95=0.3, timeout=30.0)
        assert s.state == "done"
    assert len(restarts) == 2
    record = hub.record(s.model_id)
    assert record["status"] == "trained" and record["has_best_weights"]
    assert [row["epoch"] for row in hub.metrics(s.model_id)] == [0, 1]


def test_a_checkpoint_the_hub_could_not_promote_for_a_full_disk_is_promoted_on_retry(
    local, key, tmp_path
):
    import errno

    store = local.hub.store
    commit = store.commit_weights
    refused = []

    def full_once(*args, **kwargs):
        if not refused:
            refused.append(args[1])
            raise OSError(errno.ENOSPC, "No space left on device")
        return commit(*args, **kwargs)

    store.commit_weights = full_once
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    last.write_bytes(b"epoch zero" * 1000)
    best.write_bytes(b"best weights")
    with hubfsm.Session("alice/birds", api_key=key, api_root=local.url, config=FAST,
                        train_args={"name": "run1"}) as s:  # fmt: skip
        s.log_metrics({"train/box_loss": 1.0})
        s.save_checkpoint(last, epoch=0)
        assert s.flush(timeout=30.0)
        s.finish(best, map50_95=0.3, timeout=30.0)
        assert s.state == "done"
    assert refused == ["last"]
    # The bytes waited for the event's retry (507): no second PUT of them, and nothing
    # left behind in the hub's staging folder to hold the full disk's room. Before, the
    # refused upload was forgotten there and the retried event found nothing (404).
    assert local.hub.audit().requests["platform_upload_put"] == 2  # the checkpoint, the final
    assert list((tmp_path / "hub" / "weights" / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    ("protocol", "extra", "status"),
    [("platform", "/api", 404), ("hub", "/v1", 404), ("platform", "/models", 405)],
)
def test_a_wrong_api_root_is_named_as_one_not_as_a_missing_model(
    local, key, protocol, extra, status
):
    # A root with a path too many (the first part of the dialect's routes, or the pages')
    # answers 404 or 405 to the request that makes the model. Before, that read "model None
    # not found on the hub" or "the hub rejected ... with 405", and the hub's own words
    # (Platform's {"error": ...}) were dropped.
    platform = protocol == "platform"
    api_key = key if platform else local.api_key
    config = FAST if platform else CoreConfig().scaled(0.001)
    with pytest.raises(hubfsm.HubError) as raised:
        hubfsm.Session(
            "alice/birds" if platform else "yolov8n.yaml",
            api_key=api_key,
            api_root=f"{local.url}{extra}",
            config=config,
            protocol=protocol,
            outbox=False,
            train_args={"name": "run1"},
        ).start()
    error = raised.value
    assert not isinstance(error, hubfsm.ModelNotFoundError) and error.status == status
    text = str(error)
    assert "None" not in text and "not found on the hub" not in text
    assert f"check the API root {local.url}{extra}" in text
    if extra == "/api":
        assert "Not found: POST '/api/api/webhooks/training/metrics'" in text  # the hub's words
    assert api_key not in text


def test_the_hubs_words_reach_a_message_as_one_printable_line():
    # Platform answers say why as {"error": ...}, which messages now quote: a hostile hub
    # must not reach the terminal with escape sequences, or fill it.
    from hubfsm.transport import Response
    from transports.memory import HandlerTransport

    said = "\x1b[2J\x1b]0;owned\x07no\nsuch key " + "x" * 5000

    def refuse(request):
        return Response(401, {"error": said})

    with pytest.raises(hubfsm.AuthError) as raised:
        hubfsm.Session(
            "alice/birds",
            api_key=new_platform_key(),
            transport=HandlerTransport(refuse),
            outbox=False,
            train_args={"name": "run1"},
        ).start()
    text = str(raised.value)
    assert text.isprintable() and "no such key xxx" in text
    assert "owned" in text and len(text) < 500
    assert Response(400, {"message": "fine", "error": "other"}).message == "fine"
