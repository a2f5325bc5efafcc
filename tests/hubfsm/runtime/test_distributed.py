from __future__ import annotations

import sys
import types

import pytest
import structlog

import hubfsm
from hubfsm.runtime.opener import NullSession, global_rank, is_main_process
from hubfsm.runtime.opener import open as hub_open  # not the builtin
from tests.support import KEY
from transports.memory import InMemoryTransport

MODEL_ID = "A" * 20


class Refusing(InMemoryTransport):
    """Fails the test if any request is sent."""

    def send(self, request):
        raise AssertionError(f"a request was sent: {request.method} {request.path}")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    # Whatever an earlier test imported, rank detection here starts from no torch.
    monkeypatch.delitem(sys.modules, "torch.distributed", raising=False)


def fake_dist(*, available=True, initialized=True, rank=0):
    dist = types.ModuleType("torch.distributed")
    dist.is_available = lambda: available
    dist.is_initialized = lambda: initialized
    dist.get_rank = lambda: rank
    return dist


def test_no_launcher_means_rank_zero():
    assert global_rank() == 0 and is_main_process()


@pytest.mark.parametrize(("value", "rank"), [("0", 0), ("1", 1), ("7", 7), ("-1", 0), (" 2 ", 2)])
def test_rank_comes_from_the_environment(monkeypatch, value, rank):
    monkeypatch.setenv("RANK", value)
    assert global_rank() == rank


def test_a_garbled_rank_is_ignored_with_a_warning(monkeypatch):
    monkeypatch.setenv("RANK", "one")
    with structlog.testing.capture_logs() as logs:
        assert global_rank() == 0
    assert [e["event"] for e in logs] == ["distributed.bad_rank"]


def test_local_rank_alone_does_not_decide(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert global_rank() == 0


def test_an_initialized_process_group_gives_the_rank(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.distributed", fake_dist(rank=3))
    assert global_rank() == 3
    monkeypatch.setitem(sys.modules, "torch.distributed", fake_dist(initialized=False, rank=3))
    assert global_rank() == 0
    monkeypatch.setitem(sys.modules, "torch.distributed", fake_dist(available=False, rank=3))
    assert global_rank() == 0


def test_the_environment_wins_over_the_process_group(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.distributed", fake_dist(rank=3))
    monkeypatch.setenv("RANK", "0")
    assert global_rank() == 0


def test_explicit_environment(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    assert global_rank({"RANK": "2"}) == 2
    assert global_rank({}) == 0


def test_other_ranks_get_a_null_session_and_send_nothing(monkeypatch, tmp_path, hub):
    monkeypatch.setenv("RANK", "1")
    with hub_open(MODEL_ID, transport=Refusing(hub, KEY), epochs=3) as run:
        assert isinstance(run, NullSession) and run.rank == 1
        assert run.state == "inactive" and run.model_id is None and run.record == {}
        run.start()
        run.log_metrics({"loss": 1.0})
        run.save_checkpoint(tmp_path / "nothing-here.pt", epoch=0, is_best=True)
        run.finish(tmp_path / "nothing-here.pt", map50_95=0.5)
        assert run.flush(timeout=0) is True
        assert run.pending() == {"metrics": 0, "checkpoint": 0, "final": 0}
        assert run.stats()["epochs_acknowledged"] == 0
        assert run.resume_url is None and run.outbox_dir is None
    run.close()
    assert hub.models() == [] and not any(hub.audit().requests.values())


def test_other_ranks_still_reject_a_bad_identifier(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(hubfsm.IdentifierError):
        hub_open("no/such thing")


def test_an_exception_propagates_through_a_null_session(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(KeyError), hub_open("yolov8n.yaml"):
        raise KeyError("boom")


@pytest.mark.parametrize("rank", ["0", None])
def test_rank_zero_or_no_rank_gets_a_real_session(monkeypatch, rank, hub):
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    run = hub_open("yolov8n.yaml", transport=InMemoryTransport(hub, KEY))
    try:
        assert isinstance(run, hubfsm.Session) and run.state == "training"
        assert len(hub.models()) == 1
    finally:
        run.close()
