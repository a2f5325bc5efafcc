"""A Platform session against a fake Platform in memory: the dialect's promises, end to end."""

import hashlib
import threading

import pytest
import structlog

import hubfsm
from hubfsm.cli.outboxes import status
from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from hubfsm.durable.survey import survey
from hubfsm.errors import AuthError, HubfsmError
from hubfsm.runtime.sync import sync
from hubfsm.transport import Response, TransportError
from tests.platform_fake import PLATFORM_KEY, FakePlatform
from transports.memory import HandlerTransport

#: The Platform dialect's shipped behaviour, a thousand times as fast.
FAST = CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001)
#: Ten times faster again, for a run that flushes past the checkpoint limit at each epoch.
FASTER = FAST.scaled(0.1)


def session(fake, identifier="owner/my-project", **kwargs):
    kwargs.setdefault("train_args", {"name": "run1", "epochs": 5})
    kwargs.setdefault("config", FAST)
    return hubfsm.Session(
        identifier,
        api_key=PLATFORM_KEY,
        transport=HandlerTransport(fake),
        **kwargs,
    )


def weights(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_a_whole_run_lands_in_order_with_only_what_the_official_client_sends(tmp_path):
    fake = FakePlatform()
    with session(fake, config=FASTER) as s:
        assert (s.protocol, s.state, s.run_id) == ("platform", "training", 1)
        assert s.model_url == "https://platform.test/owner/my-project/run1"
        for epoch in range(5):
            s.log_metrics({"train/loss": 1.0 / (epoch + 1), "fitness": epoch / 10})
            s.save_checkpoint(weights(tmp_path, "last.pt", b"w%d" % epoch), epoch=epoch)
            assert s.flush(timeout=10.0)
        s.finish(weights(tmp_path, "best.pt", b"best weights"), map50_95=0.42)
        assert s.state == "done"
    model = fake.only_model()
    assert (model.project, model.name) == ("owner/my-project", "run1")
    run = model.runs[1]
    assert run.epochs == [0, 1, 2, 3, 4]
    assert run.metrics[2] == {"train/loss": pytest.approx(1 / 3)}
    # The first checkpoint went at once, then the 900 s limit held the others back.
    assert fake.storage[run.promoted[0]] == b"w0"
    assert fake.storage[run.promoted[-1]] == b"best weights"
    assert run.events[0] == "training_started" and run.events[-1] == "training_complete"
    assert run.complete["results"]["modelSize"] == len(b"best weights")
    assert run.complete["runId"] == 1
    assert fake.foreign == []
    # No heartbeat, nothing but the webhooks and the PUTs.
    assert {kind for kind, _ in fake.log} == {"POST", "PUT"}


def test_every_epoch_is_retried_until_acknowledged_once_and_in_order(tmp_path):
    fake = FakePlatform()
    attempts: dict[int, int] = {}

    def flaky(request):
        body = request.json or {}
        if body.get("event") != "epoch_end":
            return None
        epoch = body["data"]["epoch"]
        attempts[epoch] = attempts.get(epoch, 0) + 1
        if attempts[epoch] == 1 and epoch % 2 == 0:
            return Response(503, {"error": "busy"})
        if attempts[epoch] == 1 and epoch % 3 == 0:
            return TransportError("timeout", "no answer")
        return None

    fake.fault = flaky
    with session(fake) as s:
        for epoch in range(8):
            s.log_metrics({"loss": float(epoch)})
        s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.1)
    run = fake.only_model().runs[1]
    assert run.epochs == list(range(8))
    assert all(attempts[e] == (2 if e % 2 == 0 or e % 3 == 0 else 1) for e in range(8))


def test_training_complete_goes_only_after_every_earlier_event_is_acknowledged(tmp_path):
    fake = FakePlatform()
    failures = {"left": 6}

    def last_epoch_struggles(request):
        body = request.json or {}
        if body.get("event") == "epoch_end" and body["data"]["epoch"] == 4 and failures["left"]:
            failures["left"] -= 1
            return Response(502, {})
        return None

    fake.fault = last_epoch_struggles
    with session(fake) as s:
        for epoch in range(5):
            s.log_metrics({"loss": float(epoch)})
        s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.1)
    events = fake.only_model().runs[1].events
    assert events.index("training_complete") == len(events) - 1
    assert events.count("epoch_end") == 5 and failures["left"] == 0


