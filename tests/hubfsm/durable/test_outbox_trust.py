"""The outbox on disk is untrusted too: modes, paths, damage and what is deleted."""

import collections
import hashlib
import io
import os
import re
import stat

import pytest

import hubfsm
from hubfsm.cli.outboxes import status
from hubfsm.core import protocol
from hubfsm.core.values import EpochEnded, MetricsQueued
from hubfsm.durable.handover import stamp_of
from hubfsm.durable.journal import Journal
from hubfsm.durable.layout import DATABASE, OutboxDamaged
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.survey import find, inspect, set_aside, survey
from hubfsm.hub.store_sqlite import SqliteStore
from hubfsm.runtime.sync import sync
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport

MODEL = "M" * 20
OTHER = "N" * 20


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- 5. owner-only files --------------------------------------------------------------


def test_everything_an_outbox_creates_is_owner_only(tmp_path):
    os.umask(0o022)  # the usual umask, under which files come out 0644
    root = tmp_path / "fresh" / "root"
    ob = Outbox.open(MODEL, root)
    ob.apply([MetricsQueued(0, "{}")], journal_seq=1)  # the WAL file exists from here
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"weights")
    part = ob.snapshot(weights, name="last.pt", stamp=stamp_of(weights))
    assert part is not None
    journal = Journal(ob.directory / "journal", seq=1, inbox=collections.deque())
    journal.append_metrics(1, {"loss": 1.0})
    for directory in (root.parent, root, ob.directory, ob.files):
        assert mode(directory) == 0o700, directory
    db = ob.directory / DATABASE
    for path in (db, f"{db}-wal", f"{db}-shm", part.path, ob.directory / "lock", journal.path):
        assert mode(path) == 0o600, path
    journal.close()
    ob.close()


def test_an_outbox_left_world_readable_is_tightened_on_open(tmp_path):
    Outbox.open(MODEL, tmp_path).close()
    directory = tmp_path / MODEL
    os.chmod(directory, 0o755)
    os.chmod(directory / DATABASE, 0o644)
    Outbox.open(MODEL, tmp_path).close()
    assert mode(directory) == 0o700 and mode(directory / DATABASE) == 0o600


def test_the_local_hub_database_is_owner_only(tmp_path):
    os.umask(0o022)
    store = SqliteStore(tmp_path / "hub")
    try:
        assert mode(tmp_path / "hub") == 0o700
        assert mode(tmp_path / "hub" / "hub.sqlite3") == 0o600
    finally:
        store.close()


# --- 1. a model id never becomes a path, and only our own files are deleted -----------


