from __future__ import annotations

import hashlib
import io
import json
import random

import pytest

from hubfsm.hub.calls import BadJson, HubCall, HubReply, id_factory, is_model_id
from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore
from tests.support import KEY

OTHER = "O" * 42  # a second user's key

CREATE = {
    "config": {
        "batchSize": 16,
        "epochs": 3,
        "imageSize": 640,
        "patience": 100,
        "device": "",
        "cache": "ram",
    },
    "dataset": {"name": "coco8.yaml"},
    "lineage": {"architecture": {"name": "yolov8n"}, "parent": {}},
    "meta": {"name": "yolov8n"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hub(clock: Clock) -> Hub:
    # Not the shared hub: these tests move its clock and read its public URLs.
    return Hub(MemoryStore(), clock, keys=[KEY], public_root="http://hub.test")


def post(
    hub: Hub, path: str, body: object = None, *, key: str | None = KEY, idem: str | None = None
) -> HubReply:
    return hub.handle(HubCall("POST", path, key, body, idempotency_key=idem))


def get(hub: Hub, path: str, *, key: str | None = KEY) -> HubReply:
    return hub.handle(HubCall("GET", path, key))


def upload(
    hub: Hub,
    model_id: str,
    data: bytes,
    *,
    kind: str = "epoch",
    epoch: int = 1,
    is_best: str = "False",
    name: str | None = None,
    idem: str | None = None,
    file: io.BytesIO | None = None,
) -> HubReply:
    fields = {"epoch": str(epoch), "type": kind}
    if kind == "epoch":
        fields["isBest"] = is_best
    else:
        fields["map"] = "0.5"
    part = name or ("last.pt" if kind == "epoch" else "best.pt")
    content = data if file is None else file
    call = HubCall("POST", f"/v1/models/{model_id}/upload", KEY, None, fields, part, content, idem)
    return hub.handle(call)


def create(hub: Hub, body: object = None) -> str:
    reply = post(hub, "/v1/models", CREATE if body is None else body)
    assert reply.status == 200, reply.body
    model_id = reply.body["data"]["id"]
    assert is_model_id(model_id)
    return str(model_id)


def metrics(*epochs: int) -> dict[str, object]:
    return {
        "type": "metrics",
        "metrics": {str(e): json.dumps({"loss": 1.0 / (e + 1)}) for e in epochs},
    }


# ---- envelopes, auth, routing ---------------------------------------------------------


def test_auth_accepts_the_key(hub: Hub) -> None:
    reply = post(hub, "/v1/auth")
    assert reply.status == 200
    assert reply.body == {"success": True, "message": "API key is valid", "data": {}}


@pytest.mark.parametrize("key", [None, "", "wrong" * 8 + "xx"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/auth"),
        ("GET", "/v1/models/abcdefghij0123456789"),
        ("POST", "/v1/models"),
        ("POST", "/v1/models/abcdefghij0123456789"),
        ("GET", "/v1/models/x/metrics"),
        ("POST", "/v1/models/x/upload"),
        ("GET", "/v1/models/x/weights/last"),
        ("POST", "/v1/agent/heartbeat/models/x"),
        ("GET", "/v1/nothing"),
    ],
)
def test_every_endpoint_wants_a_valid_key(
    hub: Hub, key: str | None, method: str, path: str
) -> None:
    reply = hub.handle(HubCall(method, path, key, {}))
    assert reply.status == 401
    assert reply.body["success"] is False
    assert reply.body["data"] == {}
    if key:
        assert key not in reply.body["message"]


def test_revoked_key_gets_401_and_added_key_works(hub: Hub) -> None:
    assert post(hub, "/v1/auth", key=OTHER).status == 401
    hub.add_key(OTHER)
    assert post(hub, "/v1/auth", key=OTHER).status == 200
    hub.revoke_key(KEY)
    reply = post(hub, "/v1/auth")
    assert reply.status == 401
    assert KEY not in json.dumps(reply.body)
    assert KEY not in repr(hub)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nope",
        "/v2/models",
        "/",
        "/v1/models/a/b/c/d/e",
        "/v1/models/x/weights/other",
        "v1/auth",
    ],
)
def test_unknown_paths_are_404(hub: Hub, path: str) -> None:
    reply = get(hub, path)
    assert reply.status == 404
    assert reply.body["success"] is False


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/auth", "POST"),
        ("GET", "/v1/models", "POST"),
        ("DELETE", "/v1/models/abcdefghij0123456789", "GET, POST"),
        ("POST", "/v1/models/abcdefghij0123456789/metrics", "GET"),
        ("GET", "/v1/models/abcdefghij0123456789/upload", "POST"),
        ("GET", "/v1/agent/heartbeat/models/abcdefghij0123456789", "POST"),
    ],
)
def test_wrong_method_is_405(hub: Hub, method: str, path: str, allow: str) -> None:
    reply = hub.handle(HubCall(method, path, KEY))
    assert reply.status == 405
    assert reply.headers["Allow"] == allow


