"""A resumed session that delivers the last run's pending checkpoint resumes from it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

import hubfsm
from hubfsm.core.config import CoreConfig, Limits
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.session import Session
from hubfsm.runtime.weight_cache import DownloadError
from hubfsm.transport import Request, Response
from transports.http import RequestsTransport

EPOCH_ONE = b"epoch one " * 500

#: The shipped limits, but metrics every 50 ms rather than every 3 s: the resumed run's
#: last metrics need not wait out the hub's metrics limit to prove where they landed.
QUICK_METRICS = CoreConfig(limits=Limits(metrics=0.05))


@pytest.fixture(autouse=True)
def _main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)


def _killed_with_a_checkpoint_pending(local: LocalHub, tmp_path: Path, **options: Any) -> str:
    """Epoch 0's weights on the hub, epoch 1's left in the outbox; returns the model id."""
    run = hubfsm.open("yolov8n.yaml", outbox_dir=tmp_path / "outbox", data="coco8.yaml", **options)
    last = tmp_path / "last.pt"
    last.write_bytes(b"epoch zero " * 500)
    run.save_checkpoint(last, epoch=0)
    run.log_metrics({"loss": 1.0}, epoch=0)
    assert run.flush(timeout=60)
    (tmp_path / "last1.pt").write_bytes(EPOCH_ONE)
    # The next upload waits for the hub's 900 s limit: the run is killed before it.
    run.save_checkpoint(tmp_path / "last1.pt", epoch=1)
    run.log_metrics({"loss": 0.5}, epoch=1)
    run.close(timeout=0.5)  # what waits on the limit stays in the outbox
    assert local.hub.record(run.model_id)["checkpoint_epoch"] == 0
    return str(run.model_id)


def test_weights_replaced_by_the_outboxs_checkpoint_are_downloaded_newest(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as local:
        options = {"api_key": local.api_key, "api_root": local.url, "web_root": local.url}
        model_id = _killed_with_a_checkpoint_pending(local, tmp_path, **options)
        again = Session(model_id, outbox_dir=tmp_path / "outbox", config=QUICK_METRICS, **options)
        try:
            assert again.plan.kind == "resume" and again.plan.resume_epoch == 1
            # A new process may upload at once: the kept epoch 1 goes before the download.
            assert again.flush(timeout=60)
            assert local.hub.record(model_id)["checkpoint_epoch"] == 1
            path = again.download_weights(progress=False)
            assert path is not None
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(EPOCH_ONE).digest()
            assert again.plan.resume_epoch == 2 and again.record["checkpoint_epoch"] == 1
            again.start()
            again.log_metrics({"loss": 0.25})  # numbered after the newer checkpoint
            assert again.flush(timeout=60)
            assert sorted(int(row["epoch"]) for row in local.hub.metrics(model_id)) == [0, 1, 2]
        finally:
            again.close()


class AnotherModelOnReRead(RequestsTransport):
    """A hub that answers the second read of the record with another model's record."""

    reads = 0

    def send(self, request: Request) -> Response:
        response = super().send(request)
        if request.method == "GET" and request.path.startswith("/v1/models/"):
            self.reads += 1
            if self.reads > 1:
                data = dict(response.data, id="Z" * 20, resume="http://127.0.0.1:9/x.pt")
                return Response(200, {"success": True, "message": "", "data": data})
        return response


def test_a_re_read_record_of_another_model_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as local:
        options = {"api_key": local.api_key, "api_root": local.url, "web_root": local.url}
        model_id = _killed_with_a_checkpoint_pending(local, tmp_path, **options)
        link = AnotherModelOnReRead(local.api_key, api_root=local.url)
        again = Session(model_id, transport=link, outbox_dir=tmp_path / "outbox", **options)
        try:
            assert again.flush(timeout=60)
            with pytest.raises(DownloadError, match="404"):
                again.download_weights(progress=False)
            # The record was read again, before the download (the session delivered a
            # checkpoint) and after it failed, and each time set aside.
            assert link.reads == 3
            assert again.plan.resume_epoch == 1 and again.record["id"] == model_id
            assert local.api_key not in repr(again)
        finally:
            again.close()


EPOCH_TWO = b"epoch two " * 500


def _resumed_and_killed_again(local: LocalHub, tmp_path: Path, **options: Any) -> str:
    """A resumed run downloads epoch 1's weights, trains epoch 2 and is killed with it kept.

    The resumed run's first upload was the outbox's epoch 1, so epoch 2's weights wait for
    the hub's 900 s limit: the hub names epoch 1, the outbox holds epoch 2, and the weights
    cache holds epoch 1's file.
    """
    model_id = _killed_with_a_checkpoint_pending(local, tmp_path, **options)
    run = Session(model_id, outbox_dir=tmp_path / "outbox", config=QUICK_METRICS, **options)
    try:
        assert run.flush(timeout=60)
        path = run.download_weights(progress=False)
        assert path is not None and path.read_bytes() == EPOCH_ONE
        run.start()
        (tmp_path / "last2.pt").write_bytes(EPOCH_TWO)
        run.log_metrics({"loss": 0.25}, epoch=2)
        run.save_checkpoint(tmp_path / "last2.pt", epoch=2)
    finally:
        run.close(timeout=0.5)  # what waits on the limit stays in the outbox
    assert run.kept is not None and run.kept["checkpoint"] == 1
    assert local.hub.record(model_id)["checkpoint_epoch"] == 1
    return model_id


def test_a_cached_file_of_weights_the_outboxs_checkpoint_replaced_is_not_resumed_from(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as local:
        options = {"api_key": local.api_key, "api_root": local.url, "web_root": local.url}
        model_id = _resumed_and_killed_again(local, tmp_path, **options)
        again = Session(model_id, outbox_dir=tmp_path / "outbox", **options)
        try:
            assert again.plan.resume_epoch == 2  # the record read at opening: epoch 1's weights
            assert again.flush(timeout=60)
            assert local.hub.record(model_id)["checkpoint_epoch"] == 2
            path = again.download_weights(progress=False)
            assert path is not None and path.read_bytes() == EPOCH_TWO
            assert again.plan.resume_epoch == 3 and again.record["checkpoint_epoch"] == 2
        finally:
            again.close()


class SlowUploads(RequestsTransport):
    """A hub link on which each weights upload takes a while to reach the hub."""

    def send(self, request: Request) -> Response:
        if request.path.endswith("/upload"):
            time.sleep(0.5)
        return super().send(request)


def test_a_download_asked_for_while_the_outboxs_checkpoint_uploads_gets_that_checkpoint(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as local:
        options = {"api_key": local.api_key, "api_root": local.url, "web_root": local.url}
        model_id = _killed_with_a_checkpoint_pending(local, tmp_path, **options)
        link = SlowUploads(local.api_key, api_root=local.url)
        again = Session(model_id, transport=link, outbox_dir=tmp_path / "outbox", **options)
        try:
            # As ultralytics' stand-in does: the plan, then the weights, with no flush.
            assert again.plan.resume_epoch == 1
            path = again.download_weights(progress=False)
            assert path is not None and path.read_bytes() == EPOCH_ONE
            assert again.plan.resume_epoch == 2
            assert local.hub.record(model_id)["checkpoint_epoch"] == 1
        finally:
            again.close()
