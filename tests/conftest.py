"""Fixtures for every test: durable state in a temporary directory, and an in-memory hub.

Constants and helpers that test modules import by name are in ``tests/support.py``.
"""

import pytest

from hubfsm.hub.domain import Hub
from hubfsm.hub.store_memory import MemoryStore
from tests.support import KEY


@pytest.fixture(autouse=True)
def _private_outbox(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HUBFSM_OUTBOX", str(tmp_path_factory.mktemp("outbox")))
    monkeypatch.delenv("HUB_API_KEY", raising=False)
    monkeypatch.delenv("ULTRALYTICS_HUB_API", raising=False)
    monkeypatch.delenv("ULTRALYTICS_HUB_WEB", raising=False)
    monkeypatch.delenv("HUBFSM_OFFLINE", raising=False)
    monkeypatch.delenv("ULTRALYTICS_API_KEY", raising=False)
    monkeypatch.delenv("ULTRALYTICS_PLATFORM_URL", raising=False)


@pytest.fixture(autouse=True)
def _restore_structlog():
    """Commands run in-process configure logging; put it back for the next test."""
    import logging

    import structlog

    saved = structlog.get_config()
    logger = logging.getLogger("hubfsm")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    structlog.configure(**saved)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def hub():
    """An in-memory hub that knows ``tests.support.KEY``."""
    return Hub(MemoryStore(), keys=[KEY])