# ---- create and read ---------------------------------------------------------------------


def test_create_then_read_the_record(hub: Hub, clock: Clock) -> None:
    model_id = create(hub)
    reply = get(hub, f"/v1/models/{model_id}")
    assert reply.status == 200
    record = reply.body["data"]
    assert record["id"] == model_id
    assert record["status"] == "new"
    assert record["cfg"] == "yolov8n.yaml"
    assert record["data"] == "coco8.yaml"
    assert record["name"] == "yolov8n"
    assert record["has_last_weights"] is False
    assert record["has_best_weights"] is False
    assert record["is_pretrained"] is False
    assert record["resume"] is None
    assert record["weights"] is None
    assert (record["batch_size"], record["epochs"], record["imgsz"]) == (16, 3, 640)
    assert (record["patience"], record["device"], record["cache"]) == (100, "", "ram")
    assert record["train_args"] == {
        "data": "coco8.yaml",
        "epochs": 3,
        "batch": 16,
        "imgsz": 640,
        "patience": 100,
        "device": "",
        "cache": "ram",
    }
    assert record["created_at"] == "2023-11-14T22:13:20Z"


def test_create_pretrained_keeps_the_parent(hub: Hub) -> None:
    body = {
        **CREATE,
        "lineage": {"architecture": {"name": "yolov8n"}, "parent": {"name": "yolov8n.pt"}},
    }
    record = hub.record(create(hub, body))
    assert record is not None
    assert record["is_pretrained"] is True
    assert record["weights"] == "yolov8n.pt"


def test_create_with_minimal_body(hub: Hub) -> None:
    record = hub.record(create(hub, {"lineage": {"architecture": {"name": "my.yaml"}}}))
    assert record is not None
    assert record["cfg"] == "my.yaml"
    assert record["data"] is None
    assert record["train_args"] == {"data": None}


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "text",
        BadJson("Expecting value"),
        {},
        {"lineage": {}},
        {"lineage": {"architecture": {"name": ""}}},
        {**CREATE, "config": "big"},
        {**CREATE, "config": {"epochs": "ten"}},
        {**CREATE, "config": {"epochs": True}},
        {**CREATE, "meta": {"name": {"x": 1}}},
        {**CREATE, "dataset": []},
    ],
)
def test_create_rejects_malformed_bodies(hub: Hub, body: object) -> None:
    reply = post(hub, "/v1/models", body)
    assert reply.status == 400
    assert reply.body["success"] is False
    assert reply.body["message"]
    assert hub.models() == []


def test_read_unknown_or_malformed_model_is_404(hub: Hub) -> None:
    assert get(hub, "/v1/models/abcdefghij0123456789").status == 404
    assert get(hub, "/v1/models/short").status == 404
    assert get(hub, "/v1/models/abcdefghij012345678!").status == 404


