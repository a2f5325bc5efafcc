"""A session's settings, resolved once at the edge: arguments, then environment, then defaults.

Every environment variable a session depends on is resolved here, in
:meth:`Settings.resolve`, through :mod:`hubfsm.env` (the one module that reads the
environment); the parts of a session are then built from this one frozen value (see
:mod:`hubfsm.runtime.factory`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from hubfsm import env as environment
from hubfsm.core.config import CoreConfig
from hubfsm.core.identifier import (
    DEFAULT_WEB_ROOT,
    Identifier,
    parse_identifier,
    parse_platform_identifier,
)
from hubfsm.core.platform import PLATFORM, PLATFORM_API_ROOT, choose
from hubfsm.errors import HubfsmError
from transports.settings import DEFAULT_API_ROOT

#: The API key, when none is passed or in the identifier.
API_KEY_ENV = environment.API_KEY
#: The API root of the default HTTP transport.
API_ROOT_ENV = environment.API_ROOT
#: Turns offline mode on (``1``, ``true`` or ``yes``).
OFFLINE_ENV = environment.OFFLINE
#: The outbox root.
OUTBOX_ENV = environment.OUTBOX
#: The Platform API key.
PLATFORM_API_KEY_ENV = environment.PLATFORM_API_KEY
#: The Platform API root; when set, sessions speak the Platform dialect.
PLATFORM_URL_ENV = environment.PLATFORM_URL


def web_root_of(api_root: str | None) -> str:
    """The web root that goes with an API root, when none is given.

    The public API's pages are on the public web root; any other hub (the local one, a
    team's) serves its model pages on the API's own origin.
    """
    if not api_root or api_root.rstrip("/") == DEFAULT_API_ROOT:
        return DEFAULT_WEB_ROOT
    parts = urlsplit(api_root.strip())
    if not parts.scheme or not parts.netloc:
        return DEFAULT_WEB_ROOT
    return f"{parts.scheme}://{parts.netloc}"


@attrs.frozen
class Settings:
    """Everything a session is built from (see :class:`~hubfsm.runtime.session.Session`).

    Attributes:
        api_key: The key for the default HTTP transport (never shown in a repr).
        at_exit: Close the session at interpreter exit (the simulator's sessions do not).
        notify_refusal: Say once on stderr when a refusal stops sending (``hubfsm sync``
            reports refusals on its own output instead).
        protocol: The dialect spoken: ``hub`` or ``platform``.
        name: The run's name on the hub (None: the hub's default).
        tags: Labels for the run (a hubfsm hub keeps them; see :class:`Session`).
        notes: Free text about the run (a hubfsm hub keeps it).
    """

    identifier: Identifier
    web_root: str = DEFAULT_WEB_ROOT
    api_key: str | None = attrs.field(default=None, repr=False)
    api_root: str | None = None
    train_args: Mapping[str, Any] = attrs.field(factory=dict)
    config: CoreConfig = CoreConfig()
    open_timeout: float = 120.0
    seed: int | None = None
    outbox: bool = True
    journal: bool = True
    outbox_dir: Path | None = None
    offline: bool = False
    exit_timeout: float = 10.0
    handle_signals: bool = False
    at_exit: bool = True
    notify_refusal: bool = True
    protocol: str = "hub"
    name: str | None = None
    tags: tuple[str, ...] = ()
    notes: str | None = None

    @classmethod
    def resolve(
        cls,
        identifier: str,
        *,
        api_key: str | None = None,
        api_root: str | None = None,
        web_root: str | None = None,
        train_args: Mapping[str, Any] | None = None,
        config: CoreConfig | None = None,
        open_timeout: float = 120.0,
        seed: int | None = None,
        outbox: bool = True,
        journal: bool = True,
        outbox_dir: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        exit_timeout: float = 10.0,
        handle_signals: bool = False,
        environ: Mapping[str, str] | None = None,
        protocol: str | None = None,
        name: str | None = None,
        tags: Iterable[str] | str | None = None,
        notes: str | None = None,
    ) -> Settings:
        """Resolve a session's settings from its arguments, the environment and defaults.

        The dialect is ``protocol`` when given; else Platform for a ``ul_`` key, a
        ``ul://`` identifier, a set ``ULTRALYTICS_PLATFORM_URL``, or a ``ul_`` key in
        ``ULTRALYTICS_API_KEY`` (and no HUB identifier); else HUB v1. For Platform the
        key defaults to ``ULTRALYTICS_API_KEY`` and the API root to
        ``ULTRALYTICS_PLATFORM_URL``, else ``https://platform.ultralytics.com``.

        Raises:
            IdentifierError: The identifier is in none of the accepted forms.
            HubfsmError: Offline mode without a model id or without the outbox.
            ValueError: ``protocol`` names no dialect.
        """
        platform_url = environment.platform_url(environ)
        platform_key = environment.platform_api_key(environ)
        dialect = choose(
            protocol,
            api_key=api_key,
            identifier=identifier,
            platform_url=platform_url,
            platform_key=platform_key,
            hub_key=environment.api_key(environ),
        )
        args = dict(train_args or {})
        if dialect is PLATFORM and name is not None:
            # A Platform run's name is its name in the project: the argument that says it.
            args.setdefault("name", name)
        if dialect is PLATFORM:
            api_key = api_key or platform_key
            if api_root is None:
                api_root = platform_url or PLATFORM_API_ROOT
            config = (
                CoreConfig(limits=PLATFORM.limits, protocol="platform")
                if config is None
                else attrs.evolve(config, protocol="platform")
            )
        api = api_root if api_root is not None else environment.api_root(environ)
        web = (web_root or environment.web_root(environ) or web_root_of(api)).rstrip("/")
        if dialect is PLATFORM:
            name = args.get("name")
            parsed = parse_platform_identifier(
                identifier, name=None if name is None else str(name)
            )
        else:
            parsed = parse_identifier(identifier, web_root=web)
        if offline is None:
            offline = environment.offline(environ)
        if offline and parsed.model_id is None:
            raise HubfsmError(
                "offline mode needs an existing model id: create the model online first"
            )
        if offline and not outbox:
            raise HubfsmError("offline mode needs the outbox: it is where everything waits")
        root = outbox_dir if outbox_dir is not None else environment.outbox_root(environ)
        return cls(
            identifier=parsed,
            web_root=web,
            api_key=api_key or parsed.api_key or environment.api_key(environ),
            api_root=api,
            train_args=args,
            config=config or CoreConfig(),
            protocol=dialect.name,
            open_timeout=open_timeout,
            seed=seed,
            outbox=outbox,
            journal=journal,
            outbox_dir=None if root is None else Path(root),
            offline=offline,
            exit_timeout=exit_timeout,
            handle_signals=handle_signals,
            name=name,
            tags=tags_of(tags),
            notes=notes,
        )


def tags_of(tags: Iterable[str] | str | None) -> tuple[str, ...]:
    """A run's tags as a tuple of text; one string is one tag (not its letters)."""
    if tags is None:
        return ()
    if isinstance(tags, str):
        return (tags,)
    found = tuple(tags)
    for tag in found:
        if not isinstance(tag, str):
            raise TypeError(f"tags are strings, not {type(tag).__name__}")
    return found
