import inspect
import re
from pathlib import Path

import attrs
import pytest

import hubfsm
from hubfsm.core.config import CoreConfig
from hubfsm.errors import HubfsmError
from hubfsm.integrations.ultralytics import add_callbacks, install
from hubfsm.integrations.ultralytics_callbacks import UltralyticsCallbacks
from hubfsm.integrations.ultralytics_platform import PlatformCallbacks
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import OPTIONS, Settings
from tests.support import KEY
from transports.memory import InMemoryTransport

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


def test_the_options_are_the_fields_of_settings_a_caller_may_set():
    fields = {field.name for field in attrs.fields(Settings)}
    assert set(OPTIONS) == fields - {"identifier", "at_exit", "notify_refusal"}


def test_help_on_session_names_every_option():
    # help(hubfsm.Session) showed only "**options: Unpack[SessionOptions]".
    named = set(re.findall(r"``(\w+)``", hubfsm.Session.__doc__.split("Raises:")[0]))
    assert set(OPTIONS) <= named, sorted(set(OPTIONS) - named)


def test_every_option_given_lands_in_its_field():
    s = Settings.resolve(
        "yolov8n.yaml",
        environ={},
        api_key="k" * 42,
        api_root="http://127.0.0.1:8",
        web_root="https://web.example",
        train_args={"epochs": 3},
        config=CoreConfig().scaled(0.5),
        open_timeout=1.5,
        seed=7,
        outbox=False,
        journal=False,
        outbox_dir="/x",
        offline=False,
        exit_timeout=2.5,
        handle_signals=True,
        protocol="hub",
        name="n",
        tags="t",
        notes="notes",
    )
    assert attrs.asdict(s, recurse=False) | {"identifier": None} == {
        "identifier": None,
        "api_key": "k" * 42,
        "api_root": "http://127.0.0.1:8",
        "web_root": "https://web.example",
        "train_args": {"epochs": 3},
        "config": CoreConfig().scaled(0.5),
        "open_timeout": 1.5,
        "seed": 7,
        "outbox": False,
        "journal": False,
        "outbox_dir": Path("/x"),
        "offline": False,
        "exit_timeout": 2.5,
        "handle_signals": True,
        "at_exit": True,
        "notify_refusal": True,
        "protocol": "hub",
        "name": "n",
        "tags": ("t",),
        "notes": "notes",
    }


def test_an_option_no_session_takes_is_refused_as_a_call_would_be(hub):
    with pytest.raises(TypeError, match="'open_timout'"):
        Settings.resolve(MODEL, environ={}, open_timout=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'open_timout'"):
        Session(MODEL, transport=InMemoryTransport(hub, KEY), open_timout=1.0)
    with pytest.raises(TypeError, match="'open_timout'"):
        UltralyticsCallbacks(MODEL, open_timout=1.0)
    with pytest.raises(TypeError, match="'open_timout'"):
        PlatformCallbacks(open_timout=1.0)
    with pytest.raises(TypeError, match="'open_timout'"):
        install(open_timout=1.0)


@pytest.mark.parametrize("function", [hubfsm.open, add_callbacks], ids=lambda f: f.__name__)
def test_a_signature_that_spells_options_out_has_the_settings_defaults(function):
    # open() and add_callbacks() take every other keyword as a training argument, so they
    # name their options; passing their defaults must be the same as leaving them out.
    spelled = {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if name in OPTIONS and parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert len(spelled) >= 7
    for identifier in ("yolov8n.yaml", MODEL, "ul://owner/proj"):
        assert Settings.resolve(identifier, environ={}, **spelled) == Settings.resolve(
            identifier, environ={}
        )


def test_platform_settings_made_without_an_api_root_name_the_platform_not_the_hub():
    # resolve() sets the root; settings made directly (as the simulator makes them)
    # must not fall back to the HUB's, which messages and notices would then name.
    settings = Settings(identifier=hubfsm.parse_identifier("m" * 20), protocol="platform")
    assert settings.api_root == "https://platform.ultralytics.com"
    assert Settings(identifier=settings.identifier).api_root is None
    given = Settings(identifier=settings.identifier, protocol="platform", api_root="http://h")
    assert given.api_root == "http://h"
