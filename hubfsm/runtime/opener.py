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

from hubfsm.core.config import CoreConfig
from hubfsm.logs import get_logger
from hubfsm.runtime.distributed import NullSession, global_rank
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import SessionOptions, Settings
from hubfsm.transport import Transport

__all__ = ["TrainingSession", "open", "start_session"]

log = get_logger("hubfsm")

#: What :func:`open` returns: a real session on global rank 0, a null one elsewhere.
TrainingSession: TypeAlias = Session | NullSession


def open(  # noqa: D417 - the options are described once, on Settings
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

    The options named in the signature are the session's, each described, with its
    default, as the :class:`~hubfsm.runtime.settings.Settings` field of its name; they
    are spelled out here (not taken as ``**options``) because every other keyword is a
    training argument.

    Args:
        identifier: A model URL, ``apiKey_modelId`` or model id to train an existing
            model, or a local ``.pt``/``.yaml`` to create a new model from.
        transport: Where requests go (tests pass an in-memory transport).
        on_cancel: Called once when the service says the run was cancelled (Platform).
        **train_args: For a local file, the training configuration in ultralytics' names
            (:attr:`~hubfsm.runtime.settings.Settings.train_args`). ``name`` stays a
            training argument, as in ultralytics (Platform: the run's name);
            :class:`~hubfsm.runtime.session.Session` takes a HUB v1 model's name.

    Returns:
        A session in state ``training``, usable as a context manager.

    Raises:
        IdentifierError: The identifier is in none of the accepted forms (on every rank).
        HubError: The hub refused the key or the model (see its subclasses).
        HubUnavailableError: The hub did not answer within ``open_timeout``.
    """
    options: SessionOptions = {
        "api_key": api_key,
        "config": config,
        "api_root": api_root,
        "web_root": web_root,
        "open_timeout": open_timeout,
        "outbox_dir": outbox_dir,
        "offline": offline,
        "journal": journal,
        "exit_timeout": exit_timeout,
        "handle_signals": handle_signals,
        "protocol": protocol,
        "tags": tags,
        "notes": notes,
        "train_args": train_args,
    }
    # Resolving is pure, so every rank fails alike on a bad identifier rather than rank 0
    # alone failing while the others wait for it at their first collective.
    settings = Settings.resolve(os.fspath(identifier), **options)
    return start_session(settings, transport=transport, on_cancel=on_cancel)


def start_session(
    settings: Settings,
    *,
    transport: Transport | None = None,
    on_cancel: Callable[[], None] | None = None,
) -> TrainingSession:
    """A started session on ``settings`` (rank 0), or a null one (every other rank).

    Raises:
        HubError: The hub refused the key or the model (see its subclasses).
        HubUnavailableError: The hub did not answer within ``settings.open_timeout``.
    """
    identifier = settings.identifier
    rank = global_rank()
    if rank != 0:
        log.info("session.inactive", rank=rank, model_id=identifier.model_id)
        return NullSession(rank, identifier)
    if identifier.model_id is not None and settings.train_args and settings.protocol == "hub":
        log.warning(
            "session.train_args_ignored",
            model_id=identifier.model_id,
            names=sorted(settings.train_args),
        )
    session = Session.compose(build(settings, transport=transport), on_cancel=on_cancel)
    try:
        session.start()
    except BaseException:
        session.close(timeout=0.0)
        raise
    return session
