"""What ultralytics 8.2.0 and hub-sdk send is accepted, kept, and handed back; weight URLs
are signed, end in the file name, and answer HEAD as well as GET."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hubfsm.hub.keys import UrlSigner
from hubfsm.hub.server import LocalHub

TIMEOUT = 10

# What ultralytics 8.2.0's HUBTrainingSession.create_model sends for `yolo train
# model=yolov8n.pt data=coco8.yaml` (parent present) with its defaults.
BASE: dict[str, Any] = {
    "config": {
        "batchSize": -1,
        "epochs": 300,
        "imageSize": 640,
        "patience": 100,
        "device": "",
        "cache": "ram",
    },
    "dataset": {"name": "coco8.yaml"},
    "lineage": {"architecture": {"name": "yolov8n"}, "parent": {"name": "yolov8n.pt"}},
    "meta": {"name": "yolov8n"},
}


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def _with(**config: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["config"].update(config)
    return body


@pytest.mark.parametrize(
    ("config", "imgsz", "device", "cache"),
    [
        ({"cache": False}, 640, "", False),
        ({"cache": True}, 640, "", True),
        ({"cache": "ram"}, 640, "", "ram"),
        ({"imageSize": [640, 480]}, [640, 480], "", "ram"),
        ({"imageSize": 320}, 320, "", "ram"),
        ({"device": "cpu"}, 640, "cpu", "ram"),
        ({"device": 0}, 640, 0, "ram"),
        ({"device": [0, 1]}, 640, [0, 1], "ram"),
        ({"device": ""}, 640, "", "ram"),
    ],
)
def test_create_keeps_what_ultralytics_sends(
    local: LocalHub, config: dict[str, Any], imgsz: Any, device: Any, cache: Any
) -> None:
    key = {"x-api-key": local.api_key}
    for parent in (True, False):
        body = _with(**config)
        if not parent:
            body["lineage"]["parent"] = {}
        reply = requests.post(f"{local.url}/v1/models", json=body, headers=key, timeout=TIMEOUT)
        assert reply.status_code == 200, reply.text
        model_id = reply.json()["data"]["id"]
        record = requests.get(
            f"{local.url}/v1/models/{model_id}", headers=key, timeout=TIMEOUT
        ).json()["data"]
        assert (record["imgsz"], record["device"], record["cache"]) == (imgsz, device, cache)
        assert record["batch_size"] == -1
        assert record["is_pretrained"] is parent
        assert record["train_args"] == {
            "data": "coco8.yaml",
            "epochs": 300,
            "batch": -1,
            "imgsz": imgsz,
            "patience": 100,
            "device": device,
            "cache": cache,
        }


@pytest.mark.parametrize(
    "config",
    [
        {"imageSize": "big"},
        {"imageSize": [640, 480, 320]},
        {"imageSize": [True]},
        {"device": {"gpu": 0}},
        {"cache": 3},
        {"batchSize": "16"},
        {"epochs": 1.5},
        {"epochs": 2**53},
        {"patience": -(2**53)},
        {"batchSize": 10**20},
        {"imageSize": [640, 2**60]},
        {"device": 2**53},
        {"device": [0, 2**53]},
    ],
)
def test_create_refuses_wrong_shapes(local: LocalHub, config: dict[str, Any]) -> None:
    reply = requests.post(
        f"{local.url}/v1/models",
        json=_with(**config),
        headers={"x-api-key": local.api_key},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 400
    assert "config." in reply.json()["message"]


def _upload(local: LocalHub, model_id: str, epoch: int, data: bytes, final: bool = False) -> None:
    name = "best.pt" if final else "last.pt"
    fields = {"epoch": str(epoch), "type": "final" if final else "epoch"}
    reply = requests.post(
        f"{local.url}/v1/models/{model_id}/upload",
        headers={"x-api-key": local.api_key},
        data=fields,
        files={name: (name, data)},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text


def test_resume_record_names_the_last_checkpoint_by_a_signed_pt_url(local: LocalHub) -> None:
    key = {"x-api-key": local.api_key}
    model_id = requests.post(
        f"{local.url}/v1/models", json=BASE, headers=key, timeout=TIMEOUT
    ).json()["data"]["id"]
    first, second = os.urandom(50_000), os.urandom(60_000)
    _upload(local, model_id, 4, first)
    old = requests.get(f"{local.url}/v1/models/{model_id}", headers=key, timeout=TIMEOUT)
    _upload(local, model_id, 7, second)
    record = requests.get(f"{local.url}/v1/models/{model_id}", headers=key, timeout=TIMEOUT).json()[
        "data"
    ]
    assert record["has_last_weights"] is True
    assert record["train_args"]["data"] == "coco8.yaml"
    url = record["resume"]
    parts = urllib.parse.urlsplit(url)
    # ultralytics names the download after the last path segment and loads only *.pt.
    assert parts.path == f"/files/{model_id}/epoch-7.pt"
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert set(query) == {"expires", "signature"}

    got = requests.get(url, timeout=TIMEOUT)  # no key: the signature is the permission
    assert got.status_code == 200 and got.content == second
    assert got.headers["X-Checksum-Sha256"] == hashlib.sha256(second).hexdigest()
    assert 'filename="epoch-7.pt"' in got.headers["Content-Disposition"]
    head = requests.head(url, timeout=TIMEOUT)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(second)

    # The URL of the replaced checkpoint no longer serves (it would name the wrong epoch).
    stale = old.json()["data"]["resume"]
    assert "epoch-4.pt" in stale
    assert requests.get(stale, timeout=TIMEOUT).status_code == 404

    tampered = url.replace("epoch-7.pt", "best.pt")
    assert requests.get(tampered, timeout=TIMEOUT).status_code == 403
    forged = url.replace(f"signature={query['signature']}", "signature=" + "0" * 64)
    assert requests.get(forged, timeout=TIMEOUT).status_code == 403
    later = url.replace(f"expires={query['expires']}", f"expires={int(query['expires']) + 1}")
    assert requests.get(later, timeout=TIMEOUT).status_code == 403
    unsigned = f"{local.url}/files/{model_id}/epoch-7.pt"
    assert requests.get(unsigned, timeout=TIMEOUT).status_code == 403

    _upload(local, model_id, 9, b"best weights", final=True)
    record = requests.get(f"{local.url}/v1/models/{model_id}", headers=key, timeout=TIMEOUT).json()[
        "data"
    ]
    assert urllib.parse.urlsplit(record["weights"]).path == f"/files/{model_id}/best.pt"
    assert requests.get(record["weights"], timeout=TIMEOUT).content == b"best weights"


def test_signed_urls_expire() -> None:
    now = [1_000_000.0]
    signer = UrlSigner(b"s" * 32, lambda: now[0], ttl=60)
    url = signer.url("http://hub", "a" * 20, "best.pt")
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert signer.check(parts.path, query) is None
    now[0] += 7200  # past the expiry (rounded up to the hour)
    assert signer.check(parts.path, query) == "the URL has expired"
    other = UrlSigner(b"t" * 32, lambda: 0.0)
    assert other.check(parts.path, query) == "the URL's signature does not match"
    assert "s" * 32 not in repr(signer)


def test_create_keeps_integers_up_to_what_json_carries_exactly(local: LocalHub) -> None:
    body = _with(epochs=2**53 - 1, batchSize=-(2**53 - 1))
    key = {"x-api-key": local.api_key}
    reply = requests.post(f"{local.url}/v1/models", json=body, headers=key, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    model_id = reply.json()["data"]["id"]
    url = f"{local.url}/v1/models/{model_id}"
    record = requests.get(url, headers=key, timeout=TIMEOUT).json()["data"]
    assert (record["epochs"], record["batch_size"]) == (2**53 - 1, -(2**53 - 1))
    assert requests.get(f"{local.url}/models/{model_id}", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("digits", [309, 401, 4000])
def test_an_integer_no_json_number_holds_is_refused_at_parse_time(
    local: LocalHub, digits: int
) -> None:
    key = {"x-api-key": local.api_key, "Content-Type": "application/json"}
    huge = "9" * digits
    text = json.dumps(BASE).replace('"epochs": 300', f'"epochs": {huge}')
    reply = requests.post(f"{local.url}/v1/models", data=text, headers=key, timeout=TIMEOUT)
    assert reply.status_code == 400
    assert "integer in 'epochs'" in reply.json()["message"]
    assert requests.get(f"{local.url}/runs.json", timeout=TIMEOUT).json()["runs"] == []
    # Inside an epoch's metrics too: the text is refused, not kept for the pages to choke on.
    ok = requests.post(f"{local.url}/v1/models", json=BASE, headers=key, timeout=TIMEOUT)
    model_id = ok.json()["data"]["id"]
    body = {"type": "metrics", "metrics": {"0": f'{{"loss": {huge}}}'}}
    url = f"{local.url}/v1/models/{model_id}"
    refused = requests.post(url, json=body, headers=key, timeout=TIMEOUT)
    assert refused.status_code == 400 and "integer in 'loss'" in refused.json()["message"]
    # Up to 308 digits is a number a double holds: kept as sent.
    fine = {"type": "metrics", "metrics": {"0": f'{{"loss": {"9" * 308}}}'}}
    assert requests.post(url, json=fine, headers=key, timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{local.url}/", timeout=TIMEOUT).status_code == 200


def _body(extra: object) -> dict[str, Any]:
    return {"lineage": {"architecture": {"name": "yolov8n"}}, "hubfsm": extra}


def test_the_hubfsm_object_beside_the_create_body_is_kept_or_refused_whole() -> None:
    from hubfsm.hub.parse import MAX_TAGS
    from hubfsm.hub.records import new_record

    record = new_record(
        _body({"trainArgs": {"lr0": 0.01, "aug": [1, 2]}, "tags": ["x ", "x", ""], "notes": "n"}),
        "a" * 20,
        1.0,
        "owner",
    )
    assert json.loads(record.params or "") == {"lr0": 0.01, "aug": [1, 2]}
    assert (record.tags, record.notes) == (("x",), "n")
    plain = new_record(_body(None), "a" * 20, 1.0, "owner")
    assert (plain.params, plain.tags, plain.notes) == (None, (), None)
    for bad, said in [
        ({"trainArgs": [1]}, "'hubfsm.trainArgs' must be an object"),
        ({"tags": "x"}, "'hubfsm.tags' must be a list of strings"),
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, "more than"),
        ({"tags": ["t" * 101]}, "longer than 100"),
        ({"notes": 3}, "'hubfsm.notes' must be a string"),
        ({"trainArgs": {"x": "y" * 70_000}}, "larger than"),
        (["no"], "'hubfsm' must be an object"),
    ]:
        with pytest.raises(ValueError, match=said):
            new_record(_body(bad), "a" * 20, 1.0, "owner")
