"""The Platform dialect's request builders and answer rules, as values (no I/O)."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubfsm.core.config import RetryPolicy
from hubfsm.core.identifier import Identifier, parse_platform_identifier, slugify
from hubfsm.core.machine import Verdict
from hubfsm.core.platform import EVENTS_PATH, PLATFORM, UPLOAD_PATH, choose
from hubfsm.core.protocol import HUB_V1, HubProtocolError
from hubfsm.core.values import CheckpointUpload, Op
from hubfsm.errors import IdentifierError
from hubfsm.transport import FilePart, Request, Response, TransportError

KEY = "ul_" + "ab" * 20
FILE = FilePart("best.pt", "/tmp/best.pt", 12, "0" * 64)
MODEL = "m" * 24

#: What the official 8.4.190 client may put in each body (platform.py, training.py).
OFFICIAL_BODY = {"modelId", "project", "name", "event", "data"}
OFFICIAL_EPOCH = {"epoch", "metrics", "system", "fitness", "best_fitness", "modelInfo"}

metric_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**9), 10**9)
)
metric_dicts = st.dictionaries(st.text(min_size=1, max_size=12), metric_values, max_size=8)


@given(epoch=st.integers(0, 10_000), metrics=metric_dicts)
def test_an_epoch_end_is_strict_json_with_only_the_official_keys(epoch, metrics):
    encoded = json.dumps(metrics)  # what the queue keeps (NaN as the JSON extension)
    request = PLATFORM.metrics(MODEL, {epoch: encoded}, key="k-1")
    assert (request.method, request.path) == ("POST", EVENTS_PATH)
    body = request.json
    assert set(body) <= OFFICIAL_BODY and body["event"] == "epoch_end"
    assert set(body["data"]) <= OFFICIAL_EPOCH and body["data"]["epoch"] == epoch
    # Non-finite floats go as null, as the official client sends them; nothing else is lost.
    text = json.dumps(body, allow_nan=False)
    sent = json.loads(text)["data"]
    lifted = {k: v for k, v in metrics.items() if k in OFFICIAL_EPOCH - {"epoch", "metrics"}}
    kept = {k: v for k, v in metrics.items() if k not in lifted}
    assert set(sent["metrics"]) == set(kept)
    for name, value in kept.items():
        if isinstance(value, float) and not math.isfinite(value):
            assert sent["metrics"][name] is None
        else:
            assert sent["metrics"][name] == value
    assert request.file is None and request.fields is None


def test_fitness_goes_beside_the_metrics_as_the_official_client_sends_it():
    encoded = json.dumps({"metrics/mAP50(B)": 0.5, "fitness": 0.4, "best_fitness": 0.45})
    data = PLATFORM.metrics(MODEL, {3: encoded}, key="k").json["data"]
    assert data == {
        "epoch": 3,
        "metrics": {"metrics/mAP50(B)": 0.5},
        "fitness": 0.4,
        "best_fitness": 0.45,
    }


def test_the_platform_never_takes_a_batch_of_epochs():
    with pytest.raises(ValueError):
        PLATFORM.metrics(MODEL, {1: "{}", 2: "{}"}, key="k")
    assert HUB_V1.batches and not PLATFORM.batches
    assert not PLATFORM.heartbeats and math.isinf(PLATFORM.limits.heartbeat)
    with pytest.raises(NotImplementedError):
        PLATFORM.heartbeat(MODEL, None)


def test_opening_names_the_project_and_run_or_the_model_never_both():
    new = PLATFORM.training_started(
        Identifier(project="owner/proj", run_name="run1"), {"epochs": 3}, key="k"
    )
    assert new.json == {
        "project": "owner/proj",
        "name": "run1",
        "event": "training_started",
        "data": {"epochs": 3},
    }
    again = PLATFORM.training_started(Identifier(model_id=MODEL), {}, key="k")
    assert again.json == {"modelId": MODEL, "event": "training_started", "data": {}}


def test_train_data_sends_every_argument_as_a_string():
    data = PLATFORM.train_data({"epochs": 3, "imgsz": [640, 480], "cache": False})
    assert data == {"trainArgs": {"epochs": "3", "imgsz": "[640, 480]", "cache": "False"},
                    "epochs": 3}  # fmt: skip


def upload_chain(final):
    """Walk an upload's steps with answers a service would give; return the requests."""
    first = PLATFORM.upload(MODEL, 7, FILE, key="k-9")
    answer_body = {
        "uploadUrl": "https://storage.example/b/o?X-Goog-Signature=abc",
        "gcsPath": "gs://b/o",
        "uploadPath": "o",
        "modelId": MODEL,
    }
    steps, request, answer = [first], first, {}
    response = Response(200, answer_body)
    while True:
        step = PLATFORM.next_step(request, response, first=first, answer=answer, final=final)
        if step is None:
            return steps
        if request is first:
            answer = dict(response.body)
        steps.append(step)
        request, response = step, Response(200, {"received": True})


