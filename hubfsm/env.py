"""The environment variables hubfsm reads, and the one place each is read.

A ground module (it imports nothing of hubfsm), so the transports read the API root
here too. An empty variable counts as unset. An argument always wins over the
environment: callers pass what they were given first, and come here only without it.
Each function takes an ``environ`` mapping to read instead of ``os.environ``, for tests
and for :meth:`hubfsm.runtime.settings.Settings.resolve`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: The API key, when none is passed and the identifier holds none.
API_KEY = "HUB_API_KEY"
#: The API root requests go to.
API_ROOT = "ULTRALYTICS_HUB_API"
#: The web root: model URLs must start with it.
WEB_ROOT = "ULTRALYTICS_HUB_WEB"
#: The outbox root.
OUTBOX = "HUBFSM_OUTBOX"
#: Turns offline mode on (``1``, ``true`` or ``yes``).
OFFLINE = "HUBFSM_OFFLINE"
#: Where downloaded weights are cached.
CACHE = "HUBFSM_CACHE"
#: The global rank of a distributed training process (set by torchrun and the like).
RANK = "RANK"
#: The Platform API key (``ul_`` and 40 hex digits), as ultralytics 8.4 reads it.
PLATFORM_API_KEY = "ULTRALYTICS_API_KEY"
#: The Platform API root, as ultralytics 8.4 reads it.
PLATFORM_URL = "ULTRALYTICS_PLATFORM_URL"
#: Where ultralytics keeps its settings (``yolo login`` saves the key there).
YOLO_CONFIG_DIR = "YOLO_CONFIG_DIR"

Environ = Mapping[str, str]


def read(name: str, environ: Environ | None = None) -> str | None:
    """The variable ``name``, or None when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(name)
    return value or None


def api_key(environ: Environ | None = None) -> str | None:
    """``HUB_API_KEY``, or None."""
    return read(API_KEY, environ)


def api_root(environ: Environ | None = None) -> str | None:
    """``ULTRALYTICS_HUB_API``, or None."""
    return read(API_ROOT, environ)


def web_root(environ: Environ | None = None) -> str | None:
    """``ULTRALYTICS_HUB_WEB``, or None."""
    return read(WEB_ROOT, environ)


def outbox_root(environ: Environ | None = None) -> str | None:
    """``HUBFSM_OUTBOX``, or None."""
    return read(OUTBOX, environ)


def offline(environ: Environ | None = None) -> bool:
    """True when ``HUBFSM_OFFLINE`` is ``1``, ``true`` or ``yes`` (any case)."""
    return (read(OFFLINE, environ) or "").strip().lower() in ("1", "true", "yes")


def cache_root(environ: Environ | None = None) -> str | None:
    """``HUBFSM_CACHE``, or None."""
    return read(CACHE, environ)


def rank(environ: Environ | None = None) -> str | None:
    """``RANK`` (stripped), or None."""
    return (read(RANK, environ) or "").strip() or None


def platform_api_key(environ: Environ | None = None) -> str | None:
    """``ULTRALYTICS_API_KEY``, or None."""
    return read(PLATFORM_API_KEY, environ)


def platform_url(environ: Environ | None = None) -> str | None:
    """``ULTRALYTICS_PLATFORM_URL``, or None."""
    return read(PLATFORM_URL, environ)


def s3_region(environ: Environ | None = None) -> str:
    """The S3 region a team hub's object store is in (``AWS_REGION``, ``AWS_DEFAULT_REGION``)."""
    return read("AWS_REGION", environ) or read("AWS_DEFAULT_REGION", environ) or "us-east-1"


def s3_endpoint(environ: Environ | None = None) -> str | None:
    """A self-hosted S3 store's address (``AWS_ENDPOINT_URL``), if one is set."""
    return read("AWS_ENDPOINT_URL", environ)


def yolo_config_dir(environ: Environ | None = None) -> str | None:
    """``YOLO_CONFIG_DIR``, or None."""
    return read(YOLO_CONFIG_DIR, environ)


def config_home(environ: Environ | None = None) -> str | None:
    """``XDG_CONFIG_HOME`` (where Linux programs keep their settings), or None."""
    return read("XDG_CONFIG_HOME", environ)


def home(environ: Environ | None = None) -> str | None:
    """``HOME``, or None."""
    return read("HOME", environ)
