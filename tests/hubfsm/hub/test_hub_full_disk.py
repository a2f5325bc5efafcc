"""A local hub whose data directory lies on a small real tmpfs that fills up, then frees.

The hub runs in a mount namespace of its own (``unshare --mount``), with its data
directory copied onto a tmpfs mounted only for it; ``nsenter`` frees the disk later.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import hubfsm
from tests.services import restore_sigint, served_at, tmpfs_refusal
from tests.support import FAST

ROOT = Path(__file__).parents[3]


@pytest.mark.slow
def test_a_hub_whose_disk_fills_says_so_and_takes_everything_once_it_frees(
    tmp_path, capsys
):
    refusal = tmpfs_refusal(tmp_path / "probe", "nsenter")
    if refusal is not None:
        pytest.skip(refusal)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    made = tmp_path / "made"
    subprocess.run(
        [sys.executable, "-m", "hubfsm", "hub", "keys", "add", "--data", str(made)],
        env=env, capture_output=True, timeout=60, check=True,
    )
    key = (made / "api_key").read_text().strip()
    disk = tmp_path / "disk"
    disk.mkdir()
    # 4 MiB, 3 of them taken: a megabyte of weights cannot be staged, a metric still can.
    command = (
        f"mount -t tmpfs -o size=4m,mode=0700 tmpfs {disk} && cp -a {made}/. {disk}/ && "
        f"head -c 3200000 /dev/zero > {disk}/filler && "
        f"exec {sys.executable} -m hubfsm hub serve -v --data {disk} --port 0"
    )
    log = (tmp_path / "hub.log").open("w")
    hub = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT,
        preexec_fn=restore_sigint,  # noqa: PLW1509 - only resets one signal
    )
    try:
        # The hub picks its port as it binds it, and says which.
        url = served_at(hub)
        weights = tmp_path / "last.pt"
        weights.write_bytes(hashlib.sha256(b"w").digest() * 32768)  # 1 MiB
        with hubfsm.Session("yolov8n.yaml", api_root=url, web_root=url, api_key=key,
                            config=FAST, outbox_dir=tmp_path / "outbox") as s:
            for epoch in range(3):
                s.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            s.save_checkpoint(weights, epoch=2)
            lost, deadline = "", time.monotonic() + 60
            while "lost the hub" not in lost:
                assert time.monotonic() < deadline, f"the full disk was never said: {lost}"
                time.sleep(0.2)
                lost += capsys.readouterr().err
            subprocess.run(
                ["nsenter", "-t", str(hub.pid), "-m", "rm", f"{disk}/filler"], check=True,
                timeout=30,
            )
            s.finish(weights, map50_95=0.5, timeout=60)
            model_id = s.model_id
        err = lost + capsys.readouterr().err
        record = requests.get(f"{url}/v1/models/{model_id}", headers={"x-api-key": key},
                              timeout=10).json()["data"]
        assert record["status"] == "trained" and record["has_best_weights"]
        assert record["metrics_epoch"] == 2
    finally:
        hub.send_signal(signal.SIGINT)
        hub.wait(30)
        hub.stdout.close()
        log.close()
    # The trainer heard why, once; before, a full disk was "500 internal error".
    (line,) = [line for line in err.splitlines() if "lost the hub" in line]
    assert "507 the hub's disk is full" in line, err
    assert err.count("is back after") == 1, err
    hub_log = (tmp_path / "hub.log").read_text()
    # One line for the person running the hub, not one per retry, and no other error.
    assert hub_log.count("hub.disk_full") == 1, hub_log
    assert "hub.error" not in hub_log and "Traceback" not in hub_log
