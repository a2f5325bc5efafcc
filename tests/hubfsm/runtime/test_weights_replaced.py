"""A resumed session that delivers the last run's pending checkpoint resumes from it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

import hubfsm
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.weight_cache import DownloadError
from hubfsm.runtime.session import Session
from hubfsm.transport import Request, Response
from transports.http import RequestsTransport

EPOCH_ONE = b"epoch one " * 500


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
        again = Session(model_id, outbox_dir=tmp_path / "outbox", **options)
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
            assert link.reads == 2  # the record was read again, and set aside
            assert again.plan.resume_epoch == 1 and again.record["id"] == model_id
            assert local.api_key not in repr(again)
        finally:
            again.close()
