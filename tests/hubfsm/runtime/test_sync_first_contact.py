"""``hubfsm sync`` where nothing listens: both dialects fail within seconds, naming the address.

A HUB outbox's sync opens the model first, and that request meets the refused
connection; a Platform outbox that names its run opens with no request, so its first
contact is a data request. Before, that one was retried for the whole ``--timeout``
(and ten seconds of closing), saying the hub was lost.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import attrs
import pytest

import hubfsm
from hubfsm.cli.outboxes import status
from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from hubfsm.core.values import Send
from hubfsm.hub.keys import new_platform_key
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.sync import FirstContact, sync
from hubfsm.transport import Request, Response, TransportError
from transports.memory import HandlerTransport

FAST = {
    "hub": CoreConfig().scaled(0.001),
    "platform": CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001),
}


def leave_outbox(local: LocalHub, root: Path, dialect: str, left: str) -> tuple[str, str]:
    """A run whose hub went away before ``left`` (an epoch, or the final weights) reached it.

    Returns the model id and the key.
    """
    if dialect == "platform":
        key = new_platform_key()
        local.hub.add_key(key, "platform")
        identifier, args = "alice/birds", {"name": "run1", "epochs": 2}
    else:
        key, identifier, args = local.api_key, "yolov8n.yaml", {"data": "coco8.yaml"}
    s = hubfsm.Session(identifier, api_key=key, api_root=local.url, config=FAST[dialect],
                       outbox_dir=root, train_args=args)  # fmt: skip
    s.start()
    s.log_metrics({"loss": 1.0}, epoch=0)
    assert s.flush(timeout=30.0)
    if left == "epoch":
        local.stop()
        s.log_metrics({"loss": 0.5}, epoch=1)
        s.close(timeout=0.0)
    else:
        local.stop()
        best = root.parent / "best.pt"
        best.write_bytes(b"best weights")
        with pytest.raises(hubfsm.DeliveryIncomplete):
            s.finish(best, map50_95=0.5, timeout=0.5)
        s.close(timeout=0.0)
    assert s.model_id is not None
    return s.model_id, key


def pending(root: Path) -> str:
    out = io.StringIO()
    status(root, out=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("dialect", "left"), [("hub", "epoch"), ("platform", "epoch"), ("platform", "final")]
)
def test_sync_where_nothing_listens_fails_fast_naming_the_address_and_keeps_it_all(
    tmp_path: Path, dialect: str, left: str
) -> None:
    root = tmp_path / "outbox"
    with LocalHub(tmp_path / "hub") as local:
        model_id, key = leave_outbox(local, root, dialect, left)
        before = pending(root)
        assert model_id in before
        out = io.StringIO()
        started = time.monotonic()
        code = sync(root, api_key=key, timeout=60.0, out=out)
        took = time.monotonic() - started
        said = out.getvalue()
        assert code == 1, said
        # Within the first contact's few attempts (5 s), not the 60 s --timeout.
        assert took < 10.0, f"sync took {took:.1f}s: {said}"
        assert f"is the hub at {local.url} running?" in said, said
        assert "refused the connection" in said and "lost the hub" not in said, said
        assert f"Its records stay in {root / model_id}" in said, said
        assert key not in said
        assert pending(root) == before  # nothing lost, nothing marked
        # The hub back, the same outbox is delivered.
        local.start()
        out = io.StringIO()
        assert sync(root, api_key=key, timeout=60.0, out=out) == 0, out.getvalue()
        epochs = [row["epoch"] for row in local.hub.metrics(model_id)]
        assert epochs == ([0, 1] if left == "epoch" else [0])
        if left == "final":
            assert local.hub.record(model_id)["status"] == "trained"
        assert "no outboxes" in pending(root)


REFUSED = TransportError("refused", "127.0.0.1:9 refused the connection", url="http://127.0.0.1:9")


def send(channel: str) -> Send:
    return Send(1, channel, 1, Request("POST", "/api/webhooks/training/metrics"))


def test_a_first_contact_refused_is_judged_by_the_openings_attempts_and_deadline() -> None:
    policies = CoreConfig().policies
    # A channel that retries as fast as the first contact: its attempts end it.
    contact = FirstContact(attrs.evolve(policies, metrics=policies.first_contact))
    for attempt in range(policies.first_contact.max_attempts - 1):
        contact.answered(0.1 * attempt, send("metrics"), REFUSED)
        assert contact.missing is None
    contact.answered(0.4, send("metrics"), REFUSED)
    assert contact.missing is REFUSED
    with pytest.raises(hubfsm.HubUnavailableError, match=r"is the hub at http://127.0.0.1:9"):
        contact.check()
    # The final weights' slower retries: the next attempt may start past the 5 s deadline.
    slow = FirstContact(policies)
    slow.answered(0.0, send("final"), REFUSED)  # the next within 2 s: in time
    assert slow.missing is None
    slow.answered(1.5, send("final"), REFUSED)  # the next within 4 s more: maybe not
    assert slow.missing is REFUSED


def test_a_hub_that_answered_once_is_lost_when_it_refuses_not_missing() -> None:
    # A HUB outbox's model opened (an answer), then the hub went away: sync retries it
    # for --timeout and says it is lost, as before.
    contact = FirstContact(CoreConfig().policies)
    contact.answered(0.0, send("control"), Response(200, {"data": {}}))
    for attempt in range(10):
        contact.answered(float(attempt), send("metrics"), REFUSED)
    assert contact.missing is None
    contact.check()
    # A timeout says something is there (it took the connection): not judged missing.
    busy = FirstContact(CoreConfig().policies)
    busy.answered(0.0, send("metrics"), TransportError("timeout", "no answer within 30 s"))
    for attempt in range(10):
        busy.answered(1.0 + attempt, send("metrics"), REFUSED)
    assert busy.missing is None
    # The opening's own refusals are the core's to judge.
    opening = FirstContact(CoreConfig().policies)
    for attempt in range(10):
        opening.answered(float(attempt), send("control"), REFUSED)
    assert opening.missing is None


def test_a_hub_outbox_whose_data_requests_are_judged_before_its_opening_names_the_address(
    tmp_path: Path,
) -> None:
    # A HUB outbox's kept epochs go out while the model still opens. When those data
    # requests used up the first contact before the opening's own attempts did, the
    # worker stopped under the opening, which then said it had waited out --timeout.
    root = tmp_path / "outbox"
    model_id = "Mo12Mo12Mo12Mo12Mo12"
    kept = hubfsm.Session(model_id, api_key="k" * 42, outbox_dir=root, offline=True)
    kept.start()
    for epoch in range(2):
        kept.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    kept.close(timeout=5.0)
    before = pending(root)
    where = "http://127.0.0.1:9"
    asked: list[str] = []

    def nobody(request: Request) -> Response:
        asked.append(request.method)
        if request.method == "GET":
            # The opening's attempts must not end first, as they mostly do: one that
            # times out is retried for --timeout; the data requests meet the refusal.
            raise TransportError("timeout", "no answer within 0.1 s", url=where)
        raise TransportError("refused", "127.0.0.1:9 refused the connection", url=where)

    out = io.StringIO()
    started = time.monotonic()
    code = sync(root, api_key="k" * 42, api_root=where, transport=HandlerTransport(nobody),
                timeout=60.0, out=out)  # fmt: skip
    took = time.monotonic() - started
    said = out.getvalue()
    assert code == 1, said
    assert "POST" in asked, asked  # the data requests did go out during the opening
    assert took < 10.0, f"sync took {took:.1f}s: {said}"
    assert f"is the hub at {where} running?" in said, said
    assert "within 60s" not in said, said
    assert pending(root) == before