def test_a_cancelled_answer_reaches_the_trainer_once(tmp_path):
    fake = FakePlatform()
    heard = []
    with session(fake, on_cancel=lambda: heard.append(threading.current_thread().name)) as s:
        s.log_metrics({"loss": 1.0})
        assert s.flush(timeout=10.0) and not s.cancelled
        fake.cancel = True  # a person pressed "stop" on the model page
        s.log_metrics({"loss": 0.5})
        s.log_metrics({"loss": 0.4})
        assert s.flush(timeout=10.0)
        assert s.cancelled
        # Partial results still go up, as the official client uploads them.
        s.finish(weights(tmp_path, "best.pt", b"partial"), map50_95=0.1)
    assert len(heard) == 1
    assert fake.only_model().runs[1].complete is not None


def test_a_cancel_is_one_warning_line(tmp_path):
    fake = FakePlatform()
    with structlog.testing.capture_logs() as logs, session(fake) as s:
        s.log_metrics({"loss": 1.0})
        assert s.flush(timeout=10.0)
        fake.cancel = True
        s.log_metrics({"loss": 0.5})
        assert s.flush(timeout=10.0) and s.cancelled
        s.finish(weights(tmp_path, "best.pt", b"partial"), map50_95=0.1)
    said = [e for e in logs if e["log_level"] in ("warning", "error") and "cancel" in e["event"]]
    assert said == [{"event": "run.cancelled", "model_id": s.model_id, "log_level": "warning"}]


def test_a_cancelled_opening_is_known_before_training_starts():
    fake = FakePlatform(cancel=True)
    s = session(fake, train_args={"name": "run1"})
    try:
        assert s.cancelled and s.state == "created"
    finally:
        s.close()


def test_a_signed_url_that_refuses_the_bytes_is_asked_for_again(tmp_path):
    fake = FakePlatform()
    refused = {"left": 1}

    def expired_once(request):
        if request.method == "PUT" and refused["left"]:
            refused["left"] -= 1
            return Response(403, {})  # the signature expired
        return None

    fake.fault = expired_once
    with session(fake) as s:
        s.log_metrics({"loss": 1.0})
        s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.1)
        assert s.state == "done"
    uploads = [path for kind, path in fake.log if kind == "POST" and path == "upload"]
    assert len(uploads) == 2 and refused["left"] == 0


def test_a_revoked_key_stops_sending_keeps_recording_and_sync_delivers(tmp_path):
    fake = FakePlatform()
    s = session(fake)
    s.start()
    s.log_metrics({"loss": 1.0})
    assert s.flush(timeout=10.0)
    model_id = s.model_id
    fake.revoked = True
    s.log_metrics({"loss": 0.5})
    s._shell.wait_for(lambda c: c.machine.refused, 10.0)
    assert s.state == "refused"
    for epoch in range(2, 5):
        s.log_metrics({"loss": 1.0 / epoch})  # recorded, not sent
    sent = len(fake.log)
    with pytest.raises(AuthError):
        s.close()
    assert len(fake.log) == sent
    root = s.outbox_dir.parent
    [info] = survey(root).infos
    assert info.protocol == "platform" and info.pending["metrics"] == 4

    class Out:
        text = ""

        def write(self, chunk):
            self.text += chunk

    out = Out()
    assert status(root, out=out) == 0
    assert f"{model_id} (platform)" in out.text
    # A model id alone does not say which run it was: its page is named under the table.
    assert f"model {model_id}: the run's page is {s.model_url}" in out.text
    # Still revoked: sync keeps it all and says where once, in what to run.
    out.text = ""
    assert sync(root, api_key=PLATFORM_KEY, transport=HandlerTransport(fake), out=out) == 1
    (line,) = [ln for ln in out.text.splitlines() if "refused the API key" in ln]
    assert line.count(str(s.outbox_dir)) == 2, line  # "kept in DIR", "hubfsm sync ... DIR"
    fake.revoked = False
    assert sync(root, api_key=PLATFORM_KEY, transport=HandlerTransport(fake), out=out) == 0
    run = fake.models[model_id].runs[1]
    assert run.epochs == [0, 1, 2, 3, 4]
    # Sync reported to the same run, without announcing a new one.
    assert list(fake.models[model_id].runs) == [1]


