"""Keep every test's durable state inside its own temporary directory."""

import pytest


@pytest.fixture(autouse=True)
def _private_outbox(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HUBFSM_OUTBOX", str(tmp_path_factory.mktemp("outbox")))
    monkeypatch.delenv("HUB_API_KEY", raising=False)
    monkeypatch.delenv("ULTRALYTICS_HUB_API", raising=False)
    monkeypatch.delenv("ULTRALYTICS_HUB_WEB", raising=False)
    monkeypatch.delenv("HUBFSM_OFFLINE", raising=False)


@pytest.fixture(autouse=True)
def _restore_structlog():
    """Commands run in-process configure structlog; put it back for the next test."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