def test_ids_are_deterministic_for_a_seed() -> None:
    first = Hub(MemoryStore(), seed=7, keys=[KEY])
    second = Hub(MemoryStore(), seed=7, keys=[KEY])
    assert create(first) == create(second)
    make = id_factory(random.Random(1))
    assert all(is_model_id(make()) for _ in range(50))


def test_id_collisions_are_skipped(hub: Hub) -> None:
    ids = iter(["a" * 20, "a" * 20, "b" * 20])
    hub.new_id = lambda: next(ids)
    assert create(hub) == "a" * 20
    assert create(hub) == "b" * 20


# ---- metrics -------------------------------------------------------------------------------


def test_metrics_upsert_and_read_sorted(hub: Hub) -> None:
    model_id = create(hub)
    assert post(hub, f"/v1/models/{model_id}", metrics(2, 0)).status == 200
    replaced = {"type": "metrics", "metrics": {"0": json.dumps({"loss": 9.0})}}
    assert post(hub, f"/v1/models/{model_id}", replaced).status == 200
    assert post(hub, f"/v1/models/{model_id}", metrics(1)).status == 200
    reply = get(hub, f"/v1/models/{model_id}/metrics")
    assert reply.status == 200
    assert reply.body["data"] == [
        {"epoch": 0, "metrics": {"loss": 9.0}},
        {"epoch": 1, "metrics": {"loss": 0.5}},
        {"epoch": 2, "metrics": {"loss": 1 / 3}},
    ]
    audit = hub.audit()
    assert audit.metrics_applied == {(model_id, 0): 2, (model_id, 1): 1, (model_id, 2): 1}


def test_first_metrics_start_training(hub: Hub) -> None:
    model_id = create(hub)
    post(hub, f"/v1/models/{model_id}", metrics(0))
    assert hub.record(model_id)["status"] == "training"  # type: ignore[index]


@pytest.mark.parametrize(
    "body",
    [
        None,
        [1],
        BadJson("bad"),
        {"metrics": {"0": "{}"}},
        {"type": "other", "metrics": {}},
        {"type": "metrics"},
        {"type": "metrics", "metrics": {}},
        {"type": "metrics", "metrics": []},
        {"type": "metrics", "metrics": {"x": "{}"}},
        {"type": "metrics", "metrics": {"-1": "{}"}},
        {"type": "metrics", "metrics": {"1.5": "{}"}},
        {"type": "metrics", "metrics": {"0": {"loss": 1}}},
        {"type": "metrics", "metrics": {"0": "not json"}},
        {"type": "metrics", "metrics": {"0": "[1, 2]"}},
        {"type": "metrics", "metrics": {"0": "{}", "1": "nope"}},
    ],
)
def test_malformed_metrics_are_400_and_apply_nothing(hub: Hub, body: object) -> None:
    model_id = create(hub)
    reply = post(hub, f"/v1/models/{model_id}", body)
    assert reply.status == 400
    assert reply.body["message"]
    assert hub.metrics(model_id) == []
    assert hub.audit().metrics_applied == {}


def test_metrics_to_unknown_model_is_404(hub: Hub) -> None:
    assert post(hub, "/v1/models/abcdefghij0123456789", metrics(0)).status == 404
    assert get(hub, "/v1/models/abcdefghij0123456789/metrics").status == 404


# ---- uploads and downloads -----------------------------------------------------------------


