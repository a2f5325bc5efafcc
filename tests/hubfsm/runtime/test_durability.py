import hashlib
import io
import json
import os
import random

import attrs
import pytest

import hubfsm
from hubfsm.cli.outboxes import status
from hubfsm.core.values import FinishRequested
from hubfsm.durable.layout import OutboxLockedError
from hubfsm.durable.survey import find, inspect
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.shells import VirtualClock
from hubfsm.runtime.sync import sync
from tests.support import FAST, KEY, inline_session, new_model
from transports.faults import FaultInjectingTransport, FaultMix
from transports.memory import InMemoryTransport


def switchable(hub):
    """A transport whose hub can be taken down and brought back."""
    return FaultInjectingTransport(InMemoryTransport(hub, KEY), random.Random(0), FaultMix())


def applied(hub, model_id):
    return {e: n for (m, e), n in hub.audit().metrics_applied.items() if m == model_id}


def test_what_a_dead_hub_did_not_get_goes_first_next_time(hub, tmp_path, capsys):
    model_id = new_model(hub)
    link = switchable(hub)
    s = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
    s.start()
    s.log_metrics({"loss": 1.0})
    assert s.flush(timeout=5)
    link.mix = FaultMix(connection_error=1.0)  # the hub goes away
    for epoch in range(1, 4):
        s.log_metrics({"loss": 1.0 / (epoch + 1)})
    s.close(timeout=0.2)
    assert s.state == "resumable"
    err = capsys.readouterr().err
    assert "3 epochs of metrics not on the hub yet" in err and "hubfsm sync" in err
    [info] = inspect(find(tmp_path))
    assert info.pending["metrics"] == 3

    link.mix = FaultMix()  # back
    again = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
    assert again.flush(timeout=5)
    again.close()
    assert applied(hub, model_id) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert find(tmp_path) == []  # an empty outbox is removed


def test_a_lost_response_before_a_crash_is_not_applied_twice(hub, tmp_path):
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    link = FaultInjectingTransport(
        InMemoryTransport(hub, KEY), random.Random(0), FaultMix(), sleep=clock.sleep
    )
    s, shell = inline_session(model_id, transport=link, clock=clock, outbox_dir=tmp_path)
    s.start()
    link.mix = FaultMix(lost_response=1.0)  # every request lands, no answer comes back
    s.log_metrics({"loss": 0.5}, epoch=0)
    shell.run_until(clock() + 60.0)
    assert applied(hub, model_id).get(0) == 1
    s.close(timeout=0.0)
    link.mix = FaultMix()
    again = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path)
    assert again.flush(timeout=5)
    again.close()
    assert applied(hub, model_id) == {0: 1}
    assert hub.audit().replayed  # the retry with the same key was answered from memory


def test_offline_records_everything_and_sync_sends_it(hub, tmp_path):
    model_id = new_model(hub)
    weights = tmp_path / "w"
    weights.mkdir()
    with hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                        outbox_dir=tmp_path / "ob", offline=True) as s:
        for epoch in range(5):
            s.log_metrics({"loss": 1.0 / (epoch + 1)})
            (weights / "last.pt").write_bytes(b"epoch %d" % epoch)
            s.save_checkpoint(weights / "last.pt", epoch=epoch)
        (weights / "best.pt").write_bytes(b"the best weights")
        s.finish(weights / "best.pt", map50_95=0.7)
        assert s.state == "resumable"
    assert hub.audit().requests.get("upload_metrics", 0) == 0
    out = io.StringIO()
    code = sync(tmp_path / "ob", transport=InMemoryTransport(hub, KEY), timeout=10, out=out)
    assert code == 0, out.getvalue()
    assert applied(hub, model_id) == {e: 1 for e in range(5)}
    record = hub.record(model_id)
    assert record["status"] == "trained"
    final = [u for u in hub.audit().uploads if u.type == "final"][-1]
    assert final.sha256 == hashlib.sha256(b"the best weights").hexdigest()
    assert "all sent" in out.getvalue()
    assert sync(tmp_path / "ob", transport=InMemoryTransport(hub, KEY), out=out) == 0


