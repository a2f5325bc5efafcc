"""A line for people starts a line of its own, even with a progress bar mid-line.

ultralytics draws its epoch bar on standard error with carriage returns and no newline
until the epoch ends. A SIGTERM mid-epoch (or the hub lost mid-epoch) printed hubfsm's
line glued to the bar: ``3/6 ... 1/2 [00:02<00:02, 2.20s/it]hubfsm: model ...``.
"""

import sys

from tqdm import tqdm

import hubfsm
from hubfsm.runtime.console import Console
from tests.support import KEY, new_model
from transports.memory import InMemoryTransport


def test_the_line_kept_at_close_starts_after_an_open_bar(hub, tmp_path, capsys):
    model_id = new_model(hub)
    session = hubfsm.Session(
        model_id, transport=InMemoryTransport(hub, KEY), outbox_dir=tmp_path, offline=True
    )
    session.start()
    session.log_metrics({"train/loss": 1.0}, epoch=0)
    bar = tqdm(total=2, file=sys.stderr, ascii=True)
    try:
        bar.update(1)  # the cursor is now after the bar, mid-line
        session.close()
    finally:
        bar.close()
    err = capsys.readouterr().err
    assert "1 epoch of metrics not on the hub yet" in err
    assert "\nhubfsm: model " in err
    assert "]hubfsm" not in err


def test_a_line_said_during_training_starts_after_an_open_bar(capsys):
    bar = tqdm(total=2, file=sys.stderr, ascii=True)
    try:
        bar.update(1)
        Console("the hub at http://127.0.0.1:8000").say("lost the hub")
    finally:
        bar.close()
    err = capsys.readouterr().err
    assert "\nhubfsm: lost the hub\n" in err


def test_without_a_bar_a_line_has_no_blank_line_before_it(capsys):
    Console("the hub").say("lost the hub")
    assert capsys.readouterr().err == "hubfsm: lost the hub\n"
