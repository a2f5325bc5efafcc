"""Builds every part of a session, fully, from its :class:`~hubfsm.runtime.settings.Settings`.

The same composition serves users and the simulator: a core, a driver with its
durability port, and a shell to run the driver in, either the background worker on the
real clock or the inline shell on a virtual clock.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import attrs

from hubfsm.core import protocol
from hubfsm.core.engine import Core
from hubfsm.core.platform import PLATFORM
from hubfsm.durable.handover import Inbox
from hubfsm.durable.journal import JournalOpener
from hubfsm.durable.layout import HubRoots
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.port import Durability, OutboxOpener, Recovery
from hubfsm.errors import HubfsmError, HubUnavailableError
from hubfsm.logs import get_logger
from hubfsm.runtime.console import Console, hub_name, report_stranded
from hubfsm.runtime.driver import Clock, Driver, Hooks, Observer
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.shells import RealClock, SimRunner, ThreadRunner
from hubfsm.transport import Transport
from transports.settings import DEFAULT_API_ROOT

log = get_logger("hubfsm")

#: Makes a session's core; called like :class:`Core` (a subclass plants a bug in tests).
CoreFactory = Callable[..., Core]

#: A shell: the background worker, or the inline shell.
Shell = ThreadRunner | SimRunner


@attrs.frozen
class Parts:
    """A session's parts, built and wired."""

    settings: Settings
    core: Core
    driver: Driver
    shell: Shell
    durability: Durability | None
    hooks: Hooks = attrs.Factory(Hooks)


def _log_notice(event: str, fields: dict[str, Any]) -> None:
    """A refusal that stops one record or the heartbeats: a warning, and delivery goes on."""
    log.warning(event, **fields)


def http_transport(settings: Settings) -> Transport:
    """The default transport: HTTP to the settings' API root with their key.

    Raises:
        HubfsmError: There is no API key.
    """
    if not settings.api_key and settings.protocol == "platform":
        raise HubfsmError("no Platform API key: pass api_key=, or set ULTRALYTICS_API_KEY")
    if not settings.api_key:
        raise HubfsmError(
            "no API key: pass api_key=, use an 'apiKey_modelId' identifier, or set HUB_API_KEY"
        )
    if settings.protocol == "platform":
        from transports.platform import PlatformTransport

        return PlatformTransport(settings.api_key, api_root=settings.api_root)
    from transports.http import RequestsTransport

    return RequestsTransport(settings.api_key, api_root=settings.api_root)


def build(
    settings: Settings,
    *,
    transport: Transport | None = None,
    clock: Clock | None = None,
    inline: bool = False,
    observer: Observer | None = None,
    on_change: Callable[[str, str, str], None] | None = None,
    rng: random.Random | None = None,
    core_factory: CoreFactory = Core,
    open_outbox: OutboxOpener | None = None,
    recover: Recovery | None = None,
    open_journal: JournalOpener | None = None,
    driver_factory: Callable[..., Driver] = Driver,
    latency: float = 0.0,
    quiet: bool = False,
    **shell_args: Any,
) -> Parts:
    """Build a session's parts.

    Args:
        settings: What the session is built from.
        transport: Where requests go; default HTTP (see :func:`http_transport`).
        clock: The clock; default the monotonic one.
        inline: Run the driver on the calling thread (:class:`SimRunner`) instead of a
            background worker.
        observer: Told of every request and outcome.
        on_change: Told of every state change; default a log line.
        rng: The core's source of jitter; default seeded from the settings.
        core_factory: Makes the core.
        open_outbox: Opens a model's outbox (default the files backend).
        recover: Takes back what an outbox kept (default the real recovery).
        open_journal: Opens the trainer's journal (default :class:`Journal`; a
            simulated disk passes one whose allocation fails as a full disk does).
        driver_factory: Makes the driver, called like :class:`Driver`.
        latency: Seconds each request takes on a virtual clock.
        quiet: Log nothing.
        **shell_args: For the shell (``max_steps``, ``deadline`` inline; ``nap``, ``name``).
    """
    if transport is None:
        transport = http_transport(settings)
        # The outbox records the hub it is made for, so that `hubfsm sync` sends it there.
        api_root = getattr(transport, "api_root", None)
        if open_outbox is None and isinstance(api_root, str):
            open_outbox = functools.partial(Outbox.open, hub=HubRoots(api_root, settings.web_root))
        hub = f"the hub at {hub_name(settings.api_root)}"
    else:
        root = getattr(transport, "api_root", None)
        hub = f"the hub at {root}" if isinstance(root, str) else "the hub"
    hooks = Hooks(told=on_change)
    core = core_factory(
        settings.config,
        rng=rng if rng is not None else random.Random(settings.seed),
        on_change=hooks.changed,
        durable=settings.outbox,
        offline=settings.offline,
    )
    hooks.core = core
    if not quiet:
        core.notify = _log_notice
    inbox = Inbox()
    durability = None
    if settings.outbox:
        kwargs: dict[str, Any] = {} if open_outbox is None else {"open_outbox": open_outbox}
        if recover is not None:
            kwargs["recover"] = recover
        if open_journal is not None:
            kwargs["open_journal"] = open_journal
        durability = Durability(
            settings.outbox_dir, journal=settings.journal, inbox=inbox, quiet=quiet, **kwargs
        )
    driver = driver_factory(
        core,
        transport,
        clock=clock if clock is not None else RealClock(),
        inbox=inbox,
        durability=durability,
        offline=settings.offline,
        observer=observer,
        latency=latency,
        quiet=quiet,
    )
    if not quiet and settings.notify_refusal:
        driver.console = Console(hub, open_timeout=settings.open_timeout)
    shell: Shell = SimRunner(driver, **shell_args) if inline else ThreadRunner(driver, **shell_args)
    return Parts(settings, core, driver, shell, durability, hooks)