# Model ids of both dialects may name an outbox: 8 to 64 ASCII letters and digits.
@pytest.mark.parametrize(
    "bad", ["/some/dir", "../../x", "..", "", "a" * 7, "a" * 65, "abc/defghijklmnopqr", "ab-cd_efgh"]
)
def test_an_id_that_is_not_a_model_id_names_no_outbox(tmp_path, bad):
    with pytest.raises(ValueError, match="not a model id"):
        Outbox.open(bad, tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_removing_an_outbox_deletes_only_what_it_created(tmp_path):
    ob = Outbox.open(MODEL, tmp_path)
    mine = ob.directory / "notes.txt"
    mine.write_text("the user's own file")
    also_mine = ob.files / "keep-me.txt"
    also_mine.write_text("not a snapshot")
    ob.close(remove=True)
    assert mine.read_text() == "the user's own file"
    assert also_mine.read_text() == "not a snapshot"
    assert not (ob.directory / DATABASE).exists()


def test_an_outbox_reached_through_a_link_is_not_deleted(tmp_path):
    victim = tmp_path / "victim"
    root = tmp_path / "root"
    root.mkdir()
    ob = Outbox.open(MODEL, victim)  # a real outbox elsewhere ...
    ob.close()
    os.symlink(victim / MODEL, root / MODEL)  # ... and the root's entry is a link to it
    Outbox.open(MODEL, root).close(remove=True)
    assert (victim / MODEL / DATABASE).exists()


def test_a_hub_that_answers_create_with_a_path_gets_a_protocol_error(tmp_path, hub):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")

    class Hostile(InMemoryTransport):
        def send(self, request):
            if request.method == "POST" and request.path == "/v1/models":
                return protocol.Response(200, {"data": {"id": str(victim)}})
            return super().send(request)

    with pytest.raises(protocol.HubProtocolError, match="not a hub id") as info:
        hubfsm.Session(
            "yolov8n.yaml",
            transport=Hostile(hub, KEY),
            config=FAST,
            outbox_dir=tmp_path / "root",
        )
    assert (victim / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert repr(str(victim)[:16]) in str(info.value)


# --- 7. a damaged outbox is named, set aside, and the others go on --------------------


def damaged_outbox(root, model_id):
    ob = Outbox.open(model_id, root)
    ob.apply([MetricsQueued(e, "{}") for e in range(50)], journal_seq=0)
    ob.close()
    db = root / model_id / DATABASE
    with open(db, "r+b") as f:
        f.truncate(os.path.getsize(db) // 2)
    for extra in ("-wal", "-shm"):
        if os.path.exists(f"{db}{extra}"):
            os.unlink(f"{db}{extra}")
    return root / model_id


def test_a_truncated_database_is_a_typed_error_naming_the_path(tmp_path):
    directory = damaged_outbox(tmp_path, MODEL)
    with pytest.raises(OutboxDamaged) as info:
        inspect(find(tmp_path))
    assert info.value.directory == directory and str(directory) in str(info.value)
    with pytest.raises(OutboxDamaged):
        Outbox.open(MODEL, tmp_path)
    assert "salvaged" in str(info.value)


def test_set_aside_renames_inside_the_root_and_find_skips_it(tmp_path):
    directory = damaged_outbox(tmp_path, MODEL)
    moved = set_aside(directory)
    assert moved.parent == tmp_path and moved.name.startswith(f"{MODEL}.damaged-")
    assert (moved / DATABASE).exists()  # nothing is deleted
    assert find(tmp_path) == []


def test_status_and_sync_report_a_damaged_outbox_and_go_on(tmp_path, hub):
    good = new_model(hub)
    with hubfsm.Session(good, transport=InMemoryTransport(hub, KEY), config=FAST,
                        outbox_dir=tmp_path, offline=True) as s:
        s.log_metrics({"loss": 1.0})
    damaged_outbox(tmp_path, MODEL)
    assert [i.model_id for i in survey(tmp_path).infos] == [good]

    out = io.StringIO()
    assert status(tmp_path, out=out) == 1
    assert f"damaged: the outbox in {tmp_path / MODEL}" in out.getvalue()
    assert re.search(rf"^{good} +1 ", out.getvalue(), re.M)

    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), timeout=10, out=out) == 1
    text = out.getvalue()
    assert "set aside as" in text and "synced 1 of 1" in text
    assert {e for (m, e) in hub.audit().metrics_applied if m == good} == {0}
    assert not (tmp_path / MODEL).exists()
    assert [p.name.split(".")[1][:8] for p in tmp_path.glob(f"{MODEL}.*")] == ["damaged-"]


def test_sync_reports_a_damaged_journal_and_exits_non_zero(tmp_path, hub):
    model_id = new_model(hub)
    ob = Outbox.open(model_id, tmp_path)
    ob.apply([MetricsQueued(0, "{}")])
    journal = Journal(ob.directory / "journal", seq=0, inbox=collections.deque())
    for epoch in range(1, 6):
        journal.append(EpochEnded(epoch, {"text": f"epoch {epoch} " * 4}))
    journal.close()
    ob.close()
    data = bytearray((ob.directory / "journal").read_bytes())
    data[8 + 16 + 5] ^= 0xFF  # inside the first record's payload
    (ob.directory / "journal").write_bytes(bytes(data))

    out = io.StringIO()
    assert status(tmp_path, out=out) == 1
    assert "1 record(s) lost" in out.getvalue()
    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), timeout=10, out=out) == 1
    assert "1 record(s) lost" in out.getvalue() and "a copy is kept as" in out.getvalue()
    # every intact record after the damage still reached the hub
    assert {e for (m, e) in hub.audit().metrics_applied if m == model_id} == {0, 2, 3, 4, 5}


def test_a_record_that_does_not_read_back_is_kept_aside_and_the_rest_goes_on(tmp_path, hub):
    import sqlite3

    from hubfsm.core.values import OpOpened

    model_id = new_model(hub)
    ob = Outbox.open(model_id, tmp_path)
    request = protocol.upload_metrics(model_id, {0: "{}"}, key="k-1")
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"weights")
    part = ob.snapshot(weights, name="last.pt", stamp=stamp_of(weights))
    upload = protocol.upload_checkpoint(model_id, 1, part, is_best=False, key="k-2")
    ob.apply([OpOpened("metrics", request, (0,)), OpOpened("checkpoint", upload, 1),
              MetricsQueued(2, '{"loss": 0.5}')])
    ob.close()
    db = sqlite3.connect(tmp_path / model_id / DATABASE)
    db.execute("UPDATE ops SET request = '{not json' WHERE key = 'k-1'")
    db.commit()
    db.close()

    (info,) = inspect(find(tmp_path))  # listed, not damage
    assert info.kept_aside == ("a metrics record: it cannot be read",)
    assert info.pending["metrics"] == 1 and info.pending["checkpoint"] == 1

    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), timeout=10, out=out) == 1
    text = out.getvalue()
    assert "damaged" not in text and "1 records that could not be sent are kept aside" in text
    assert "metrics of epoch 0: never sent: its record in the outbox cannot be read" in text
    assert {e for (m, e) in hub.audit().metrics_applied if m == model_id} == {2}
    assert [u.epoch for u in hub.audit().uploads if u.model_id == model_id] == [1]
    (info,) = survey(tmp_path).infos
    assert len(info.kept_aside) == 1 and not any(info.pending.values())
    # Kept as found, for a person to read; `hubfsm discard --rejected` removes it.
    ob = Outbox.open(model_id, tmp_path)
    (kept,) = ob.load().rejected
    assert kept.request.json == {"unreadable": "{not json"}
    assert ob.drop_rejected() == 1
    ob.close()


