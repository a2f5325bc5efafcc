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

Distributed training: only the process of global rank 0 talks to the hub. Every rank
runs the same training script, so every rank calls :func:`open` (or registers the same
callbacks). On rank 0 that opens a real :class:`~hubfsm.Session`; on every other rank it
returns a :class:`NullSession`, whose methods do nothing and return at once, so user code
needs no ``if rank == 0``.

The global rank comes from, in this order:

1. the ``RANK`` environment variable, which torchrun, Lightning, Ray Train, DeepSpeed and
   Accelerate set for every worker (a negative value, as ultralytics uses for "not
   distributed", counts as 0);
2. ``torch.distributed.get_rank()`` when ``torch.distributed`` is available and its
   process group is initialized (for launchers such as ``mp.spawn`` that set no ``RANK``);
3. else 0: a single process is the main process.

``LOCAL_RANK`` alone is not used: it is the rank within one node, so on a multi-node job
every node's first worker would take itself for the main process.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from hubfsm import env
from hubfsm.core.answers import TrainingPlan
from hubfsm.core.config import CoreConfig
from hubfsm.core.identifier import Identifier
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger
from hubfsm.runtime.calls import epoch_number, map_value
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import SessionOptions, Settings
from hubfsm.transport import Transport

__all__ = [
    "NullSession",
    "TrainingSession",
    "global_rank",
    "is_main_process",
    "open",
    "start_session",
]

log = get_logger("hubfsm")

RANK_ENV = env.RANK


def _torch_rank() -> int | None:
    # A process group can only be initialized once torch.distributed was imported, so
    # looking in sys.modules answers without importing torch (which takes seconds) and
    # works where torch is not installed at all.
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return int(dist.get_rank())
    except Exception as exc:  # a broken backend must not stop training; the env is empty
        log.warning("distributed.rank_unknown", error=f"{type(exc).__name__}: {exc}")
        return None


def global_rank(environ: Mapping[str, str] | None = None) -> int:
    """The global rank of this process: ``RANK``, else ``torch.distributed``, else 0.

    Args:
        environ: The environment to read; by default ``os.environ``.

    Returns:
        The rank, 0 for the main (or only) process.
    """
    text = env.rank(environ) or ""
    if text:
        try:
            return max(int(text), 0)
        except ValueError:
            log.warning("distributed.bad_rank", variable=RANK_ENV, value=text[:32])
    rank = _torch_rank()
    return 0 if rank is None else max(rank, 0)


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """True on the process of global rank 0, the only one that talks to the hub."""
    return global_rank(environ) == 0


class NullSession:
    """A session that does nothing, for every process but the one of global rank 0.

    It has the surface of :class:`~hubfsm.Session`; every method returns at once and
    sends nothing. ``state`` is always ``"inactive"``.

    Args:
        rank: The global rank of this process.
        identifier: The parsed identifier the session would have used, if any.
    """

    state = "inactive"
    #: Never waiting: :meth:`start` does nothing here.
    waiting_to_start = False
    #: Never training: nothing is sent from here.
    training = False
    model_id: str | None = None
    model_url = ""
    error = None
    run_id: int | None = None
    #: Never cancelled: no answer comes here.
    cancelled = False
    protocol = "hub"

    def __init__(self, rank: int, identifier: Identifier | None = None) -> None:
        self.rank = rank
        self.identifier = identifier

    @property
    def record(self) -> Mapping[str, Any]:
        """Always empty: no model was loaded here."""
        return {}

    @property
    def resume_url(self) -> str | None:
        """Always None."""
        return None

    @property
    def outbox_dir(self) -> Path | None:
        """Always None: nothing is kept."""
        return None

    @property
    def kept(self) -> dict[str, int] | None:
        """Always None: there is no outbox."""
        return None

    @property
    def plan(self) -> TrainingPlan:
        """Not known here: only rank 0 reads the model record.

        Raises:
            HubfsmError: Always, saying to read the plan on rank 0 and share it.
        """
        raise self._rank_zero_only("plan")

    def download_weights(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        deadline: float = 1800.0,
    ) -> Path | None:
        """Not here: only rank 0 knows which weights the plan starts from.

        Raises:
            HubfsmError: Always, saying to download on rank 0 and share the path.
        """
        raise self._rank_zero_only("weights")

    def _rank_zero_only(self, what: str) -> HubfsmError:
        # Training from nothing because another rank returned None would be silent harm.
        return HubfsmError(
            f"rank {self.rank} has no hub session, so no {what}: read it on rank 0 and "
            "share it with the other ranks (e.g. torch.distributed.broadcast_object_list)"
        )

    def rejected(self) -> list[str]:
        """Always empty: nothing was sent."""
        return []

    def pending(self) -> dict[str, int]:
        """Always nothing."""
        return {"metrics": 0, "checkpoint": 0, "final": 0}

    def stats(self) -> dict[str, Any]:
        """Always zero counters."""
        return {
            "sent": {},
            "retries": 0,
            "give_ups": 0,
            "epochs_acknowledged": 0,
            "checkpoints_acknowledged": 0,
        }

    def start(self) -> None:
        """Do nothing."""

    # An epoch rank 0 refuses is refused on every rank, so that no rank goes on alone.

    def log_metrics(self, metrics: Mapping[str, Any], *, epoch: int | None = None) -> None:
        """Do nothing (but refuse an epoch as rank 0 does)."""
        if epoch is not None:
            epoch_number(epoch, "log_metrics")

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, epoch: int, is_best: bool = False
    ) -> None:
        """Do nothing (but refuse an epoch as rank 0 does)."""
        epoch_number(epoch, "save_checkpoint")

    def finish(
        self,
        path: str | os.PathLike[str],
        *,
        epoch: int | None = None,
        map50_95: float = 0.0,
        timeout: float = 3600.0,
    ) -> None:
        """Do nothing (but refuse an epoch or a score as rank 0 does)."""
        if epoch is not None:
            epoch_number(epoch, "finish")
        map_value(map50_95, warn=False)  # rank 0 says it once

    def finish_pending(self, *, timeout: float = 3600.0) -> None:
        """Do nothing."""

    def flush(self, *, timeout: float) -> bool:
        """Return True at once: nothing is pending."""
        return True

    def close(self, *, timeout: float | None = None) -> None:
        """Do nothing."""

    def __enter__(self) -> NullSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        return None

    def __repr__(self) -> str:
        return f"<NullSession rank={self.rank}>"


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

    On a process of global rank other than 0 (see :func:`global_rank`) nothing is sent
    and a :class:`NullSession` comes back.

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