def test_a_checkpoint_is_three_steps_and_the_final_four():
    steps = upload_chain(None)
    assert [(r.method, r.path.split("?")[0]) for r in steps] == [
        ("POST", UPLOAD_PATH),
        ("PUT", "https://storage.example/b/o"),
        ("POST", EVENTS_PATH),
    ]
    assert steps[0].json == {"filename": "best.pt", "modelId": MODEL, "runId": 7}
    assert steps[1].file == FILE and steps[1].json is None
    assert steps[2].json == {
        "modelId": MODEL,
        "event": "checkpoint_saved",
        "data": {"modelPath": "gs://b/o", "runId": 7, "uploadPath": "o"},
    }
    assert {r.idempotency_key for r in steps} == {"k-9"}
    final = upload_chain((4, FILE, 0.5))
    assert len(final) == 4 and final[3].json["event"] == "training_complete"
    assert final[3].json["data"] == {
        "results": {"metrics": {"metrics/mAP50-95(B)": 0.5}, "modelPath": "gs://b/o",
                    "modelSize": 12},
        "runId": 7,
    }  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        None, "", "ftp://x/y", "file:///etc/passwd", "/relative", 7,
        # Not one an HTTP client can request: each failed every retry of the same PUT,
        # its whole text (the signature in its query) in the message, never asking anew.
        "http://127.0.0.1:99999/o?sig=s", "http://[::1/o?sig=s", "https://h:port/o",
        "http://\u0430\u0431\u0432.example/o", "https://user:pw@storage.example/o",
        "http://:80/o",
    ],
)  # fmt: skip
def test_an_upload_answer_without_a_usable_signed_url_is_a_protocol_error(url):
    first = PLATFORM.upload(MODEL, 1, FILE, key="k")
    with pytest.raises(HubProtocolError):
        PLATFORM.next_step(first, Response(200, {"uploadUrl": url}), first=first, answer={},
                           final=None)  # fmt: skip


def test_only_a_refused_put_starts_the_upload_over():
    put = Request("PUT", "https://storage.example/o?sig", file=FILE)
    assert PLATFORM.restarts(put, Response(403, {}))
    assert not PLATFORM.restarts(put, Response(503, {}))
    assert not PLATFORM.restarts(put, TransportError("timeout", "slow"))
    assert not PLATFORM.restarts(PLATFORM.upload(MODEL, 1, FILE, key="k"), Response(403, {}))


def test_409_is_retried_on_platform_and_refused_on_hub():
    conflict = Response(409, {})
    assert PLATFORM.verdict(conflict, first_contact=False) is Verdict.RETRY
    assert HUB_V1.verdict(conflict, first_contact=False) is Verdict.FATAL
    assert PLATFORM.verdict(Response(401, {}), first_contact=False) is Verdict.FATAL


@pytest.mark.parametrize(
    ("body", "cancelled"),
    [({"cancelled": True}, True), ({"cancelled": False}, False), ({"cancelled": "yes"}, False),
     ({}, False)],
)  # fmt: skip
def test_cancelled_is_read_from_any_answer(body, cancelled):
    assert PLATFORM.cancelled(Response(200, body)) is cancelled
    assert not HUB_V1.cancelled(Response(200, body))


def test_the_opening_answer_is_checked_before_it_names_anything():
    opened = PLATFORM.opened(
        Response(200, {"modelId": MODEL, "runId": 3, "modelUrl": "https://p/x"}), model_id=None
    )
    assert (opened.model_id, opened.run_id, opened.model_url) == (MODEL, 3, "https://p/x")
    for bad in ({"modelId": "../../etc"}, {}, {"modelId": MODEL, "runId": "3"},
                {"modelId": MODEL, "runId": True}):  # fmt: skip
        with pytest.raises(HubProtocolError):
            PLATFORM.opened(Response(200, bad), model_id=None)
    with pytest.raises(HubProtocolError, match="another model"):
        PLATFORM.opened(Response(200, {"modelId": "n" * 24}), model_id=MODEL)
    # A resume answer that leaves the id out keeps ours.
    assert PLATFORM.opened(Response(200, {"runId": 2}), model_id=MODEL).model_id == MODEL
    # The model's URL is shown to a person (printed, logged): only an http(s) URL of
    # printable characters is kept; terminal escapes, a script URL or a megabyte are not.
    for shown in ("https://p/x\x1b]0;owned\x07\x1b[2J", "javascript:alert(1)",
                  "https://p/" + "x" * 5000, "https://p/a\nb"):  # fmt: skip
        kept = PLATFORM.opened(Response(200, {"modelId": MODEL, "modelUrl": shown}), model_id=None)
        assert kept.model_url is None, shown