def test_a_record_that_still_does_not_read_back_is_damage(tmp_path):
    import sqlite3

    from hubfsm.core.values import Rejected

    ob = Outbox.open(MODEL, tmp_path)
    request = protocol.upload_metrics(MODEL, {0: "{}"}, key="k-1")
    ob.apply([Rejected("metrics", request, (0,), 400, "bad")])
    ob.close()
    db = sqlite3.connect(tmp_path / MODEL / DATABASE)
    db.execute("UPDATE rejected SET request = '{not json'")  # the place records are kept in
    db.commit()
    db.close()
    with pytest.raises(OutboxDamaged, match="records cannot be read"):
        Outbox.open(MODEL, tmp_path)


def test_the_status_command_exits_non_zero_on_damage(tmp_path, capsys):
    from hubfsm.cli.main import main

    Outbox.open(OTHER, tmp_path).close()
    assert main(["status", str(tmp_path)]) == 0
    damaged_outbox(tmp_path, MODEL)
    assert main(["status", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"damaged: the outbox in {tmp_path / MODEL}" in out and "Traceback" not in out


def test_an_outbox_whose_database_is_gone_is_damage_not_nothing(tmp_path, hub, capsys):
    # The database deleted (by hand, or a cleaner) while the journal beside it still holds
    # what a killed trainer logged: status and sync must not say "no outboxes" and exit 0.
    from hubfsm.cli.main import main

    model_id = new_model(hub)
    ob = Outbox.open(model_id, tmp_path)
    journal = Journal(ob.directory / "journal", seq=0, inbox=collections.deque())
    for epoch in range(3):
        journal.append(EpochEnded(epoch, {"loss": 1.0 / (epoch + 1)}))
    journal.close()
    ob.close()
    (tmp_path / model_id / DATABASE).unlink()
    Outbox.open(OTHER, tmp_path).close()  # an empty one, beside it, is no damage

    assert [str(e.directory) for e in survey(tmp_path).damaged] == [str(tmp_path / model_id)]
    assert main(["status", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"damaged: the outbox in {tmp_path / model_id}" in out
    assert "its database is missing" in out and "3 trainer record(s)" in out
    assert main(["status", str(tmp_path / model_id)]) == 1  # named by its directory too

    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), timeout=10, out=out) == 1
    assert "set aside as" in out.getvalue()
    (moved,) = tmp_path.glob(f"{model_id}.damaged-*")
    assert (moved / "journal").exists()  # nothing is deleted


def test_a_directory_left_with_only_its_lock_is_no_damage(tmp_path):
    # A full disk as the outbox was first made leaves its directory and lock, no records.
    ob = Outbox.open(MODEL, tmp_path)
    ob.close()
    (tmp_path / MODEL / DATABASE).unlink()
    assert survey(tmp_path).damaged == [] and survey(tmp_path).infos == []


def offline_finished(hub, root, tmp_path):
    """An outbox holding two epochs and final weights, recorded offline; (model, snapshot)."""
    model_id = new_model(hub)
    best = tmp_path / "best.pt"
    best.write_bytes(b"best weights " * 1000)
    with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                        outbox_dir=root, offline=True) as s:
        s.log_metrics({"loss": 1.0})
        s.log_metrics({"loss": 0.5})
        s.finish(best, map50_95=0.5)
    (snapshot,) = (root / model_id / "files").glob("best-*.pt")
    return model_id, snapshot


@pytest.mark.parametrize("damage", ["flipped", "truncated", "deleted"])
def test_final_weights_damaged_on_disk_are_kept_aside_never_uploaded(tmp_path, hub, damage):
    # A bad disk (or a hand) changed the snapshot of the final weights after finish():
    # uploaded, the model would end "trained" with weights nobody handed over, for good;
    # a missing one was retried until sync's timeout, at every sync.
    root = tmp_path / "ob"
    model_id, snapshot = offline_finished(hub, root, tmp_path)
    data = bytearray(snapshot.read_bytes())
    if damage == "flipped":
        data[100] ^= 0x01
        snapshot.write_bytes(bytes(data))
    elif damage == "truncated":
        snapshot.write_bytes(bytes(data[:1000]))
    else:
        snapshot.unlink()

    out = io.StringIO()
    assert sync(root, transport=InMemoryTransport(hub, KEY), timeout=30, out=out) == 1
    text = out.getvalue()
    assert "final weights of epoch 1: never sent: its weights file" in text, text
    assert hub.weights_info(model_id, "best") is None
    assert {e for (m, e) in hub.audit().metrics_applied if m == model_id} == {0, 1}
    (info,) = survey(root).infos
    assert not any(info.pending.values()) and len(info.kept_aside) == 1
    if damage != "deleted":  # kept with its record, for a person to look at
        assert snapshot.exists()


def test_an_outbox_moved_to_another_root_is_sent_whole_from_there(tmp_path, hub):
    # "From any machine that gets the outbox directory": its records named the snapshots
    # where they were made, so the final upload was retried until sync's timeout, and a
    # write's collection took the snapshots there for files nothing refers to.
    first, moved = tmp_path / "first", tmp_path / "moved"
    model_id, snapshot = offline_finished(hub, first, tmp_path)
    sha = hashlib.sha256(snapshot.read_bytes()).hexdigest()
    moved.mkdir()
    os.rename(first / model_id, moved / model_id)
    ob = Outbox.open(model_id, moved)  # a write, and its collection of snapshots
    ob.apply([MetricsQueued(2, '{"loss": 0.25}')], journal_seq=ob.journal_seq)
    ob.close()
    assert list((moved / model_id / "files").glob("best-*.pt"))

    out = io.StringIO()
    assert sync(moved, transport=InMemoryTransport(hub, KEY), timeout=30, out=out) == 0, (
        out.getvalue()
    )
    assert hub.weights_info(model_id, "best").sha256 == sha
    assert {e for (m, e) in hub.audit().metrics_applied if m == model_id} == {0, 1, 2}


@pytest.mark.parametrize("fault", ["disk I/O error", "database or disk is full"])
def test_an_outbox_the_disk_cannot_read_now_is_not_set_aside_as_damaged(
    tmp_path, hub, monkeypatch, fault
):
    # A full disk keeps SQLite from making the -shm file that reading a database needs:
    # that is the machine, not the outbox. Set aside as damaged, sound outboxes stopped
    # being sent, and their records were no longer delivered once the disk had room.
    import sqlite3

    from hubfsm.durable import survey as surveying

    model_id, _ = offline_finished(hub, tmp_path / "ob", tmp_path)
    real = surveying.check_database

    def failing(db):
        raise sqlite3.OperationalError(fault)

    monkeypatch.setattr(surveying, "check_database", failing)
    found = survey(tmp_path / "ob")
    assert found.damaged == [] and found.infos == []
    assert [str(u.directory) for u in found.unreadable] == [str(tmp_path / "ob" / model_id)]
    out = io.StringIO()
    assert status(tmp_path / "ob", out=out) == 1
    assert "cannot be read now" in out.getvalue() and "damaged" not in out.getvalue()
    out = io.StringIO()
    assert sync(tmp_path / "ob", transport=InMemoryTransport(hub, KEY), timeout=10, out=out) == 1
    assert "set aside" not in out.getvalue() and (tmp_path / "ob" / model_id).is_dir()

    monkeypatch.setattr(surveying, "check_database", real)  # room again
    out = io.StringIO()
    assert sync(tmp_path / "ob", transport=InMemoryTransport(hub, KEY), timeout=10, out=out) == 0
    assert hub.record(model_id)["status"] == "trained"


@pytest.mark.parametrize("piece", ["lock", "journal", "files"])
def test_one_outbox_with_a_piece_of_the_wrong_kind_never_stops_the_others(tmp_path, hub, piece):
    # A directory where a file belongs (or the reverse): status and sync crashed with a
    # traceback, or sync retried the upload until its timeout, and no other outbox was
    # sent.
    import shutil

    root = tmp_path / "ob"
    bad, _ = offline_finished(hub, root, tmp_path)
    good, _ = offline_finished(hub, root, tmp_path)
    target = root / bad / piece
    if target.is_dir():
        shutil.rmtree(target)
        target.write_text("not a directory")
    else:
        target.unlink()
        target.mkdir()

    out = io.StringIO()
    assert status(root, out=out) == (0 if piece == "files" else 1)
    assert f"{good}" in out.getvalue()
    out = io.StringIO()
    assert sync(root, transport=InMemoryTransport(hub, KEY), timeout=30, out=out) == 1
    assert hub.record(good)["status"] == "trained"
    assert bad in out.getvalue()
