"""A resumed session that delivers the last run's pending checkpoint resumes from it."""

from __future__ import annotations

import hashlib

import pytest

import hubfsm
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.session import Session


@pytest.fixture(autouse=True)
def _main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)


def test_weights_replaced_by_the_outboxs_checkpoint_are_downloaded_newest(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBFSM_CACHE", str(tmp_path / "cache"))
    with LocalHub(tmp_path / "hub") as local:
        options = {"api_key": local.api_key, "api_root": local.url, "web_root": local.url}
        run = hubfsm.open(
            "yolov8n.yaml", outbox_dir=tmp_path / "outbox", data="coco8.yaml", **options
        )
        last = tmp_path / "last.pt"
        last.write_bytes(b"epoch zero " * 500)
        run.save_checkpoint(last, epoch=0)
        run.log_metrics({"loss": 1.0}, epoch=0)
        assert run.flush(timeout=60)
        epoch_one = b"epoch one " * 500
        (tmp_path / "last1.pt").write_bytes(epoch_one)
        # The next upload waits for the hub's 900 s limit: the run is killed before it.
        run.save_checkpoint(tmp_path / "last1.pt", epoch=1)
        run.log_metrics({"loss": 0.5}, epoch=1)
        run.close(timeout=5)
        assert local.hub.record(run.model_id)["checkpoint_epoch"] == 0

        again = Session(run.model_id, outbox_dir=tmp_path / "outbox", **options)
        try:
            assert again.plan.kind == "resume" and again.plan.resume_epoch == 1
            # A new process may upload at once: the kept epoch 1 goes before the download.
            assert again.flush(timeout=60)
            assert local.hub.record(run.model_id)["checkpoint_epoch"] == 1
            path = again.download_weights(progress=False)
            assert path is not None
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(epoch_one).digest()
            assert again.plan.resume_epoch == 2 and again.record["checkpoint_epoch"] == 1
            again.start()
            again.log_metrics({"loss": 0.25})  # numbered after the newer checkpoint
            assert again.flush(timeout=60)
            assert sorted(int(row["epoch"]) for row in local.hub.metrics(run.model_id)) == [0, 1, 2]
        finally:
            again.close()
