"""Ids from the hub are checked before they name anything; keys never follow a seed."""

import random

import pytest

import hubfsm
from hubfsm.core import protocol
from hubfsm.core.config import CoreConfig, seeded_nonce
from hubfsm.core.engine import Core
from hubfsm.core.identifier import parse_identifier
from hubfsm.core.values import Send
from hubfsm.errors import HubError
from hubfsm.transport import Response
from tests.support import FAST, KEY
from transports.memory import InMemoryTransport

MODEL = "A" * 20


def ok(data, origin=""):
    return Response(200, {"success": True, "message": "", "data": data}, origin=origin)


BAD_IDS = [
    "/some/dir",
    "../../x",
    "..",
    "",
    "A" * 19,
    "A" * 21,
    "A" * 19 + "/",
    "A" * 19 + "\u00e9",
    "A" * 19 + "\n",
    12345678901234567890,
    None,
    ["A" * 20],
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_anything_but_twenty_ascii_letters_and_digits_is_a_protocol_error(bad):
    response = ok({"id": bad}, origin="https://hub.example")
    with pytest.raises(protocol.HubProtocolError) as info:
        protocol.hub_id(bad, what="model id", response=response, channel="create")
    error = info.value
    assert isinstance(error, HubError) and error.channel == "create" and error.status == 200
    assert "https://hub.example" in str(error)
    if isinstance(bad, str) and bad:
        assert repr(bad[:16]) in str(error)  # shown escaped, and cut short


def test_a_long_bad_id_is_cut_short_in_the_message():
    bad = "/" + "x" * 500
    with pytest.raises(protocol.HubProtocolError) as info:
        protocol.hub_id(bad, what="model id", response=ok({}), channel="create")
    assert "x" * 40 not in str(info.value) and "(501 characters)" in str(info.value)


def created(core, data):
    core.open(parse_identifier("yolov8n.yaml"), create={}, now=0.0)
    send = core.poll(0.0)
    assert isinstance(send, Send) and send.request.path == "/v1/models"
    core.receive(send.op_id, ok(data), now=0.0)
    return core


@pytest.mark.parametrize("bad", ["/some/dir", "../../x", None])
def test_a_created_model_with_a_bad_id_fails_the_session(bad):
    core = created(Core(rng=random.Random(0)), {"id": bad})
    assert core.state == "failed" and core.model_id is None
    assert isinstance(core.error, protocol.HubProtocolError)


def test_a_loaded_record_must_be_the_model_asked_for():
    for record_id, state in ((MODEL, "loaded"), ("B" * 20, "failed"), ("../x", "failed")):
        core = Core(rng=random.Random(0))
        core.open(parse_identifier(MODEL), now=0.0)
        send = core.poll(0.0)
        core.receive(send.op_id, ok({"id": record_id, "status": "new"}), now=0.0)
        assert core.state == state, record_id
        if state == "failed":
            assert isinstance(core.error, protocol.HubProtocolError)


def test_a_bad_agent_id_is_not_adopted():
    core = created(Core(rng=random.Random(0)), {"id": MODEL})
    core.start(now=0.0)
    beat = core.poll(0.0)
    assert beat.channel == "heartbeat"
    core.receive(beat.op_id, ok({"agentId": "../../agent"}), now=0.0)
    assert core.agent_id is None and core.state == "training"
    assert "not a hub id" in (core.last_failure or "")


def first_key(config=None, seed=0):
    core = created(Core(config, rng=random.Random(seed)), {"id": MODEL})
    core.start(now=0.0)
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    for _ in range(5):
        action = core.poll(10.0)
        if isinstance(action, Send) and action.channel == "metrics":
            return action.request.idempotency_key
        core.receive(action.op_id, ok({}), now=10.0)
    raise AssertionError("no metrics request")


def test_keys_differ_between_runs_with_the_same_seed():
    assert first_key() != first_key()


def test_a_simulation_may_seed_its_keys():
    seeded = CoreConfig(nonce=seeded_nonce)
    assert first_key(seeded) == first_key(seeded)
    assert first_key(seeded.scaled(0.5)) == first_key(seeded)  # scaling keeps the source


def test_two_seeded_runs_create_two_models(hub):
    ids = []
    for _ in range(2):
        session = hubfsm.Session(
            "yolov8n.yaml", transport=InMemoryTransport(hub, KEY), seed=0, config=FAST, outbox=False
        )
        ids.append(session.model_id)
        session.close()
    assert ids[0] != ids[1], "the second run got the first run's model back"
