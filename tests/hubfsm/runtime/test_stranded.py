"""A new model's session names the earlier runs whose outboxes still hold records.

A script restarted after a kill creates a new model from its ``.yaml``; before, what
the killed run kept waited in its outbox with nothing said, for a ``hubfsm sync``
nobody knew to run.
"""

import hubfsm
from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from tests.platform_fake import PLATFORM_KEY, FakePlatform
from tests.support import FAST, KEY, new_model
from transports.memory import HandlerTransport, InMemoryTransport

PLATFORM_FAST = CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001)


def left_behind(hub, root, epochs=3):
    """A run that kept its epochs in its outbox and never sent them (offline here)."""
    model_id = new_model(hub)
    with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                        outbox_dir=root, offline=True) as s:
        for epoch in range(epochs):
            s.log_metrics({"loss": 1.0}, epoch=epoch)
    return model_id


def new_run(hub, root):
    return hubfsm.Session("yolov8n.yaml", transport=InMemoryTransport(hub, KEY), config=FAST,
                          outbox_dir=root, train_args={"data": "coco8.yaml"})


def test_a_new_model_names_what_an_earlier_run_left_and_the_command_that_sends_it(
    hub, tmp_path, capsys
):
    earlier = left_behind(hub, tmp_path)
    capsys.readouterr()
    with new_run(hub, tmp_path) as s:
        s.log_metrics({"loss": 0.5})
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "earlier run" in line]
    assert len(lines) == 1, err
    assert f"model {earlier}: 3 epochs of metrics" in lines[0]
    assert f"hubfsm sync {tmp_path}`" in lines[0]
    assert s.model_id not in err  # the new run's own outbox is not named


def test_no_line_without_records_waiting_or_for_a_known_model(hub, tmp_path, capsys):
    with new_run(hub, tmp_path) as s:  # an empty root
        pass
    model_id = left_behind(hub, tmp_path, epochs=0)  # an outbox with nothing to send
    new_run(hub, tmp_path).close()
    earlier = left_behind(hub, tmp_path)
    # A known model's session sends its own outbox first; it does not speak of others.
    hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                   outbox_dir=tmp_path).close()
    assert "earlier run" not in capsys.readouterr().err
    assert s.model_id != earlier


def test_an_outbox_a_running_session_holds_is_not_named(hub, tmp_path, capsys):
    running = hubfsm.Session(new_model(hub), transport=InMemoryTransport(hub, KEY),
                             config=FAST, outbox_dir=tmp_path, offline=True)
    running.start()
    running.log_metrics({"loss": 1.0})
    try:
        new_run(hub, tmp_path).close()
        assert "earlier run" not in capsys.readouterr().err
    finally:
        running.close()


def test_a_platform_run_does_not_name_hub_outboxes_whose_key_it_would_misname(
    hub, tmp_path, capsys
):
    # The printed command takes the key of the session's dialect (ULTRALYTICS_API_KEY
    # for Platform): a HUB outbox sent with it would be refused.
    left_behind(hub, tmp_path)
    capsys.readouterr()
    platform = hubfsm.Session("owner/my-project", protocol="platform", api_key=PLATFORM_KEY,
                              transport=HandlerTransport(FakePlatform()), outbox_dir=tmp_path,
                              config=PLATFORM_FAST, train_args={"name": "run1", "epochs": 1})
    platform.close()
    assert "earlier run" not in capsys.readouterr().err