#: Seconds opening waits in silence: past them, with no answer yet, it says whom it waits
#: for. Longer than a first contact's patience (5 s), so that a hub that is not there
#: fails with its own error, not after a waiting line.
OPEN_QUIET = 10.0


def open_model(parts: Parts) -> None:
    """Load or create the settings' model and wait for the hub (on the parts' shell).

    A known model's outbox is taken back before the hub is asked, so a final upload
    that landed before a crash can be confirmed instead of refused.

    Raises:
        HubError: The hub refused the key or the model (see its subclasses).
        HubUnavailableError: The hub did not answer within the open timeout.
        OutboxLockedError: Another session holds this model's outbox.
        OSError: The outbox root takes no write (before a model is made on the hub).
    """
    settings, core, shell, durability = parts.settings, parts.core, parts.shell, parts.durability
    parsed = settings.identifier
    log.info("session.contacting", api_root=hub_name(settings.api_root), model_id=parsed.model_id)
    if durability is not None and parsed.model_id is not None:
        durability.attach(parsed.model_id, core, now=shell.clock())
    create = None
    if settings.protocol == "platform":
        create = PLATFORM.train_data(settings.train_args)
    elif parsed.filename is not None:
        create = protocol.create_payload(
            parsed.filename, settings.train_args, name=settings.name, extra=_extension(settings)
        )
    if durability is not None and parsed.model_id is None:  # the hub makes the model
        durability.check_room()
    core.open(parsed, create=create, now=shell.clock())
    shell.start()
    timeout = settings.open_timeout
    opened = shell.wait_for(lambda c: not c.machine.traits.opening, min(OPEN_QUIET, timeout))
    if not opened and timeout > OPEN_QUIET:
        console = parts.driver.console
        if console is not None and shell.alive:
            console.still_opening(shell.clock(), OPEN_QUIET)
        opened = shell.wait_for(lambda c: not c.machine.traits.opening, timeout - OPEN_QUIET)
    if opened and not core.machine.failed:
        if durability is not None and durability.outbox is None:
            # A created model's outbox opens on the driver once the hub gave the id, in
            # the step that took the answer. Not a hand-over to the worker: a known
            # model's worker may already be inside a slow request, resending what its
            # outbox kept, and opening must not wait for that.
            shell.wait_for(
                lambda c: durability.outbox is not None or durability.error is not None, timeout
            )
        if durability is not None and durability.error is not None:
            raise durability.error
        where = None if durability is None else durability.directory
        if parsed.model_id is None and where is not None and parts.driver.console is not None:
            report_stranded(where, settings.api_root, settings.protocol)
        return
    if core.machine.failed and core.error is not None:
        if isinstance(core.error, HubUnavailableError):
            raise HubUnavailableError(f"{core.error}{_public_hint(settings)}")
        raise core.error
    # The worker ends early only when an observer stopped it (sync's first contact).
    within = f"within {timeout:g}s" if shell.alive else "before its session was stopped"
    raise HubUnavailableError(
        f"the hub at {hub_name(settings.api_root)} did not load or create the model "
        f"{within}"
        + (f"; last failure: {core.last_failure}" if core.last_failure else "; nothing answered")
        + _public_hint(settings)
    )


def _extension(settings: Settings) -> dict[str, Any] | None:
    """The create body's ``hubfsm`` object, or None for the public HUB (it said what it drops).

    The public HUB's official client sent only the wire's arguments, so hubfsm sends it
    nothing more; any other hub (the local one, a team's) keeps every argument, the tags
    and the notes, and a HUB v1 server that does not know the key ignores it.
    """
    if hub_name(settings.api_root) != DEFAULT_API_ROOT:
        return protocol.extension(settings.train_args, settings.tags, settings.notes)
    dropped = sorted(str(k) for k in settings.train_args if k not in protocol.WIRE_ARGS)
    if dropped or settings.tags or settings.notes:
        log.warning(
            "session.train_args_not_sent",
            names=dropped,
            tags=len(settings.tags),
            notes=settings.notes is not None,
            reason="the HUB v1 create body carries data, epochs, batch, imgsz, patience, "
            "device and cache only",
        )
    return None


def _public_hint(settings: Settings) -> str:
    """Where to point a session that went to the public HUB API by default."""
    if hub_name(settings.api_root) != DEFAULT_API_ROOT:
        return ""
    return (
        f" ({DEFAULT_API_ROOT}, where a session goes when given no API root, is the "
        "public HUB API, closed since 2026-07-31: pass api_root= or set "
        "ULTRALYTICS_HUB_API to your own hub, such as one `hubfsm hub serve` runs)"
    )
