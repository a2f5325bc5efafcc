from pathlib import Path

import pytest

from hubfsm.errors import HubfsmError
from hubfsm.runtime.settings import Settings
from tests.support import KEY

MODEL = "AbCdEfGhIjKlMnOpQrSt"

ENV = {
    "HUB_API_KEY": KEY,
    "ULTRALYTICS_HUB_API": "http://127.0.0.1:9",
    "ULTRALYTICS_HUB_WEB": "https://web.example/",
    "HUBFSM_OFFLINE": "yes",
    "HUBFSM_OUTBOX": "/somewhere/outbox",
}


def test_the_environment_fills_in_what_the_arguments_leave_out():
    s = Settings.resolve(MODEL, environ=ENV)
    assert s.api_key == KEY
    assert s.api_root == "http://127.0.0.1:9"
    assert s.web_root == "https://web.example"
    assert s.offline is True
    assert s.outbox_dir == Path("/somewhere/outbox")
    assert s.identifier.model_id == MODEL


def test_arguments_win_over_the_environment():
    s = Settings.resolve(
        MODEL,
        environ=ENV,
        api_key="a" * 42,
        api_root="http://127.0.0.1:8",
        web_root="https://other.example",
        offline=False,
        outbox_dir="/elsewhere",
    )
    assert (s.api_key, s.api_root, s.web_root, s.offline, s.outbox_dir) == (
        "a" * 42, "http://127.0.0.1:8", "https://other.example", False, Path("/elsewhere"),
    )


def test_nothing_set_gives_the_defaults():
    s = Settings.resolve("yolov8n.yaml", environ={}, train_args={"data": "coco8"})
    assert s.api_key is None and s.api_root is None and s.outbox_dir is None
    assert s.offline is False and s.outbox and s.journal
    assert s.identifier.filename == "yolov8n.yaml" and s.train_args == {"data": "coco8"}


def test_the_key_is_not_in_the_settings_repr():
    assert KEY not in repr(Settings.resolve(MODEL, environ=ENV))


def test_offline_needs_a_model_id_and_the_outbox():
    with pytest.raises(HubfsmError, match="model id"):
        Settings.resolve("yolov8n.yaml", environ={"HUBFSM_OFFLINE": "1"})
    with pytest.raises(HubfsmError, match="outbox"):
        Settings.resolve(MODEL, environ={}, offline=True, outbox=False)


@pytest.mark.parametrize(
    ("api_root", "environ", "web_root"),
    [
        ("http://127.0.0.1:8000", {}, "http://127.0.0.1:8000"),
        ("https://hub.team.example/api/", {}, "https://hub.team.example"),
        (None, {"ULTRALYTICS_HUB_API": "http://127.0.0.1:8000"}, "http://127.0.0.1:8000"),
        ("https://api.ultralytics.com", {}, "https://hub.ultralytics.com"),
        (None, {}, "https://hub.ultralytics.com"),
        ("http://127.0.0.1:8000", {"ULTRALYTICS_HUB_WEB": "https://web.example"},
         "https://web.example"),
    ],
)
def test_a_hub_other_than_the_public_one_has_its_pages_on_its_own_origin(
    api_root, environ, web_root
):
    s = Settings.resolve(MODEL, api_root=api_root, environ=environ)
    assert s.web_root == web_root


def test_a_model_url_of_the_api_roots_origin_parses_without_a_web_root():
    url = f"http://127.0.0.1:8000/models/{MODEL}"
    s = Settings.resolve(url, api_root="http://127.0.0.1:8000", environ={})
    assert s.identifier.model_id == MODEL


def test_a_sessions_name_tags_and_notes_are_resolved_per_dialect():
    hub = Settings.resolve(
        "yolov8n.yaml", name="baseline", tags="seed=1", notes="n", environ={}
    )
    assert (hub.name, hub.tags, hub.notes) == ("baseline", ("seed=1",), "n")
    assert Settings.resolve("yolov8n.yaml", tags=["a", "b"], environ={}).tags == ("a", "b")
    with pytest.raises(TypeError, match="tags are strings"):
        Settings.resolve("yolov8n.yaml", tags=[1], environ={})
    # On Platform the name is the run's, unless the training arguments name it already.
    run = Settings.resolve("owner/proj", protocol="platform", name="run7", environ={})
    assert run.identifier.run_name == "run7" and run.train_args["name"] == "run7"
    given = Settings.resolve(
        "owner/proj", protocol="platform", name="run7", train_args={"name": "r"}, environ={}
    )
    assert given.identifier.run_name == "r"
