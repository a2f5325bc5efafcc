import pathlib
import random
from typing import get_args

import pytest

from hubfsm.core.engine import Core
from hubfsm.core.identifier import Identifier, parse_identifier
from hubfsm.core.machine import (
    EVENTS,
    LEGAL,
    STATES,
    TRAITS,
    TRANSITIONS,
    Event,
    SessionMachine,
    to_mermaid,
)
from hubfsm.core.values import Saved, Send, Wait
from hubfsm.errors import IllegalEventError
from hubfsm.transport import Response

from .test_engine import BEST, FILE, MODEL, drive, ok

DOCS = pathlib.Path(__file__).parents[3] / "docs" / "state-machine.md"


def machine_in(state):
    """A machine brought to ``state`` from its start by legal events only (a shortest way)."""
    ways = {"unparsed": []}
    frontier = ["unparsed"]
    while frontier:
        source = frontier.pop(0)
        for event, sources, dest in TRANSITIONS:
            if source in sources and dest is not None and dest not in ways:
                ways[dest] = ways[source] + [event]
                frontier.append(dest)
    m = SessionMachine()
    for event in ways[state]:
        m.fire(event)
    assert m.state == state
    return m


def test_the_declared_table_matches_the_design():
    assert set(STATES) == {
        "unparsed",
        "resolved",
        "created",
        "loaded",
        "training",
        "resumable",
        "final_uploading",
        "done",
        "refused",
        "failed",
    }
    assert ("training", "finish", "final_uploading") in LEGAL
    assert ("final_uploading", "acknowledged", "done") in LEGAL
    assert ("resumable", "resume", "training") in LEGAL
    # A refusal mid-run stops sending, not recording; failed is for errors at open only.
    for source in ("training", "resumable", "final_uploading"):
        assert (source, "refuse", "refused") in LEGAL
    for event in ("epoch_end", "checkpoint", "finish", "interrupt"):
        assert ("refused", event, "refused") in LEGAL
    assert not any(
        dest == "failed" and src != "resolved" and src != "unparsed" for src, _, dest in LEGAL
    )


def test_the_traits_of_each_state_agree_with_its_transitions():
    assert set(TRAITS) == set(STATES)
    for state in STATES:
        m = machine_in(state)
        traits = TRAITS[state]
        assert m.traits is traits
        # It keeps the trainer's events exactly where epochs, weights and finish are legal.
        assert traits.records == all(m.allows(e) for e in ("epoch_end", "checkpoint", "finish"))
        assert traits.terminal == (not any(m.allows(e) for e in EVENTS))
        assert not (traits.terminal and traits.sends)
        assert not traits.heartbeats or traits.sends
        assert (m.records, m.sends, m.heartbeats, m.settled) == (
            traits.records,
            traits.sends,
            traits.heartbeats,
            traits.settled,
        )
    assert [s for s in STATES if TRAITS[s].records] == ["training", "refused"]
    assert not TRAITS["refused"].sends and TRAITS["refused"].settled


def test_a_whole_happy_path():
    changes = []
    m = SessionMachine(lambda *t: changes.append(t))
    for event in ("parse", "load", "start", "epoch_end", "checkpoint", "finish", "acknowledged"):
        m.fire(event)
    assert m.state == "done"
    assert all(change in LEGAL for change in changes)


def test_an_opening_fails_by_its_own_event():
    m = SessionMachine()
    m.fire("parse")
    assert m.fire("fail") == "failed"
    assert SessionMachine().fire("fail") == "failed"


@pytest.mark.parametrize(
    "state_path,event",
    [
        ((), "start"),
        (("parse",), "epoch_end"),
        (("parse", "load", "start", "finish"), "epoch_end"),
        (("parse", "load", "start", "finish", "acknowledged"), "refuse"),
        (("parse", "load", "start", "refuse"), "acknowledged"),
        (("parse", "create", "start", "interrupt"), "finish"),
    ],
)
def test_an_illegal_event_names_state_and_event(state_path, event):
    m = SessionMachine()
    for e in state_path:
        m.fire(e)
    before = m.state
    with pytest.raises(IllegalEventError) as info:
        m.fire(event)
    assert info.value.state == before and info.value.event == event
    assert before in str(info.value) and event in str(info.value)
    assert m.state == before


def test_every_state_and_event_pair_is_legal_exactly_when_declared():
    for state in STATES:
        for event in EVENTS:
            m = machine_in(state)
            declared = any(state in sources for name, sources, _ in TRANSITIONS if name == event)
            assert m.allows(event) == declared
            if declared:
                m.fire(event)
            else:
                with pytest.raises(IllegalEventError):
                    m.fire(event)


