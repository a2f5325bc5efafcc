"""Where ``hubfsm sync`` sends an outbox, and the commands hubfsm prints for it."""

from pathlib import Path

import pytest

from hubfsm.core.platform import PLATFORM_API_ROOT
from hubfsm.durable.layout import HubRoots
from hubfsm.durable.survey import OutboxInfo
from hubfsm.errors import HubfsmError
from hubfsm.runtime.console import keyed_sync_command, same_hub
from hubfsm.runtime.sync import target

MODEL = "M" * 20
LOCAL = "http://127.0.0.1:8000"
PUBLIC = "https://api.ultralytics.com"


def info(api_root=None):
    hub = HubRoots(api_root, api_root) if api_root else None
    return OutboxInfo(Path("/o") / MODEL, MODEL, {}, False, hub=hub)


def test_an_outbox_goes_to_the_hub_it_records():
    assert target(info(LOCAL), hub=None, api_root=None) == LOCAL
    assert target(info(LOCAL), hub=None, api_root="http://127.0.0.1:8000/") == LOCAL


def test_hub_given_on_the_command_line_wins():
    assert target(info(LOCAL), hub=PUBLIC, api_root=None) == PUBLIC


def test_an_outbox_without_a_record_goes_to_the_environments_hub_or_the_public_one():
    assert target(info(), hub=None, api_root=LOCAL) == LOCAL
    assert target(info(), hub=None, api_root=None) == PUBLIC


def test_another_hub_in_the_environment_is_refused_with_the_commands_that_work():
    with pytest.raises(HubfsmError) as refused:
        target(info(LOCAL), hub=None, api_root="http://127.0.0.1:9000")
    text = str(refused.value)
    assert f"made for the hub at {LOCAL}" in text and "ULTRALYTICS_HUB_API" in text
    assert f"`hubfsm sync --hub {LOCAL} /o/{MODEL}`" in text
    assert "`--hub http://127.0.0.1:9000`" in text


def test_same_hub_compares_scheme_host_and_port():
    assert same_hub("http://127.0.0.1:8000/", "HTTP://127.0.0.1:8000")
    assert not same_hub("http://127.0.0.1:8000", "http://127.0.0.1:8001")
    assert not same_hub("http://localhost:8000", "https://localhost:8000")
    assert same_hub(PUBLIC, "https://api.ultralytics.com/")


def test_the_printed_sync_command_names_a_local_hub_and_takes_the_key_from_the_environment():
    where = Path("/tmp/my outbox") / MODEL
    assert keyed_sync_command(where, LOCAL) == f"HUB_API_KEY=... hubfsm sync --hub {LOCAL} '{where}'"
    assert keyed_sync_command(where, PUBLIC) == f"HUB_API_KEY=... hubfsm sync '{where}'"
    assert keyed_sync_command(where, None) == f"HUB_API_KEY=... hubfsm sync '{where}'"


def test_the_printed_sync_command_of_a_platform_outbox_names_the_platform_key():
    where = Path("/o") / MODEL
    local = keyed_sync_command(where, LOCAL, "platform")
    assert local == f"ULTRALYTICS_API_KEY=... hubfsm sync --hub {LOCAL} {where}"
    public = keyed_sync_command(where, PLATFORM_API_ROOT, "platform")
    assert public == f"ULTRALYTICS_API_KEY=... hubfsm sync {where}"


def test_the_waiting_line_gives_the_sync_command_as_every_other_line_does(
    hub, tmp_path, monkeypatch
):
    # Before, finishing's "waiting up to ..." line said `hubfsm sync DIR`, without the
    # hub (left out when ULTRALYTICS_HUB_API named it) or the key: copied into another
    # shell, it sent nowhere. Every other line gives the command that works as printed.
    import hubfsm
    from hubfsm.runtime.console import waiting_line
    from tests.support import KEY, new_model
    from transports.memory import InMemoryTransport

    monkeypatch.setenv("ULTRALYTICS_HUB_API", LOCAL)
    session = hubfsm.Session(
        new_model(hub), transport=InMemoryTransport(hub, KEY), api_root=LOCAL, outbox_dir=tmp_path
    )
    try:
        line = waiting_line(session._core, f"the hub at {LOCAL}", 3600, session.outbox_dir, LOCAL)
    finally:
        session.close()
    assert f"`{keyed_sync_command(session.outbox_dir, LOCAL)}`" in line
    assert f"`HUB_API_KEY=... hubfsm sync --hub {LOCAL} " in line