def test_epoch_upload_makes_the_model_resumable(hub: Hub) -> None:
    model_id = create(hub)
    data = b"weights" * 1000
    reply = upload(hub, model_id, data, epoch=3, is_best="True")
    assert reply.status == 200
    assert reply.body["data"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    record = hub.record(model_id)
    assert record is not None
    assert record["has_last_weights"] is True
    assert record["has_best_weights"] is False
    assert record["status"] == "training"
    assert record["last_epoch"] == 3
    assert record["resume"] == f"http://hub.test/files/{model_id}/epoch-3.pt"
    (entry,) = hub.audit().uploads
    assert (entry.model_id, entry.type, entry.epoch, entry.size, entry.is_best) == (
        model_id,
        "epoch",
        3,
        len(data),
        True,
    )
    download = get(hub, f"/v1/models/{model_id}/weights/last")
    assert download.status == 200
    assert download.content == data
    assert download.body["data"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert get(hub, f"/v1/models/{model_id}/weights/best").status == 404


def test_final_upload_trains_the_model_and_then_409(hub: Hub, clock: Clock) -> None:
    model_id = create(hub)
    upload(hub, model_id, b"last", epoch=1)
    clock.now += 5
    stream = io.BytesIO(b"best" * 300_000)
    assert upload(hub, model_id, b"", kind="final", epoch=2, file=stream).status == 200
    record = hub.record(model_id)
    assert record is not None
    assert record["status"] == "trained"
    assert record["has_best_weights"] is True
    assert record["map"] == 0.5
    assert record["final_epoch"] == 2
    assert record["weights"] == f"http://hub.test/files/{model_id}/best.pt"
    assert get(hub, f"/v1/models/{model_id}/weights/best").content == b"best" * 300_000
    uploads = hub.audit().uploads
    assert [u.type for u in uploads] == ["epoch", "final"]
    assert uploads[1].time == clock.now
    for reply in (
        upload(hub, model_id, b"x", epoch=3),
        upload(hub, model_id, b"x", kind="final", epoch=3),
        post(hub, f"/v1/models/{model_id}", metrics(3)),
    ):
        assert reply.status == 409
        assert "already trained" in reply.body["message"]
    assert len(hub.audit().uploads) == 2
    # Heartbeats are still answered (the official client keeps sending them).
    assert post(hub, f"/v1/agent/heartbeat/models/{model_id}", {"agent": "a"}).status == 200


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"epoch": "1"}, "last.pt"),
        ({"type": "weird", "epoch": "1"}, "last.pt"),
        ({"type": "epoch"}, "last.pt"),
        ({"type": "epoch", "epoch": "x"}, "last.pt"),
        ({"type": "epoch", "epoch": "-2"}, "last.pt"),
        ({"type": "epoch", "epoch": "1", "isBest": "maybe"}, "last.pt"),
        ({"type": "final", "epoch": "1", "map": "high"}, "best.pt"),
        ({"type": "final", "epoch": "1", "map": "nan"}, "best.pt"),
        ({"type": "epoch", "epoch": "1"}, "best.pt"),
        ({"type": "final", "epoch": "1"}, "last.pt"),
        ({"type": "epoch", "epoch": "1"}, None),
    ],
)
def test_malformed_uploads_are_400(hub: Hub, fields: dict[str, str], name: str | None) -> None:
    model_id = create(hub)
    call = HubCall(
        "POST",
        f"/v1/models/{model_id}/upload",
        KEY,
        None,
        fields,
        name,
        None if name is None else b"data",
    )
    reply = hub.handle(call)
    assert reply.status == 400, reply.body
    assert reply.body["message"]
    assert hub.audit().uploads == ()


@pytest.mark.parametrize("flag", ["true", "false", "True", "False", "1", "0"])
def test_is_best_spellings(hub: Hub, flag: str) -> None:
    model_id = create(hub)
    assert upload(hub, model_id, b"x", is_best=flag).status == 200
    assert hub.audit().uploads[0].is_best is (flag in ("true", "True", "1"))


def test_upload_to_unknown_model_is_404(hub: Hub) -> None:
    assert upload(hub, "abcdefghij0123456789", b"x").status == 404
    assert get(hub, "/v1/models/abcdefghij0123456789/weights/last").status == 404


def test_final_upload_without_map_is_fine(hub: Hub) -> None:
    model_id = create(hub)
    call = HubCall(
        "POST",
        f"/v1/models/{model_id}/upload",
        KEY,
        None,
        {"type": "final", "epoch": "0"},
        "best.pt",
        b"b",
    )
    assert hub.handle(call).status == 200
    assert hub.record(model_id)["map"] is None  # type: ignore[index]


