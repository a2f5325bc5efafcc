"""Closing right after the trainer's last call: the worker stops only once it took that call in.

The worker takes the inbox in, then looks whether the session is closing. A close that
lands between the two must not end it with the trainer's last epoch still in the inbox:
the hub answers, the close has its seconds to send, and the epoch must go.
"""

import threading
import time

import hubfsm
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


def test_metrics_logged_as_the_worker_takes_the_inbox_in_go_out_with_the_close(
    hub, tmp_path, monkeypatch
):
    model_id = new_model(hub)
    session = hubfsm.Session(
        model_id, transport=InMemoryTransport(hub, KEY), config=FAST, outbox_dir=tmp_path
    )
    session.start()
    shell = session._shell
    real_drain = shell.driver.drain
    armed, paused = threading.Event(), threading.Event()

    def drain(*args, **kwargs):
        real_drain(*args, **kwargs)
        if armed.is_set() and threading.current_thread() is not threading.main_thread():
            armed.clear()
            paused.set()
            # The worker holds here, its inbox just taken in, until the close has begun:
            # as a worker descheduled at that point on a loaded machine would.
            deadline = time.monotonic() + 10.0
            while shell._stop_at is None and time.monotonic() < deadline:
                time.sleep(0.001)

    monkeypatch.setattr(shell.driver, "drain", drain)
    armed.set()
    shell.wake_up()
    assert paused.wait(10.0)
    session.log_metrics({"loss": 1.0}, epoch=0)
    session.close()
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0]
    assert session.pending() == {"metrics": 0, "checkpoint": 0, "final": 0}
