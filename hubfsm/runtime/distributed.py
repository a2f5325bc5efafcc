"""Distributed training: only the process of global rank 0 talks to the hub.

Every rank runs the same training script, so every rank calls :func:`hubfsm.open` (or
registers the same callbacks). On rank 0 that opens a real :class:`~hubfsm.Session`; on
every other rank it returns a :class:`NullSession`, whose methods do nothing and return at
once, so user code needs no ``if rank == 0``.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hubfsm import env
from hubfsm.core.identifier import Identifier
from hubfsm.core.plan import TrainingPlan
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger

__all__ = ["NullSession", "global_rank", "is_main_process"]

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

    def log_metrics(self, metrics: Mapping[str, Any], *, epoch: int | None = None) -> None:
        """Do nothing."""

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, epoch: int, is_best: bool = False
    ) -> None:
        """Do nothing."""

    def finish(
        self,
        path: str | os.PathLike[str],
        *,
        epoch: int | None = None,
        map50_95: float = 0.0,
        timeout: float = 3600.0,
    ) -> None:
        """Do nothing."""

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