def test_the_dialect_is_chosen_by_argument_key_identifier_then_environment():
    def pick(protocol=None, key=None, ident="owner/p", url=None, plat=None, hub=None):
        return choose(protocol, api_key=key, identifier=ident, platform_url=url,
                      platform_key=plat, hub_key=hub).name  # fmt: skip

    assert pick("hub", key=KEY) == "hub"
    assert pick(key=KEY) == "platform"
    assert pick(key="a" * 42, url="http://127.0.0.1:1") == "hub"
    assert pick(ident="ul://owner/p/run") == "platform"
    assert pick(ident="https://hub.ultralytics.com/models/" + "a" * 20, url="x") == "hub"
    assert pick(ident="yolov8n.pt", plat=KEY) == "hub"
    assert pick(ident="a" * 42 + "_" + "b" * 20, url="x") == "hub"
    assert pick(url="http://127.0.0.1:3000") == "platform"
    assert pick(plat=KEY) == "platform"
    assert pick(plat=KEY, hub="h" * 42) == "hub"
    assert pick(plat="not-a-platform-key") == "hub"
    assert pick() == "hub"
    with pytest.raises(ValueError):
        pick("grpc")


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("owner/My Project", None, Identifier(project="owner/my-project", run_name="train")),
        ("owner/proj", "Run 1", Identifier(project="owner/proj", run_name="run-1")),
        ("owner/proj/exp2", None, Identifier(project="owner/proj", run_name="exp2")),
        ("ul://owner/proj/exp2", "x", Identifier(project="owner/proj", run_name="exp2")),
        ("solo", None, Identifier(project="solo", run_name="train")),
        ("a1B2c3D4e5F6g7H8i9", None, Identifier(model_id="a1B2c3D4e5F6g7H8i9")),
    ],
)
def test_platform_identifiers(text, name, expected):
    assert parse_platform_identifier(text, name=name) == expected


@pytest.mark.parametrize("text", ["", "/", "a/b/c/d", "owner/!!!", "???"])
def test_platform_identifiers_that_name_nothing(text):
    with pytest.raises(IdentifierError):
        parse_platform_identifier(text)


@given(st.text(max_size=40))
def test_slugs_keep_what_the_official_slugify_keeps(text):
    slug = slugify(text)
    # ASCII lower-case letters, digits and dashes; like the official regex, other
    # whitespace than a space survives (the service gets the name it would get anyway).
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" or (c.isspace() and c != " ")
               for c in slug)  # fmt: skip
    assert not slug.startswith("-") and not slug.endswith("-") and "--" not in slug
    assert len(slug) <= 128


def test_slugs_of_names_people_type():
    assert slugify("My Project 1") == "my-project-1"
    assert slugify("exp--2 (final)!") == "exp-2-final"


def test_an_upload_op_advances_step_by_step_and_a_refused_put_restarts_it_from_its_first():
    first = PLATFORM.upload(MODEL, 7, FILE, key="k-9")
    op = Op(1, "checkpoint", first, RetryPolicy(), CheckpointUpload(3))
    signed = Response(200, {"uploadUrl": "https://storage.example/o?sig", "gcsPath": "gs://b/o"})
    assert PLATFORM.advance(op, signed, now=5.0, final=None)
    assert op.request.method == "PUT" and op.first is first and op.answer["gcsPath"] == "gs://b/o"
    assert (op.round_attempts, op.round_start, op.not_before) == (0, 5.0, 5.0)
    assert not PLATFORM.restart(op, Response(503, {}))  # retried as it is
    assert PLATFORM.restart(op, Response(403, {}))
    assert (op.request, op.first, op.answer) == (first, None, {})
    # HUB v1 uploads in one request: nothing follows it, nothing starts over.
    hub = Op(2, "checkpoint", HUB_V1.checkpoint(MODEL, None, 3, FILE, is_best=False, key="k"),
             RetryPolicy(), CheckpointUpload(3))  # fmt: skip
    assert not HUB_V1.advance(hub, Response(200, {}), now=5.0, final=None)
    assert not HUB_V1.restart(hub, Response(403, {}))
