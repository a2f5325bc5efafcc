from __future__ import annotations

import types

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