# ---- heartbeats -------------------------------------------------------------------------------


def test_heartbeat_hands_out_a_stable_agent_id(hub: Hub, clock: Clock) -> None:
    model_id = create(hub)
    path = f"/v1/agent/heartbeat/models/{model_id}"
    first = post(hub, path, {"agent": "python-3.11-local", "agentId": None})
    assert first.status == 200
    agent_id = first.body["data"]["agentId"]
    assert is_model_id(agent_id)
    assert hub.record(model_id)["status"] == "training"  # type: ignore[index]
    clock.now += 300
    second = post(hub, path, {"agent": "python-3.11-local", "agentId": "something-else"})
    assert second.body["data"]["agentId"] == agent_id
    assert hub.audit().heartbeats == {model_id: (clock.now - 300, clock.now)}


@pytest.mark.parametrize("body", [None, [], BadJson("x"), {"agent": 5}])
def test_malformed_heartbeat_is_400(hub: Hub, body: object) -> None:
    model_id = create(hub)
    assert post(hub, f"/v1/agent/heartbeat/models/{model_id}", body).status == 400
    assert hub.audit().heartbeats == {}


def test_heartbeat_to_unknown_model_is_404(hub: Hub) -> None:
    assert post(hub, "/v1/agent/heartbeat/models/abcdefghij0123456789", {}).status == 404


# ---- idempotency, deletion, audit ---------------------------------------------------------


def test_idempotent_replay_applies_once(hub: Hub) -> None:
    model_id = create(hub)
    path = f"/v1/models/{model_id}"
    first = post(hub, path, metrics(0), idem="m-0")
    again = post(hub, path, metrics(0), idem="m-0")
    assert first.status == again.status == 200
    assert again.body == first.body
    assert again.headers == {"Idempotent-Replayed": "true"}
    assert hub.audit().metrics_applied == {(model_id, 0): 1}
    assert hub.audit().replayed == {"upload_metrics": 1}
    # Without a key, or with another one, it is applied again.
    post(hub, path, metrics(0))
    post(hub, path, metrics(0), idem="m-0b")
    assert hub.audit().metrics_applied == {(model_id, 0): 3}


def test_idempotent_create_and_upload(hub: Hub) -> None:
    a = post(hub, "/v1/models", CREATE, idem="create-1")
    b = post(hub, "/v1/models", CREATE, idem="create-1")
    assert a.body["data"]["id"] == b.body["data"]["id"]
    assert len(hub.models()) == 1
    model_id = a.body["data"]["id"]
    assert upload(hub, model_id, b"x", idem="u1").status == 200
    assert upload(hub, model_id, b"x", idem="u1").status == 200
    assert len(hub.audit().uploads) == 1
    # The final upload replays even after the model became trained.
    assert upload(hub, model_id, b"y", kind="final", idem="f1").status == 200
    assert upload(hub, model_id, b"y", kind="final", idem="f1").status == 200
    assert len(hub.audit().uploads) == 2


def test_idempotency_is_per_api_key(hub: Hub) -> None:
    hub.add_key(OTHER)
    model_id = create(hub)
    post(hub, f"/v1/models/{model_id}", metrics(0), idem="same")
    # The same idempotency key under another API key is another request (it is refused
    # here because the model is not that key's: each key sees only its own models).
    assert post(hub, f"/v1/models/{model_id}", metrics(0), idem="same", key=OTHER).status == 404
    assert hub.audit().metrics_applied == {(model_id, 0): 1}


def test_failed_requests_are_not_remembered(hub: Hub) -> None:
    model_id = create(hub)
    assert post(hub, f"/v1/models/{model_id}", {"type": "x"}, idem="k").status == 400
    assert post(hub, f"/v1/models/{model_id}", metrics(0), idem="k").status == 200


