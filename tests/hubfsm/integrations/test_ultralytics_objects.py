from __future__ import annotations

import json
import sys
import types

import pytest

from hubfsm.integrations.ultralytics_objects import CREATE_ARGS, create_args


def test_create_args_take_only_the_record_arguments_a_dict_or_namespace_holds():
    given = {"data": "coco8.yaml", "epochs": 3, "batch": None, "lr0": 0.01}
    # The user's keywords as given: an explicit None stays, an unknown name does not.
    assert create_args(given) == {"data": "coco8.yaml", "epochs": 3, "batch": None}
    resolved = types.SimpleNamespace(**{**dict.fromkeys(CREATE_ARGS), "epochs": 5, "imgsz": 64})
    # A trainer's resolved arguments name everything; the unset ones are dropped.
    assert create_args(resolved, drop_none=True) == {"epochs": 5, "imgsz": 64}
    assert create_args(resolved)["device"] is None
    assert create_args(None, drop_none=True) == {}


def test_every_arg_keeps_each_argument_a_dict_or_namespace_holds():
    from hubfsm.integrations.ultralytics_objects import every_arg

    resolved = types.SimpleNamespace(lr0=0.01, epochs=5, model=None, _private=1)
    assert every_arg(resolved, drop_none=True) == {"lr0": 0.01, "epochs": 5}
    assert every_arg(resolved)["model"] is None
    assert every_arg({"lr0": 0.02, "name": "exp"}) == {"lr0": 0.02, "name": "exp"}
    assert every_arg(None) == {}


# -- the key `yolo login` saved -------------------------------------------------------

PLATFORM = "ul_" + "0123456789abcdef" * 2 + "01234567"
HUB = "a1B2c3D4e5" * 4 + "xY"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_saved_key_is_read_from_each_ultralytics_versions_settings(tmp_path):
    from hubfsm.integrations.ultralytics_objects import saved_key

    env = {"YOLO_CONFIG_DIR": str(tmp_path)}
    assert saved_key(platform=True, environ=env) is None
    assert saved_key(platform=False, environ=env) is None
    # 8.2: YAML in YOLO_CONFIG_DIR itself, a HUB key; never offered to Platform.
    _write(tmp_path / "settings.yaml", f"datasets_dir: /d\napi_key: {HUB}\nsync: true\n")
    assert saved_key(platform=False, environ=env) == HUB
    assert saved_key(platform=True, environ=env) is None
    # 8.3: JSON beside it wins over the YAML.
    _write(tmp_path / "settings.json", json.dumps({"api_key": "q" * 42}))
    assert saved_key(platform=False, environ=env) == "q" * 42
    # 8.4: JSON in an Ultralytics folder, a Platform key; the HUB key is still found.
    _write(tmp_path / "Ultralytics" / "settings.json", json.dumps({"api_key": PLATFORM}))
    assert saved_key(platform=True, environ=env) == PLATFORM
    assert saved_key(platform=False, environ=env) == "q" * 42


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux layout")
def test_the_saved_key_is_found_in_the_default_config_directory(tmp_path):
    from hubfsm.integrations.ultralytics_objects import saved_key, settings_files

    env = {"HOME": str(tmp_path)}
    folder = tmp_path / ".config" / "Ultralytics"
    assert settings_files(env)[0] == folder / "settings.json"
    _write(folder / "settings.json", json.dumps({"api_key": PLATFORM}))
    assert saved_key(platform=True, environ=env) == PLATFORM
    xdg = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert settings_files(xdg)[0] == tmp_path / "xdg" / "Ultralytics" / "settings.json"
    # 8.4 follows XDG_CONFIG_HOME; 8.2 and 8.3 kept to ~/.config, where the key still is.
    assert saved_key(platform=True, environ=xdg) == PLATFORM


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        json.dumps(["api_key", PLATFORM]),
        json.dumps({"api_key": 7}),
        json.dumps({"api_key": "  "}),
        json.dumps({"api_key": PLATFORM, "pad": "x" * (64 * 1024)}),  # not a settings file
    ],
    ids=["empty", "broken", "a-list", "a-number", "blank", "too-big"],
)
def test_a_settings_file_without_a_usable_key_gives_none(tmp_path, text):
    from hubfsm.integrations.ultralytics_objects import saved_key

    _write(tmp_path / "Ultralytics" / "settings.json", text)
    assert saved_key(platform=True, environ={"YOLO_CONFIG_DIR": str(tmp_path)}) is None


def test_an_unreadable_settings_file_is_passed_over(tmp_path):
    from hubfsm.integrations.ultralytics_objects import saved_key

    (tmp_path / "Ultralytics" / "settings.json").mkdir(parents=True)  # a folder, not a file
    _write(tmp_path / "settings.json", json.dumps({"api_key": PLATFORM}))
    assert saved_key(platform=True, environ={"YOLO_CONFIG_DIR": str(tmp_path)}) == PLATFORM