def test_offline_needs_a_model_id(tmp_path):
    with pytest.raises(hubfsm.HubfsmError, match="offline mode needs an existing model id"):
        hubfsm.Session("yolov8n.yaml", api_key=KEY, offline=True)


def test_one_model_one_session(hub, tmp_path):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                       outbox_dir=tmp_path)
    with pytest.raises(OutboxLockedError):
        hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                       outbox_dir=tmp_path)
    s.close()


def test_the_uploaded_checkpoint_is_the_file_at_the_call(hub, tmp_path):
    model_id = new_model(hub)
    last = tmp_path / "last.pt"
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                              outbox_dir=tmp_path / "ob")
    s.start()
    last.write_bytes(b"epoch 0 weights")
    s.save_checkpoint(last, epoch=0)
    shell.run_until(shell.clock() + 1.0)
    assert s.stats()["checkpoints_acknowledged"] == 1
    last.write_bytes(b"epoch 1 weights, longer")
    s.save_checkpoint(last, epoch=1)
    last.write_bytes(b"epoch 2")  # overwritten at once: the offer of epoch 1 is stale
    s.save_checkpoint(last, epoch=2)
    shell.run_until(shell.clock() + 10.0)
    assert s.stats()["checkpoints_acknowledged"] == 2
    s.close()
    uploads = [u for u in hub.audit().uploads if u.type == "epoch"]
    contents = {b"epoch 0 weights", b"epoch 1 weights, longer", b"epoch 2"}
    digests = {hashlib.sha256(c).hexdigest(): c for c in contents}
    for u in uploads:
        assert u.sha256 in digests
        assert str(u.epoch).encode() in digests[u.sha256]  # epoch and bytes agree


def test_a_revoked_key_keeps_the_records(hub, tmp_path):
    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                       outbox_dir=tmp_path)
    s.start()
    hub.revoke_key(KEY)
    s.log_metrics({"loss": 1.0})
    assert not s.flush(timeout=5)  # ends at the refusal, with the epoch kept
    assert s.state == "refused"
    with pytest.raises(hubfsm.AuthError):
        s.close(timeout=0.1)
    assert inspect(find(tmp_path))[0].pending["metrics"] == 1
    out = io.StringIO()
    assert sync(tmp_path, transport=InMemoryTransport(hub, KEY), out=out) == 1
    assert "refused the API key" in out.getvalue()
    assert KEY not in out.getvalue()
    assert inspect(find(tmp_path))[0].pending["metrics"] == 1


def test_without_the_journal_the_worker_still_files_everything(hub, tmp_path):
    model_id = new_model(hub)
    link = switchable(hub)
    s = hubfsm.Session(model_id, transport=link, config=FAST, outbox_dir=tmp_path,
                       journal=False)
    assert not (s.outbox_dir / "journal").exists()
    s.start()
    link.mix = FaultMix(connection_error=1.0)
    for epoch in range(3):
        s.log_metrics({"loss": 1.0}, epoch=epoch)
    s.close(timeout=0.1)
    assert inspect(find(tmp_path))[0].pending["metrics"] == 3


def test_a_checkpoint_renamed_over_before_the_snapshot_still_uploads_the_handed_over_bytes(
    hub, tmp_path
):
    model_id = new_model(hub)
    runs = tmp_path / "runs"
    runs.mkdir()
    s, shell = inline_session(model_id, transport=InMemoryTransport(hub, KEY), config=FAST,
                              outbox_dir=tmp_path / "ob")
    s.start()
    (runs / "last.pt").write_bytes(b"epoch 0 weights")
    s.save_checkpoint(runs / "last.pt", epoch=0)
    # the trainer writes the next weights aside and renames them over, as it should,
    # before the driver has taken the offer in
    (runs / "tmp.pt").write_bytes(b"epoch 1 weights!")
    os.replace(runs / "tmp.pt", runs / "last.pt")
    shell.run_until(shell.clock() + 1.0)
    assert s.stats()["checkpoints_acknowledged"] == 1
    s.close()
    [upload] = [u for u in hub.audit().uploads if u.type == "epoch"]
    assert upload.epoch == 0
    assert upload.sha256 == hashlib.sha256(b"epoch 0 weights").hexdigest()
    assert not list((tmp_path / "ob").glob("*/files/.held-*"))