def test_the_docs_diagram_is_generated_from_the_declaration():
    text = DOCS.read_text()
    assert "```mermaid\n" + to_mermaid() + "```" in text, (
        "docs/state-machine.md is stale: run python -m tools.docs_gen"
    )


def test_the_diagram_draws_one_arrow_per_pair_of_states():
    # Mermaid lays parallel arrows on top of each other, and their labels with them
    # ("load (errcreate (error)"): one arrow per pair, naming all its events.
    arrows = [line.split(":")[0].strip() for line in to_mermaid().splitlines()[1:]]
    assert len(arrows) == len(set(arrows))
    assert "    resolved --> failed: fail (cannot open)" in to_mermaid().splitlines()


# -- every row of the table is a path of the core, and the core fires no other event ----


def test_the_declared_events_are_the_events_of_the_table():
    # ``fire`` takes an ``Event``, so a type checker rejects an event outside the Literal;
    # here the Literal and the table name the same events, none spare on either side.
    assert set(get_args(Event)) == {row[0] for row in TRANSITIONS} == set(EVENTS)


def _core(fired, **kwargs):
    return Core(rng=random.Random(0), on_change=lambda *change: fired.add(change), **kwargs)


def _answer(core, response, now=0.0):
    send = core.poll(now)
    assert isinstance(send, Send), send
    core.receive(send.op_id, response, now=now)
    return send


def _opened(fired, *, create=False):
    core = _core(fired)
    if create:
        core.open(parse_identifier("yolov8n.yaml"), create={}, now=0.0)
        _answer(core, ok({"id": MODEL}))
    else:
        core.open(parse_identifier(MODEL), now=0.0)
        _answer(core, ok({"id": MODEL, "status": "new"}))
    return core


def _kept_metrics():
    return Saved(metrics=((0, '{"loss": 1.0}'),))


def test_every_row_of_the_table_is_fired_by_a_path_of_the_core():
    fired = set()
    refused = Response(401, {"success": False, "message": "key revoked", "data": {}})

    # Opening: an identifier HUB cannot open, a refused load, a load, a create.
    _core(fired).open(Identifier(project="owner/project", run_name="train"), now=0.0)
    gone = _core(fired)
    gone.open(parse_identifier(MODEL), now=0.0)
    _answer(gone, Response(404, {"success": False, "message": "no such model", "data": {}}))

    # A whole run: epochs, weights, an interruption and a resume, an interrupted
    # final upload (its deadline passed) resumed, and the final acknowledged.
    core = _opened(fired, create=True)
    core.start(now=0.0)
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    core.checkpoint(0, FILE, is_best=True, now=0.0)
    core.interrupt(now=1.0)
    core.resume(now=2.0)
    core.finish(0, BEST, map50_95=0.5, now=3.0, timeout=1.0)
    assert isinstance(core.poll(10.0), Wait) and core.state == "resumable"
    core.resume(now=11.0)
    core.finish(0, BEST, map50_95=0.5, now=12.0)
    drive(core, 12.0)
    assert core.state == "done"

    # A refusal in every state that sends, then every trainer event while refused.
    for before in ("created", "loaded"):
        core = _opened(fired, create=before == "created")
        core.restore(_kept_metrics(), now=0.0)
        _answer(core, refused)
        assert core.state == "refused"
    core.start(now=1.0)
    core.epoch_end(1, {"loss": 0.5}, now=1.0)
    core.checkpoint(1, FILE, is_best=False, now=1.0)
    core.interrupt(now=1.0)
    core.resume(now=1.0)
    core.finish(1, BEST, map50_95=0.5, now=1.0)
    for stop in ("interrupt", "finish"):
        core = _opened(fired)
        core.start(now=0.0)
        core.epoch_end(0, {"loss": 1.0}, now=0.0)
        if stop == "interrupt":
            core.interrupt(now=0.0)
        else:
            core.finish(0, BEST, map50_95=0.5, now=0.0)
        drive(core, 0.0, lambda send: refused if send.channel == "metrics" else ok())
        assert core.state == "refused"
    core = _opened(fired)
    core.start(now=0.0)
    core.epoch_end(0, {"loss": 1.0}, now=0.0)
    drive(core, 0.0, lambda send: refused if send.channel == "metrics" else ok())
    assert core.state == "refused"

    assert fired == LEGAL, f"rows never fired: {sorted(LEGAL - fired)}"
