import pathlib

import pytest

from hubfsm.core.machine import (
    EVENTS,
    LEGAL,
    STATES,
    TRAITS,
    TRANSITIONS,
    SessionMachine,
    to_mermaid,
)
from hubfsm.errors import IllegalEventError

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
    assert set(STATES) == {"unparsed", "resolved", "created", "loaded", "training",
                           "resumable", "final_uploading", "done", "refused", "failed"}
    assert ("training", "finish", "final_uploading") in LEGAL
    assert ("final_uploading", "acknowledged", "done") in LEGAL
    assert ("resumable", "resume", "training") in LEGAL
    # A refusal mid-run stops sending, not recording; failed is for errors at open only.
    for source in ("training", "resumable", "final_uploading"):
        assert (source, "refuse", "refused") in LEGAL
    for event in ("epoch_end", "checkpoint", "finish", "interrupt"):
        assert ("refused", event, "refused") in LEGAL
    assert not any(dest == "failed" and src != "resolved" and src != "unparsed"
                   for src, _, dest in LEGAL)


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
            traits.records, traits.sends, traits.heartbeats, traits.settled
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


@pytest.mark.parametrize("state_path,event", [
    ((), "start"),
    (("parse",), "epoch_end"),
    (("parse", "load", "start", "finish"), "epoch_end"),
    (("parse", "load", "start", "finish", "acknowledged"), "refuse"),
    (("parse", "load", "start", "refuse"), "acknowledged"),
    (("parse", "create", "start", "interrupt"), "finish"),
])
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
