"""Fixtures for every test: durable state in a temporary directory, and an in-memory hub.

Constants and helpers that test modules import by name are in ``tests/support.py``.
"""

import pytest
from hypothesis import HealthCheck, settings

from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore
from tests.support import KEY

# Hypothesis times each example (a 200 ms deadline) and its input generation (the
# too_slow health check) by the wall clock: on a loaded machine those measure the load,
# not the code, and fail a property whose every example holds. Registered before the
# test modules are imported, so that their @settings build on it.
settings.register_profile(
    "hubfsm", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("hubfsm")


@pytest.fixture(autouse=True)
def _private_outbox(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HUBFSM_OUTBOX", str(tmp_path_factory.mktemp("outbox")))
    monkeypatch.delenv("HUB_API_KEY", raising=False)
    monkeypatch.delenv("ULTRALYTICS_HUB_API", raising=False)
    monkeypatch.delenv("ULTRALYTICS_HUB_WEB", raising=False)
    monkeypatch.delenv("HUBFSM_OFFLINE", raising=False)
    monkeypatch.delenv("ULTRALYTICS_API_KEY", raising=False)
    monkeypatch.delenv("ULTRALYTICS_PLATFORM_URL", raising=False)
    # A key `yolo login` saved on this machine must not reach a test (sync reads it).
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))


@pytest.fixture(autouse=True)
def _restore_structlog():
    """Commands run in-process configure logging; put it back for the next test."""
    import logging

    import structlog

    saved, configured = structlog.get_config(), structlog.is_configured()
    logger = logging.getLogger("hubfsm")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    if configured:
        structlog.configure(**saved)
    else:
        # configure() with the defaults would count as an application's set-up, which
        # hubfsm keeps: its events would then print to standard output.
        structlog.reset_defaults()
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def hub():
    """An in-memory hub that knows ``tests.support.KEY``."""
    return Hub(MemoryStore(), keys=[KEY])


#: The default run tries this share of each property's examples (at least ten); the run
#: of the tests marked slow tries them all.
QUICK_SHARE = 10


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each property twice: a few examples by default, all of them with ``-m slow``."""
    if getattr(metafunc.function, "is_hypothesis_test", False):
        full = pytest.param("full", marks=pytest.mark.slow)
        metafunc.parametrize("_examples", ["quick", full], indirect=True)


@pytest.fixture(autouse=True)
def _examples(request):
    """For a property's quick run, a share of the examples its settings ask for."""
    if getattr(request, "param", None) != "quick":
        yield
        return
    test = getattr(request.function, "__func__", request.function)
    full = test._hypothesis_internal_use_settings
    quick = max(10, full.max_examples // QUICK_SHARE)
    test._hypothesis_internal_use_settings = settings(full, max_examples=quick)
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = full
