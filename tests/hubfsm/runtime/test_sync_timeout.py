"""``hubfsm sync --timeout``: the seconds it spends on each model, opening it included."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

import hubfsm
from hubfsm.runtime.sync import sync
from tests.transports.test_hostile import KEY, MODEL, reply, root_of, serve


@pytest.mark.slow  # sync waits out its timeout against a hub that never lets it in
def test_sync_spends_its_timeout_on_a_model_the_hub_will_not_open(tmp_path: Path) -> None:
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"w" * 100)
    nowhere = "http://127.0.0.1:9"
    with hubfsm.Session(MODEL, api_key=KEY, api_root=nowhere, outbox_dir=tmp_path / "o",
                        offline=True) as s:  # fmt: skip
        s.log_metrics({"loss": 1.0}, epoch=0)
        s.save_checkpoint(weights, epoch=0)
    # Busy: every request, the model's GET included, answers 429.
    with serve(lambda h: reply(h, 429, b"{}")) as server:
        out = io.StringIO()
        started = time.monotonic()
        status = sync(tmp_path / "o", api_key=KEY, hub=root_of(server), timeout=3.0, out=out)
        took = time.monotonic() - started
    said = out.getvalue()
    assert status == 1 and "did not load or create the model within 3s" in said, said
    assert "last failure: 429" in said and "Its records stay in" in said, said
    # Before, opening the model alone waited 120 s, whatever --timeout said.
    assert took < 8.0, took