class Killed(BaseException):
    """The process dies (a BaseException, as the simulator's crash: nothing may catch it)."""


def killed_in_finish(hub, root, best, *, after_apply):
    """An inline session that dies while its driver takes finish() in; returns the model.

    ``after_apply``: the driver has taken the snapshot and told the core, and dies
    before the outbox has any of it; otherwise it dies before taking the call in at all
    (as when the worker is inside another request). The death is what the kernel does:
    files closed, the lock released, memory (the inbox) gone.
    """
    model_id = new_model(hub)
    clock = VirtualClock(1000.0)
    settings = attrs.evolve(
        Settings.resolve(model_id, config=FAST, outbox_dir=root), at_exit=False
    )
    parts = build(settings, transport=InMemoryTransport(hub, KEY), clock=clock, inline=True)
    driver = parts.driver
    apply, take_all = driver.apply, driver.inbox.take_all

    def dying_apply(taken, now):
        if isinstance(taken.event, FinishRequested):
            apply(taken, now)
            raise Killed
        apply(taken, now)

    def dying_take_all():
        if driver.inbox.finish_queued():
            raise Killed
        return take_all()

    if after_apply:
        driver.apply = dying_apply
    else:
        driver.inbox.take_all = dying_take_all
    s = Session.compose(parts)
    s.start()
    for epoch in range(3):
        s.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    best.write_bytes(b"the final weights")
    with pytest.raises(Killed):
        s.finish(best, map50_95=0.7)
    parts.durability.close(remove=False)
    parts.shell.inbox.clear()
    # The trainer's next run writes its weights aside and renames them over best.pt.
    aside = best.with_suffix(".tmp")
    aside.write_bytes(b"another run's weights")
    os.replace(aside, best)
    return model_id


@pytest.mark.parametrize("after_apply", [False, True], ids=["before", "after-the-snapshot"])
def test_a_death_inside_finish_leaves_the_final_weights_for_sync_alone(
    hub, tmp_path, after_apply
):
    root = tmp_path / "ob"
    model_id = killed_in_finish(hub, root, tmp_path / "best.pt", after_apply=after_apply)
    shown = io.StringIO()
    assert status(root, out=shown, as_json=True) == 0
    (row,) = json.loads(shown.getvalue())["outboxes"]
    assert row["model_id"] == model_id
    assert row["pending"] == {"metrics": 3, "checkpoint": 0, "final": 1}, shown.getvalue()
    out = io.StringIO()
    assert sync(root, transport=InMemoryTransport(hub, KEY), out=out) == 0, out.getvalue()
    assert f"model {model_id}: all sent" in out.getvalue()
    assert hub.record(model_id)["status"] == "trained"
    assert [row["epoch"] for row in hub.metrics(model_id)] == [0, 1, 2]
    [final] = [u for u in hub.audit().uploads if u.type == "final"]
    assert final.sha256 == hashlib.sha256(b"the final weights").hexdigest()
    assert find(root) == []  # delivered: the outbox and its held link are gone


def test_an_outbox_root_that_is_a_file_says_so_and_creates_nothing(hub, tmp_path):
    root = tmp_path / "outbox"
    root.write_text("a file where the outboxes belong")
    before = dict(hub.audit().requests)

    with pytest.raises(NotADirectoryError) as raised:
        hubfsm.Session("yolov8n.yaml", transport=InMemoryTransport(hub, KEY), outbox_dir=root)

    message = str(raised.value)
    assert f"the outbox root {root} is not a directory" in message
    assert "nothing was created on the hub" in message
    # Freeing space would not help: the advice is about what the root is.
    assert "Free space" not in message
    assert "HUBFSM_OUTBOX or outbox_dir=" in message
    assert dict(hub.audit().requests) == before
