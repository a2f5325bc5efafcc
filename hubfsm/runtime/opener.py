"""The entry point for custom training loops: :func:`open`, a started session in one call.

Example::

    with hubfsm.open("yolov8n.yaml", data="coco8.yaml", epochs=3) as run:
        for epoch in range(3):
            ...
            run.log_metrics({"train/loss": loss}, epoch=epoch)
            run.save_checkpoint("last.pt", epoch=epoch)
        run.finish("best.pt", map50_95=0.42)

An exception inside the block leaves the session ``resumable``: what could be sent within
the close deadline was sent, the rest stays pending, and the exception propagates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from hubfsm import env as environment
from hubfsm.core.config import CoreConfig
from hubfsm.core.identifier import parse_identifier, parse_platform_identifier
from hubfsm.core.platform import PLATFORM, choose
from hubfsm.logs import get_logger
from hubfsm.runtime.distributed import NullSession, global_rank
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import web_root_of
from hubfsm.transport import Transport

__all__ = ["TrainingSession", "open"]

log = get_logger("hubfsm")

#: What :func:`open` returns: a real session on global rank 0, a null one elsewhere.
TrainingSession: TypeAlias = Session | NullSession


def open(
    identifier: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    transport: Transport | None = None,
    config: CoreConfig | None = None,
    api_root: str | None = None,
    web_root: str | None = None,
    open_timeout: float = 120.0,
    outbox_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    journal: bool = True,
    exit_timeout: float = 10.0,
    handle_signals: bool = False,
    protocol: str | None = None,
    on_cancel: Callable[[], None] | None = None,
    tags: Iterable[str] | str | None = None,
    notes: str | None = None,
    **train_args: Any,
) -> TrainingSession:
    """Open a training session on the hub and start it (heartbeats begin).

    On a process of global rank other than 0 (see :mod:`hubfsm.runtime.distributed`) nothing is
    sent and a :class:`~hubfsm.runtime.distributed.NullSession` comes back.

    Args:
        identifier: A model URL, ``apiKey_modelId`` or model id to train an existing
            model, or a local ``.pt``/``.yaml`` to create a new model from.
        api_key: The API key; else the one in ``identifier``; else ``HUB_API_KEY``.
        transport: Where requests go (tests pass an in-memory transport).
        config: Limits and retry policies of the core.
        api_root: The API root for the default HTTP transport.
        web_root: The web root for model URLs (else ``ULTRALYTICS_HUB_WEB``, else the
            API root's origin for any hub but the public one).
        open_timeout: Seconds to wait for the hub to load or create the model.
        outbox_dir: The outbox root (see :class:`~hubfsm.runtime.session.Session`).
        offline: Record everything and send nothing, for ``hubfsm sync`` later.
        journal: Write each trainer call to the crash-safe journal first.
        exit_timeout: Seconds closing (and interpreter exit) spends sending.
        handle_signals: Also flush on SIGTERM/SIGINT, then chain to the old handlers.
        protocol: ``hub`` or ``platform``; by default chosen as
            :meth:`~hubfsm.runtime.settings.Settings.resolve` says.
        on_cancel: Called once when the service says the run was cancelled (Platform).
        tags: For a new model, labels a hubfsm hub keeps (see
            :class:`~hubfsm.runtime.session.Session`).
        notes: For a new model, free text a hubfsm hub keeps.
        **train_args: For a local file, the training configuration in ultralytics' names.
            The HUB v1 wire carries ``data``, ``epochs``, ``batch``, ``imgsz``,
            ``patience``, ``device`` and ``cache``; a hubfsm hub keeps every name.
            ``name`` stays a training argument, as in ultralytics (Platform: the run's
            name); :class:`~hubfsm.runtime.session.Session` takes a HUB v1 model's name.
            An existing model keeps the configuration the hub has for it.

    Returns:
        A session in state ``training``, usable as a context manager.

    Raises:
        IdentifierError: The identifier is in none of the accepted forms (on every rank).
        HubError: The hub refused the key or the model (see its subclasses).
        HubUnavailableError: The hub did not answer within ``open_timeout``.
    """
    text = os.fspath(identifier)
    # Parsing is pure, so every rank fails alike on a bad identifier rather than rank 0
    # alone failing while the others wait for it at their first collective.
    dialect = choose(
        protocol,
        api_key=api_key,
        identifier=text,
        platform_url=environment.platform_url(),
        platform_key=environment.platform_api_key(),
        hub_key=environment.api_key(),
    )
    if dialect is PLATFORM:
        name = train_args.get("name")
        parsed = parse_platform_identifier(text, name=None if name is None else str(name))
    else:
        web = web_root or environment.web_root() or web_root_of(api_root or environment.api_root())
        parsed = parse_identifier(text, web_root=web)
    rank = global_rank()
    if rank != 0:
        log.info("session.inactive", rank=rank, model_id=parsed.model_id)
        return NullSession(rank, parsed)
    if parsed.model_id is not None and train_args and dialect is not PLATFORM:
        log.warning(
            "session.train_args_ignored", model_id=parsed.model_id, names=sorted(train_args)
        )
    session = Session(
        text,
        api_key=api_key,
        transport=transport,
        api_root=api_root,
        web_root=web_root,
        train_args=train_args,
        config=config,
        open_timeout=open_timeout,
        outbox_dir=outbox_dir,
        offline=offline,
        journal=journal,
        exit_timeout=exit_timeout,
        handle_signals=handle_signals,
        protocol=dialect.name,
        on_cancel=on_cancel,
        tags=tags,
        notes=notes,
    )
    try:
        session.start()
    except BaseException:
        session.close(timeout=0.0)
        raise
    return session
