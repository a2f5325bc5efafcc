"""Model records kept beside the outboxes, for offline runs: kept owner-only, read with care."""

import json
import stat

import pytest

from hubfsm.durable.layout import MAX_BYTES, keep_record, kept_record, record_path

MODEL = "A" * 20


def test_a_kept_record_reads_back_owner_only_and_a_newer_one_replaces_it(tmp_path):
    assert kept_record(MODEL, tmp_path) is None
    keep_record(MODEL, {"id": MODEL, "data": "coco8.yaml"}, tmp_path)
    path = record_path(MODEL, tmp_path)
    assert path == tmp_path / "records" / f"{MODEL}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    keep_record(MODEL, {"id": MODEL, "data": "other.yaml"}, tmp_path)
    assert kept_record(MODEL, tmp_path) == {"id": MODEL, "data": "other.yaml"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[1, 2]", json.dumps({"id": "B" * 20}).encode(), b" " * (MAX_BYTES + 1)],
    ids=["garbage", "not-an-object", "another-model", "too-big"],
)
def test_a_record_that_is_not_this_models_counts_as_absent(tmp_path, content):
    path = record_path(MODEL, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert kept_record(MODEL, tmp_path) is None


def test_a_record_that_cannot_be_kept_is_only_logged(tmp_path):
    (tmp_path / "records").write_text("a file where the directory should be")
    keep_record(MODEL, {"id": MODEL}, tmp_path)  # no exception: training goes on
    assert kept_record(MODEL, tmp_path) is None


def test_only_a_model_id_names_a_record(tmp_path):
    with pytest.raises(ValueError, match="not a model id"):
        record_path("../../etc/passwd", tmp_path)
