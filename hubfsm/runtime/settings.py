"""A session's settings, resolved once at the edge: arguments, then environment, then defaults.

Every environment variable a session depends on is resolved here, in
:meth:`Settings.resolve`, through :mod:`hubfsm.env` (the one module that reads the
environment); the parts of a session are then built from this one frozen value (see
:mod:`hubfsm.runtime.factory`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
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

if TYPE_CHECKING:
    from typing_extensions import Unpack

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


class SessionOptions(TypedDict, total=False):
    """A session's options, as :class:`~hubfsm.Session` takes them as keywords.

    Each is the :class:`Settings` field of the same name, where its meaning and its
    default are (an option left out takes the default, or the environment where the
    field says so); the types here are the ones a caller may pass, which
    :meth:`Settings.resolve` turns into the field's. A test checks the two agree.
    """

    api_key: str | None
    api_root: str | None
    web_root: str | None
    train_args: Mapping[str, Any] | None
    config: CoreConfig | None
    open_timeout: float
    seed: int | None
    outbox: bool
    journal: bool
    outbox_dir: str | os.PathLike[str] | None
    offline: bool | None
    exit_timeout: float
    handle_signals: bool
    protocol: str | None
    name: str | None
    tags: Iterable[str] | str | None
    notes: str | None


@attrs.frozen
class Settings:
    """Everything a session is built from: its options, resolved (see :meth:`resolve`).

    The fields a caller may set are the session's options (:class:`SessionOptions`),
    taken by :class:`~hubfsm.Session`, :func:`hubfsm.open` and the integrations;
    ``identifier``, ``at_exit`` and ``notify_refusal`` are set by hubfsm itself.
    """

    identifier: Identifier
    """The model, parsed: a model URL, ``apiKey_modelId``, a model id, or a local
    ``.pt``/``.yaml`` to create a model from. For Platform, ``owner/project`` (the run
    named by ``train_args["name"]``, default ``train``), ``owner/project/run``, or the
    model id of a run to continue."""
    web_root: str = DEFAULT_WEB_ROOT
    """The web root for model URLs (else ``ULTRALYTICS_HUB_WEB``, else the API root's
    origin for any hub but the public one: the local hub serves its model pages there)."""
    api_key: str | None = attrs.field(default=None, repr=False)
    """The API key (never shown in a repr); else the one in the identifier; else
    ``HUB_API_KEY`` (Platform: ``ULTRALYTICS_API_KEY``)."""
    api_root: str | None = None
    """The API root for the default HTTP transport (else ``ULTRALYTICS_HUB_API``;
    Platform: ``ULTRALYTICS_PLATFORM_URL``, else ``https://platform.ultralytics.com``)."""
    train_args: Mapping[str, Any] = attrs.field(factory=dict)
    """For a local file: training arguments in ultralytics' names. The HUB v1 wire
    carries ``data``, ``epochs``, ``batch``, ``imgsz``, ``patience``, ``device`` and
    ``cache`` (the others are logged as not sent to the public HUB); a hubfsm hub keeps
    every one, and Platform sends every one as text. An existing model keeps the
    configuration the hub has for it."""
    config: CoreConfig = CoreConfig()
    """Limits and retry policies of the core."""
    open_timeout: float = 120.0
    """Seconds to wait for the hub to load or create the model."""
    seed: int | None = None
    """Seeds the jitter, for reproducible runs."""
    outbox: bool = True
    """Keep what the hub has not acknowledged on disk."""
    journal: bool = True
    """With the outbox, also write each trainer call to a memory-mapped journal before
    it returns, so ``kill -9`` loses nothing. Without it a call is a few microseconds
    cheaper when the caches are cold, and a kill loses what the worker had not filed
    yet: at most its last quarter second, plus the request it was in."""
    outbox_dir: Path | None = None
    """The outbox root (else ``HUBFSM_OUTBOX``, else the user data dir)."""
    offline: bool = False
    """Record everything and send nothing, for ``hubfsm sync`` later (else
    ``HUBFSM_OFFLINE``); needs a model id."""
    exit_timeout: float = 10.0
    """Seconds :meth:`~hubfsm.Session.close` (and interpreter exit) spends sending, at
    most: it ends once nothing left is due before then (a checkpoint the hub's interval
    holds back); one at most once :meth:`~hubfsm.Session.finish` gave up on a hub that
    does not answer."""
    handle_signals: bool = False
    """Also flush on SIGTERM/SIGINT, then chain to the old handlers."""
    at_exit: bool = True
    """Close the session at interpreter exit (the simulator's sessions do not)."""
    notify_refusal: bool = True
    """Say once on stderr when a refusal stops sending (``hubfsm sync`` reports
    refusals on its own output instead)."""
    protocol: str = "hub"
    """The dialect spoken, ``hub`` or ``platform``; by default chosen from the key's
    form and the environment (see :meth:`resolve`)."""
    name: str | None = None
    """For a new model, its name on the hub (HUB v1's ``meta.name``, default the file's
    base name; Platform: the run's name, as ``train_args["name"]``)."""
    tags: tuple[str, ...] = ()
    """For a new model, labels a hubfsm hub keeps and shows (not sent to the public HUB,
    whose wire has no room for them; Platform: not sent). One string is one tag."""
    notes: str | None = None
    """For a new model, free text a hubfsm hub keeps and shows (as ``tags``)."""

    def __attrs_post_init__(self) -> None:
        # Settings made directly (the simulator makes them so) skip resolve(), which
        # gives Platform its root; without this, messages and notices named the HUB's.
        if self.api_root is None and self.protocol == PLATFORM.name:
            object.__setattr__(self, "api_root", PLATFORM_API_ROOT)

    @classmethod
    def resolve(
        cls,
        identifier: str,
        *,
        environ: Mapping[str, str] | None = None,
        **options: Unpack[SessionOptions],
    ) -> Settings:
        """Resolve a session's settings from its options, the environment and defaults.

        The dialect is ``protocol`` when given; else Platform for a ``ul_`` key, a
        ``ul://`` identifier, a set ``ULTRALYTICS_PLATFORM_URL``, or a ``ul_`` key in
        ``ULTRALYTICS_API_KEY`` (and no HUB identifier); else HUB v1. For Platform the
        key defaults to ``ULTRALYTICS_API_KEY`` and the API root to
        ``ULTRALYTICS_PLATFORM_URL``, else ``https://platform.ultralytics.com``.

        Raises:
            TypeError: An option that is none of :class:`SessionOptions`.
            IdentifierError: The identifier is in none of the accepted forms.
            HubfsmError: Offline mode without a model id or without the outbox.
            ValueError: ``protocol`` names no dialect.
        """
        check_options(options, train_args_hint=True)
        api_key = options.get("api_key")
        api_root = options.get("api_root")
        config = options.get("config")
        name = options.get("name")
        platform_url = environment.platform_url(environ)
        platform_key = environment.platform_api_key(environ)
        dialect = choose(
            options.get("protocol"),
            api_key=api_key,
            identifier=identifier,
            platform_url=platform_url,
            platform_key=platform_key,
            hub_key=environment.api_key(environ),
        )
        args = dict(options.get("train_args") or {})
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
        web = (options.get("web_root") or environment.web_root(environ) or web_root_of(api)).rstrip(
            "/"
        )
        if dialect is PLATFORM:
            name = args.get("name")
            parsed = parse_platform_identifier(identifier, name=None if name is None else str(name))
        else:
            parsed = parse_identifier(identifier, web_root=web)
        offline = options.get("offline")
        if offline is None:
            offline = environment.offline(environ)
        outbox_dir = options.get("outbox_dir")
        root = outbox_dir if outbox_dir is not None else environment.outbox_root(environ)
        # An option the lines below do not resolve is taken as given; one left out
        # keeps the field's default.
        fields: dict[str, Any] = dict(options)
        fields.update(
            identifier=parsed,
            web_root=web,
            api_key=api_key or parsed.api_key or environment.api_key(environ),
            api_root=api,
            train_args=args,
            config=config or CoreConfig(),
            protocol=dialect.name,
            outbox_dir=None if root is None else Path(root),
            offline=offline,
            name=name,
            tags=tags_of(options.get("tags")),
        )
        settings = cls(**fields)
        if offline and parsed.model_id is None:
            raise HubfsmError(
                "offline mode needs an existing model id: create the model online first"
            )
        if offline and not settings.outbox:
            raise HubfsmError("offline mode needs the outbox: it is where everything waits")
        return settings


#: The names of the session's options.
OPTIONS = frozenset(SessionOptions.__annotations__)


def check_options(options: Mapping[str, object], *, train_args_hint: bool = False) -> None:
    """Refuse, as a call would, a keyword that is none of the session's options.

    Args:
        options: The keywords given.
        train_args_hint: Say where a training argument goes (``Session`` takes them as
            ``train_args``, where ``Session(..., epochs=3)`` is an easy slip).

    Raises:
        TypeError: Naming the first such keyword.
    """
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, sorted(OPTIONS), n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
        elif train_args_hint:
            hint = (
                f"; a training argument goes in train_args={{{name!r}: ...}} "
                "(hubfsm.open() takes them as keywords)"
            )
        else:
            hint = ""
        raise TypeError(f"unexpected keyword argument {name!r}{hint}")


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