def test_a_reused_key_with_another_body_is_refused_not_replayed(hub: Hub) -> None:
    model_id = create(hub)
    path = f"/v1/models/{model_id}"
    assert post(hub, path, metrics(0), idem="k").status == 200
    other = post(hub, path, metrics(1), idem="k")
    assert other.status == 422 and "Idempotency-Key" in other.body["message"]
    assert "Idempotent-Replayed" not in other.headers
    # The first request is still replayed, and the refused one applied nothing.
    assert post(hub, path, metrics(0), idem="k").headers == {"Idempotent-Replayed": "true"}
    assert hub.audit().metrics_applied == {(model_id, 0): 1}
    assert hub.audit().reused == {"upload_metrics": 1}
    assert hub.audit().replayed == {"upload_metrics": 1}
    # Another path is another request too (the model of another create, say).
    second = create(hub)
    assert post(hub, f"/v1/models/{second}", metrics(0), idem="k").status == 200


def test_a_reused_create_key_with_another_model_is_refused(hub: Hub) -> None:
    first = post(hub, "/v1/models", CREATE, idem="c")
    other = {**CREATE, "meta": {"name": "another"}}
    assert post(hub, "/v1/models", other, idem="c").status == 422
    assert [m["name"] for m in hub.models()] == ["yolov8n"]
    # The same object with its keys in another order is the same request.
    reordered = dict(reversed(list(CREATE.items())))
    assert post(hub, "/v1/models", reordered, idem="c").body == first.body


@pytest.mark.parametrize("change", ["bytes", "epoch", "map"])
def test_a_reused_upload_key_with_another_body_is_refused(hub: Hub, change: str) -> None:
    model_id = create(hub)
    kind = "final" if change == "map" else "epoch"
    assert upload(hub, model_id, b"weights", kind=kind, idem="u").status == 200
    if change == "bytes":
        again = upload(hub, model_id, b"WEIGHTS", kind=kind, idem="u")
    elif change == "epoch":
        again = upload(hub, model_id, b"weights", kind=kind, epoch=2, idem="u")
    else:
        fields = {"epoch": "1", "type": "final", "map": "0.7"}
        path = f"/v1/models/{model_id}/upload"
        call = HubCall("POST", path, KEY, None, fields, "best.pt", b"weights", "u")
        again = hub.handle(call)
    assert again.status == 422, again.body
    assert len(hub.audit().uploads) == 1
    found = hub.weights(model_id, "last" if kind == "epoch" else "best")
    assert found is not None and found[1] == b"weights"
    # The very same upload, streamed this time, is still replayed.
    same = upload(hub, model_id, b"", kind=kind, idem="u", file=io.BytesIO(b"weights"))
    assert same.status == 200 and same.headers == {"Idempotent-Replayed": "true"}


def test_delete_model(hub: Hub) -> None:
    model_id = create(hub)
    post(hub, f"/v1/models/{model_id}", metrics(0))
    upload(hub, model_id, b"x")
    assert hub.delete_model(model_id) is True
    assert hub.delete_model(model_id) is False
    assert get(hub, f"/v1/models/{model_id}").status == 404
    assert post(hub, f"/v1/models/{model_id}", metrics(1)).status == 404
    assert hub.metrics(model_id) == []
    assert hub.weights(model_id, "last") is None


def test_request_counts(hub: Hub) -> None:
    model_id = create(hub)
    get(hub, f"/v1/models/{model_id}")
    get(hub, f"/v1/models/{model_id}", key=None)
    post(hub, f"/v1/models/{model_id}", metrics(0))
    get(hub, "/v1/what")
    hub.handle(HubCall("PUT", "/v1/auth", KEY))
    assert hub.audit().requests == {
        "create_model": 1,
        "get_model": 2,
        "upload_metrics": 1,
        "unknown": 1,
        "auth": 1,
    }


def test_reply_bodies_are_not_the_stored_state(hub: Hub) -> None:
    model_id = create(hub)
    record = get(hub, f"/v1/models/{model_id}").body["data"]
    record.pop("status")
    record["train_args"].clear()
    assert get(hub, f"/v1/models/{model_id}").body["data"]["status"] == "new"
