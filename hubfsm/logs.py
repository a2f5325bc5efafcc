"""Where hubfsm's logs go: the standard :mod:`logging` module, quiet by default.

hubfsm is a library first, so it writes nothing to standard output and leaves the
choice of handlers and levels to the application. Its modules log through structlog
(stable event names, key-value fields); whenever one of them logs while structlog is
not configured (the application has not, or has reset it), structlog is set up to hand
every event to the standard logger of the same name (``hubfsm``, ``hubfsm.http``, ...).
Without any logging set-up, Python's last-resort handler shows warnings and errors on
standard error and drops the rest; an application shows more as it does for any library::

    logging.basicConfig(level=logging.INFO)                  # everything at INFO
    logging.getLogger("hubfsm").setLevel(logging.DEBUG)      # or hubfsm in detail

The ``hubfsm`` command line shows INFO with ``-v`` and DEBUG with ``-vv``, on standard
error (see :func:`configure_cli`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Any, TextIO

import structlog

__all__ = ["configure_cli", "get_logger"]

_lock = threading.Lock()


def _render(logger: Any, method: str, event_dict: structlog.typing.EventDict) -> str:
    """One line: the event name, then its fields as ``key=value`` in the order given."""
    event = str(event_dict.pop("event", ""))
    fields = " ".join(f"{key}={value!r}" for key, value in event_dict.items())
    return f"hubfsm: {event} {fields}".rstrip()


#: The processors of the hand-off: drop what the standard logger would ignore anyway,
#: then render one line for it.
PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.processors.format_exc_info,
    _render,
]


def _hand_to_logging() -> None:
    """Configure structlog to hand every event to :mod:`logging`."""
    structlog.configure(
        processors=list(PROCESSORS),
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _ensure_configured() -> None:
    """Hand structlog's events to :mod:`logging`, unless the application configured it."""
    # Asked at every event, not once: a set-up that ends (structlog.testing.capture_logs,
    # reset_defaults) puts back structlog's defaults, which print to standard output.
    if structlog.is_configured():
        return
    with _lock:
        if not structlog.is_configured():
            _hand_to_logging()


class _Logger:
    """A structlog logger that sets up the hand-off on its first use.

    Each call asks structlog for a logger anew, so a later ``structlog.configure`` by
    the application (or ``structlog.testing.capture_logs``) takes effect at once.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        _ensure_configured()
        getattr(structlog.get_logger(self._name), level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at DEBUG."""
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at INFO."""
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at WARNING."""
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR."""
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled."""
        self._log("exception", event, fields)

    def safely(self, level: str, event: str, **fields: Any) -> None:
        """Log ``event`` at ``level``; a broken log sink must not stop delivery."""
        with contextlib.suppress(Exception):  # there is nowhere left to report it
            self._log(level, event, fields)


def get_logger(name: str) -> _Logger:
    """The logger hubfsm's modules use; ``name`` is also the standard logger's name."""
    return _Logger(name)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = record.levelname.lower()
        return text if level in ("info", "debug") else f"{level}: {text}"


def configure_cli(verbosity: int, stream: TextIO | None = None) -> None:
    """Set up logging for the ``hubfsm`` command: warnings, ``-v`` INFO, ``-vv`` DEBUG.

    Every line goes to ``stream`` (default standard error), never to standard output,
    which carries the command's own results.

    Args:
        verbosity: How many times ``-v`` was given.
        stream: Where the lines go.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    with _lock:
        _hand_to_logging()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    logger = logging.getLogger("hubfsm")
    for old in [h for h in logger.handlers if getattr(h, "_hubfsm_cli", False)]:
        logger.removeHandler(old)
    handler._hubfsm_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    # The command's own handler shows these; the root's would show them twice.
    logger.propagate = False
