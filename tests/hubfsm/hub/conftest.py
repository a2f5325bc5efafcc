"""Shared by the local hub's page tests: sample runs shaped like ultralytics' own."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "hub_sample_runs", Path(__file__).with_name("sample_runs.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sample_runs() -> ModuleType:
    """The ``sample_runs`` helpers (create, send_epochs, upload, populate, ...)."""
    return _load()
