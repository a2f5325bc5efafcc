"""Shared by the local hub's page tests: sample runs shaped like ultralytics' own."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests import services


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


def _missing(reason: str) -> None:
    # CI sets HUBFSM_TEST_SERVICES=required: there a missing server is a failure, not a skip.
    if os.environ.get("HUBFSM_TEST_SERVICES") == "required":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the session: its admin URL (skips without one)."""
    if importlib.util.find_spec("psycopg") is None:
        _missing("the team extra (psycopg) is not installed")
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(services.postgres())
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            _missing(f"no PostgreSQL server: {error}")
        yield url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[services.S3Server]:
    """A real S3 server (SeaweedFS) for the session (skips without one)."""
    if importlib.util.find_spec("boto3") is None:
        _missing("the team extra (boto3) is not installed")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(services.s3())
        except (RuntimeError, OSError) as error:
            _missing(f"no S3 server: {error}")
        yield server


@pytest.fixture
def team(
    postgres_server: str, s3_server: services.S3Server, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """A fresh migrated database and a fresh prefix of the S3 bucket: their URLs."""
    from hubfsm.hub.admin import migrate

    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    database = services.new_database(postgres_server)
    migrate(database)
    return database, f"s3://{s3_server.bucket}/{secrets.token_hex(6)}"
