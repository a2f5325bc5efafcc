from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from hubfsm.hub.calls import HubCall
from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore, Store
from hubfsm.hub.store_sqlite import SqliteStore
from hubfsm.hub.stored import ModelRecord, StoredReply
from tests.support import KEY

ROOT = Path(__file__).parents[3]


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(tmp_path)
    from hubfsm.hub.store_postgres import PostgresStore
    from hubfsm.hub.team import S3Objects

    database, objects = request.getfixturevalue("team")
    return PostgresStore(database, S3Objects(objects))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres+s3", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = _open(request.param, request, tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres+s3", marks=pytest.mark.slow)])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The stores whose transactions roll back (the memory store's writes cannot fail)."""
    made = _open(request.param, request, tmp_path)
    yield made
    made.close()


def record(model_id: str = "a" * 20, at: float = 1.0) -> ModelRecord:
    return ModelRecord(id=model_id, name="n", created_at=at, cfg="yolov8n.yaml", dataset="d")


def read(content: object) -> bytes:
    if isinstance(content, bytes):
        return content
    assert content is not None
    with content:  # type: ignore[attr-defined]
        return content.read()  # type: ignore[attr-defined,no-any-return]


def test_models_round_trip(store: Store) -> None:
    assert store.get_model("a" * 20) is None
    store.put_model(record("b" * 20, at=2.0))
    store.put_model(record("a" * 20, at=1.0))
    changed = attrs.evolve(record("a" * 20), status="training", epochs=5)
    store.put_model(changed)
    assert store.get_model("a" * 20) == changed
    assert [r.id for r in store.list_models()] == ["a" * 20, "b" * 20]
    assert store.delete_model("a" * 20) is True
    assert store.delete_model("a" * 20) is False
    assert [r.id for r in store.list_models()] == ["b" * 20]


def test_models_come_in_pages_newest_first_by_owner(store: Store) -> None:
    # Two models share a creation time: the id breaks the tie, so no page skips one.
    times = [1.0, 2.0, 2.0, 3.0, 4.0]
    for n, at in enumerate(times):
        owner = "alice" if n % 2 == 0 else "bob"
        store.put_model(attrs.evolve(record(chr(ord("a") + n) * 20, at=at), owner=owner))
    newest = [r.id[0] for r in sorted(store.list_models(), key=lambda r: (r.created_at, r.id))]
    newest.reverse()
    assert newest == ["e", "d", "c", "b", "a"]
    pages, before = [], None
    while True:
        page = store.page_models(2, before)
        if not page:
            break
        pages.append([r.id[0] for r in page])
        before = (page[-1].created_at, page[-1].id)
    assert pages == [["e", "d"], ["c", "b"], ["a"]]
    assert [r.id[0] for r in store.page_models(10, None, "alice")] == ["e", "c", "a"]
    assert [r.id[0] for r in store.page_models(1, (2.0, "c" * 20), "alice")] == ["a"]
    assert store.page_models(10, None, "nobody") == []


def test_a_runs_parameters_tags_and_notes_round_trip(store: Store) -> None:
    told = attrs.evolve(
        record(), params='{"lr0": 0.01, "name": "exp"}', tags=["seed=7", "sweep"], notes="why"
    )
    assert told.tags == ("seed=7", "sweep")  # kept as a tuple, however given
    store.put_model(told)
    assert store.get_model("a" * 20) == told
    assert store.list_models() == [told]


def test_metrics_upsert(store: Store) -> None:
    store.put_metrics("m", {2: '{"a": 2}', 0: '{"a": 0}'})
    store.put_metrics("m", {0: '{"a": 9}'})
    assert store.get_metrics("m") == [(0, '{"a": 9}'), (2, '{"a": 2}')]
    assert store.get_metrics("other") == []


@pytest.mark.parametrize("as_stream", [False, True])
def test_weights_stage_commit_replace(store: Store, as_stream: bool) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    staged = store.stage_weights(io.BytesIO(data) if as_stream else data)
    assert (staged.sha256, staged.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert store.weights_info("m", "last") is None
    assert store.open_weights("m", "last") is None
    store.commit_weights("m", "last", staged)
    store.discard_weights(staged)  # harmless after a commit
    info = store.weights_info("m", "last")
    assert info is not None and info.sha256 == staged.sha256 and info.size == len(data)
    assert read(store.open_weights("m", "last")) == data
    newer = store.stage_weights(b"newer")
    store.commit_weights("m", "last", newer)
    assert read(store.open_weights("m", "last")) == b"newer"
    assert store.weights_info("m", "best") is None


def test_discarded_weights_leave_nothing(store: Store) -> None:
    staged = store.stage_weights(b"abc")
    store.discard_weights(staged)
    assert store.weights_info("m", "last") is None
    if isinstance(store, SqliteStore):
        assert list((store.data_dir / "weights" / ".staging").iterdir()) == []


def test_an_epoch_keeps_the_time_its_metrics_first_came(store: Store) -> None:
    store.put_model(record())
    store.put_metrics("a" * 20, {0: '{"a": 1}', 1: '{"a": 2}'}, 10.0)
    store.put_metrics("a" * 20, {1: '{"a": 3}', 2: '{"a": 4}'}, 20.5)  # epoch 1 again
    store.put_metrics("a" * 20, {3: '{"a": 5}'})  # no time given: none noted
    assert store.metric_times("a" * 20) == {0: 10.0, 1: 10.0, 2: 20.5}
    assert dict(store.get_metrics("a" * 20))[1] == '{"a": 3}'
    assert store.metric_times("b" * 20) == {}
    store.delete_model("a" * 20)
    assert store.metric_times("a" * 20) == {}


def test_sqlite_metrics_kept_before_arrival_times_open_and_get_them(tmp_path: Path) -> None:
    import sqlite3

    tmp_path.mkdir(exist_ok=True)
    db = sqlite3.connect(tmp_path / "hub.sqlite3")
    db.execute(
        "CREATE TABLE metrics (model_id TEXT NOT NULL, epoch INTEGER NOT NULL, "
        "metrics TEXT NOT NULL, PRIMARY KEY (model_id, epoch))"
    )
    db.execute("INSERT INTO metrics VALUES ('m', 0, '{}')")
    db.commit()
    db.close()
    store = SqliteStore(tmp_path)
    assert store.get_metrics("m") == [(0, "{}")] and store.metric_times("m") == {}
    store.put_metrics("m", {0: "{}", 1: "{}"}, 5.0)
    assert store.metric_times("m") == {0: 5.0, 1: 5.0}  # an old epoch gets its first time
    store.close()


def test_replies(store: Store) -> None:
    assert store.get_reply("s") is None
    store.put_reply("s", StoredReply(200, {"success": True, "message": "", "data": {"id": "x"}}))
    assert store.get_reply("s") == StoredReply(
        200, {"success": True, "message": "", "data": {"id": "x"}}
    )
    store.put_reply("t", StoredReply(200, {"success": True}, "ab" * 32))
    assert store.get_reply("t") == StoredReply(200, {"success": True}, "ab" * 32)


def test_sqlite_replies_kept_before_digests_still_replay(tmp_path: Path) -> None:
    import sqlite3

    # A data directory as an older version left it: replies without the request's digest.
    tmp_path.mkdir(exist_ok=True)
    db = sqlite3.connect(tmp_path / "hub.sqlite3")
    db.execute("CREATE TABLE replies (scope TEXT PRIMARY KEY, status INTEGER, body TEXT)")
    db.execute("INSERT INTO replies VALUES ('old', 200, '{\"success\": true}')")
    db.commit()
    db.close()
    store = SqliteStore(tmp_path)
    assert store.get_reply("old") == StoredReply(200, {"success": True}, "")
    store.put_reply("new", StoredReply(200, {}, "cd" * 32))
    assert store.get_reply("new") == StoredReply(200, {}, "cd" * 32)
    store.close()
    reopened = SqliteStore(tmp_path)
    assert reopened.get_reply("new") == StoredReply(200, {}, "cd" * 32)
    reopened.close()


def test_transaction_rolls_back_on_error(durable_store: Store) -> None:
    store = durable_store
    with pytest.raises(RuntimeError), store.transaction():
        store.put_model(record())
        store.put_metrics("a" * 20, {0: "{}"})
        raise RuntimeError("boom")
    assert store.get_model("a" * 20) is None
    assert store.get_metrics("a" * 20) == []


def test_weights_committed_in_a_transaction_rolled_back_stay_as_they_were(
    durable_store: Store,
) -> None:
    store = durable_store
    store.commit_weights("m", "last", store.stage_weights(b"old"))
    newer = store.stage_weights(b"newer")
    with pytest.raises(RuntimeError), store.transaction():
        store.commit_weights("m", "last", newer)
        raise RuntimeError("the record's write failed")
    store.discard_weights(newer)  # as the hub does after any upload
    info = store.weights_info("m", "last")
    assert info is not None and info.sha256 == hashlib.sha256(b"old").hexdigest()
    assert read(store.open_weights("m", "last")) == b"old"
    # Discarded inside the transaction, as a Platform run's final weights are: the file
    # goes into place if it commits, and is gone if it does not.
    for fails in (True, False):
        newest = store.stage_weights(b"newest")
        with contextlib.suppress(RuntimeError), store.transaction():
            store.commit_weights("m", "last", newest)
            store.discard_weights(newest)
            if fails:
                raise RuntimeError("the record's write failed")
        assert read(store.open_weights("m", "last")) == (b"old" if fails else b"newest")
        if isinstance(store, SqliteStore):
            assert list((store.data_dir / "weights" / ".staging").iterdir()) == []


#: A process that commits a second ``last.pt`` and is SIGKILLed at the file's rename:
#: ``after`` the rename happened, or ``instead`` of it (after the digest's commit).
KILLED_AT_RENAME = """
import os, signal, sys
from hubfsm.hub import store_sqlite
store = store_sqlite.SqliteStore(sys.argv[1])
store.commit_weights("m", "last", store.stage_weights(b"first"))
real = os.replace
def replace(src, dst):
    if sys.argv[2] == "after":
        real(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)
store_sqlite.os.replace = replace
store.commit_weights("m", "last", store.stage_weights(b"second"))
"""


@pytest.mark.parametrize("when", ["after", "instead"])
def test_a_sqlite_hub_killed_at_a_weight_files_rename_keeps_file_and_digest_together(
    tmp_path: Path, when: str
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", KILLED_AT_RENAME, str(tmp_path), when],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    store = SqliteStore(tmp_path)
    try:
        found = store.read_weights("m", "last")
        assert found is not None
        info, content = found
        # The digest was committed before the kill: the file is the second one.
        assert read(content) == b"second"
        assert info.sha256 == hashlib.sha256(b"second").hexdigest()
        assert list((tmp_path / "weights" / ".staging").iterdir()) == []
    finally:
        store.close()


def test_a_sqlite_store_opened_beside_a_serving_one_leaves_its_uploads_alone(
    tmp_path: Path,
) -> None:
    # `hubfsm hub keys add` opens the store of a hub that is serving: what the hub is
    # receiving meanwhile must still go into place.
    serving = SqliteStore(tmp_path)
    staged = serving.stage_weights(b"arriving")
    beside = SqliteStore(tmp_path)
    beside.close()
    serving.commit_weights("m", "last", staged)
    serving.discard_weights(staged)
    found = serving.read_weights("m", "last")
    assert found is not None and read(found[1]) == b"arriving"
    serving.close()
    # Alone again, a store opened clears what uploads cut short left.
    (tmp_path / "weights" / ".staging" / "x.part").write_bytes(b"partial")
    SqliteStore(tmp_path).close()
    assert list((tmp_path / "weights" / ".staging").iterdir()) == []


def test_sqlite_survives_a_restart(tmp_path: Path) -> None:
    hub = Hub(SqliteStore(tmp_path), keys=[KEY])
    reply = hub.handle(
        HubCall("POST", "/v1/models", KEY, {"lineage": {"architecture": {"name": "yolov8n"}}})
    )
    model_id = reply.body["data"]["id"]
    body = {"type": "metrics", "metrics": {"0": '{"loss": 1.5}'}}
    first = hub.handle(HubCall("POST", f"/v1/models/{model_id}", KEY, body, idempotency_key="i"))
    hub.handle(
        HubCall(
            "POST",
            f"/v1/models/{model_id}/upload",
            KEY,
            None,
            {"type": "epoch", "epoch": "0", "isBest": "true"},
            "last.pt",
            io.BytesIO(b"ckpt"),
        )
    )
    hub.store.close()
    # A leftover of an upload cut short is cleaned up at the next open.
    (tmp_path / "weights" / ".staging" / "x.part").write_bytes(b"partial")

    again = Hub(SqliteStore(tmp_path), keys=[KEY])
    assert again.record(model_id)["has_last_weights"] is True  # type: ignore[index]
    assert again.metrics(model_id) == [{"epoch": 0, "metrics": {"loss": 1.5}}]
    found = again.weights(model_id, "last")
    assert found is not None
    assert read(found[1]) == b"ckpt"
    replay = again.handle(HubCall("POST", f"/v1/models/{model_id}", KEY, body, idempotency_key="i"))
    assert replay.body == first.body
    assert replay.headers == {"Idempotent-Replayed": "true"}
    assert again.audit().metrics_applied == {}
    assert list((tmp_path / "weights" / ".staging").iterdir()) == []
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()
    again.store.close()


def test_sqlite_delete_removes_files(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put_model(record())
    store.commit_weights("a" * 20, "best", store.stage_weights(b"w"))
    assert (tmp_path / "weights" / ("a" * 20) / "best.pt").exists()
    store.delete_model("a" * 20)
    assert not (tmp_path / "weights" / ("a" * 20)).exists()
    assert store.weights_info("a" * 20, "best") is None
    store.close()
