"""Kill a process that writes an outbox, mid-transaction, many times: it always opens whole."""

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubfsm.durable.outbox import Outbox

pytestmark = pytest.mark.slow  # a kill loop: processes killed mid-transaction

WRITER = Path(__file__).parent / "outbox_writer.py"
MODEL = "P" * 20


def check(root):
    outbox = Outbox.open(MODEL, root)
    try:
        db = sqlite3.connect(root / MODEL / "outbox.sqlite3")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        saved = outbox.load()
        queued = [e for e, _ in saved.metrics]
        in_ops = [e for op in saved.ops for e in op.payload]
        acked = set()
        for op_key in range(1, outbox.journal_seq + 1):
            if op_key % 5 == 4 and op_key - 2 >= 1:
                acked.update(range((op_key - 2) * 3 - 3, (op_key - 2) * 3))
        everything = queued + in_ops + sorted(acked)
        assert len(everything) == len(set(everything)), "an epoch is in two places"
        if everything:
            assert sorted(everything) == list(range(max(everything) + 1)), "an epoch is missing"
            assert max(everything) == outbox.journal_seq * 3 + 2
        return outbox.journal_seq
    finally:
        outbox.close()


def test_the_outbox_survives_kills_mid_transaction(tmp_path):
    rng = random.Random(7)
    progress = []
    for _ in range(30):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
        # Two transactions are in; the kill lands a random while later, mid-transaction.
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        progress.append(check(tmp_path))
    assert progress == sorted(progress) and progress[-1] > progress[0] > 0