def test_resume_reuses_the_model_and_the_run_its_outbox_kept(tmp_path):
    fake = FakePlatform()
    first = session(fake)
    first.start()
    first.log_metrics({"loss": 1.0}, epoch=0)
    assert first.flush(timeout=10.0)
    model_id = first.model_id
    fake.fault = lambda request: Response(503, {})  # the service goes away
    first.log_metrics({"loss": 0.9}, epoch=1)
    first.close(timeout=0.1)  # epoch 1 stays in the outbox
    fake.fault = None
    with session(fake, model_id, protocol="platform") as again:
        assert again.model_id == model_id and again.run_id == 1
        again.log_metrics({"loss": 0.8}, epoch=2)
        again.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.2)
    run = fake.models[model_id].runs[1]
    assert run.epochs == [0, 1, 2] and list(fake.models[model_id].runs) == [1]


def test_a_trainer_back_on_the_run_its_outbox_kept_still_knows_the_model_page(tmp_path):
    # The run goes on unannounced, so no answer names the page again: the outbox keeps it,
    # for the "View model at" and "View results at" lines a resumed trainer prints.
    fake = FakePlatform()
    first = session(fake)
    first.start()
    page = first.model_url
    assert page == "https://platform.test/owner/my-project/run1"
    fake.fault = lambda request: Response(503, {})
    first.log_metrics({"loss": 0.9}, epoch=0)
    first.close(timeout=0.1)  # epoch 0 stays in the outbox, with its run
    fake.fault = None
    with session(fake, first.model_id, protocol="platform") as again:
        assert again.run_id == 1 and again.model_url == page
        again.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.2)
    assert list(fake.models[first.model_id].runs) == [1]


def test_resume_of_a_finished_model_opens_a_new_run_of_the_same_model(tmp_path):
    fake = FakePlatform()
    with session(fake) as s:
        s.log_metrics({"loss": 1.0})
        s.finish(weights(tmp_path, "best.pt", b"best"), map50_95=0.2)
    model_id = s.model_id
    with session(fake, model_id, protocol="platform") as again:
        assert again.model_id == model_id and again.run_id == 2
    assert len(fake.models) == 1


def test_the_weights_that_changed_after_hand_over_are_not_sent_as_they_are(tmp_path):
    fake = FakePlatform()
    with session(fake) as s:
        s.log_metrics({"loss": 1.0})
        best = weights(tmp_path, "best.pt", b"best")
        s.finish(best, map50_95=0.2)
    run = fake.only_model().runs[1]
    [path] = run.promoted
    assert hashlib.sha256(fake.storage[path]).hexdigest() == hashlib.sha256(b"best").hexdigest()


def test_a_hub_outbox_is_not_opened_as_platform(tmp_path, hub):
    from tests.support import FAST as HUB_FAST
    from tests.support import KEY, new_model
    from transports.memory import InMemoryTransport

    model_id = new_model(hub)
    s = hubfsm.Session(model_id, transport=InMemoryTransport(hub, KEY), config=HUB_FAST,
                       offline=True)
    s.start()
    s.log_metrics({"loss": 1.0})
    s.close()
    fake = FakePlatform()
    with pytest.raises(HubfsmError, match="protocol='hub'"):
        hubfsm.Session(model_id, protocol="platform", api_key=PLATFORM_KEY,
                       transport=HandlerTransport(fake), config=FAST)


def test_hubfsm_open_starts_a_platform_run_by_project(tmp_path):
    fake = FakePlatform()
    s = hubfsm.open("ul://owner/proj/exp", api_key=PLATFORM_KEY, transport=HandlerTransport(fake),
                    config=FAST, epochs=2)  # fmt: skip
    try:
        assert s.state == "training" and s.protocol == "platform"
        s.log_metrics({"loss": 1.0})
        s.finish(weights(tmp_path, "best.pt", b"b"), map50_95=0.1)
    finally:
        s.close()
    model = fake.only_model()
    assert (model.project, model.name, model.runs[1].epochs) == ("owner/proj", "exp", [0])


def test_discard_removes_a_platform_outbox(tmp_path, capsys):
    from hubfsm.cli.main import main

    fake = FakePlatform(fault=lambda request: None)
    s = session(fake)
    s.start()
    fake.fault = lambda request: Response(503, {})
    s.log_metrics({"loss": 1.0})
    s.close(timeout=0.1)
    directory = s.outbox_dir
    assert directory.exists()
    assert main(["discard", s.model_id, "--root", str(directory.parent), "--yes"]) == 0
    assert not directory.exists()
