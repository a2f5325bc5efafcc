"""Callbacks for any training loop: tell the hub what happened, never stop the training.

Example::

    hub = TrainingCallbacks(hubfsm.open("yolov8n.yaml", data="coco8.yaml"), close_at_end=True)
    for epoch in range(epochs):
        ...
        hub.on_epoch_end(epoch, {"train/loss": loss, "metrics/mAP50-95(B)": m})
        hub.on_checkpoint("last.pt", epoch, is_best)
    hub.on_train_end("best.pt", m)

Unlike :class:`~hubfsm.Session`, whose errors are the caller's to handle, these callbacks
log a hub failure (``callbacks.hub_error``, with the ``step`` that failed) and return,
unless ``strict=True``: a trainer should not lose hours of training because the hub
refused a request. What was not delivered stays pending in the session.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from hubfsm.core.plain import plain
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger
from hubfsm.runtime.opener import TrainingSession

__all__ = ["TrainingCallbacks"]

log = get_logger("hubfsm")


def _number(value: Any) -> float:
    number = plain(value)
    try:
        result = float(number)
    except (TypeError, ValueError):
        return 0.0
    return result if math.isfinite(result) else 0.0


class TrainingCallbacks:
    """Events of a training loop, forwarded to a session.

    Args:
        session: The session, from :func:`hubfsm.open` (a null one on other ranks).
        close_at_end: Close the session after :meth:`on_train_end` (when the callbacks
            own it).
        finish_timeout: Seconds :meth:`on_train_end` waits for the final upload.
        strict: Raise hub errors instead of logging them.
    """

    def __init__(
        self,
        session: TrainingSession,
        *,
        close_at_end: bool = False,
        finish_timeout: float = 3600.0,
        strict: bool = False,
    ) -> None:
        self.session = session
        self.close_at_end = close_at_end
        self.finish_timeout = finish_timeout
        self.strict = strict

    def __repr__(self) -> str:
        return f"<TrainingCallbacks session={self.session!r}>"

    def on_train_start(self) -> None:
        """Training begins: start the session if it is not running yet."""
        if self.session.waiting_to_start:
            try:
                self.session.start()
            except HubfsmError as exc:
                self._failed("train_start", exc)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Queue an epoch's metrics (a later call for the same epoch replaces them)."""
        self.on_train_start()
        try:
            self.session.log_metrics(plain(dict(metrics)), epoch=int(epoch))
        except HubfsmError as exc:
            self._failed("epoch_end", exc)

    def on_checkpoint(
        self, path: str | os.PathLike[str], epoch: int, is_best: bool = False
    ) -> None:
        """Offer epoch weights; the session uploads the newest within its rate limit."""
        self.on_train_start()
        try:
            self.session.save_checkpoint(path, epoch=int(epoch), is_best=bool(is_best))
        except (HubfsmError, OSError) as exc:
            self._failed("checkpoint", exc)

    def on_train_end(
        self,
        best_path: str | os.PathLike[str],
        map50_95: Any = 0.0,
        *,
        epoch: int | None = None,
    ) -> bool:
        """Upload the final weights and wait until the hub has them.

        Args:
            best_path: The final (best) weights.
            map50_95: The model's mAP50-95 (a non-finite value is sent as 0).
            epoch: The last epoch; by default the last one logged.

        Returns:
            True when the hub has everything; False when something stays pending (the
            session is then ``resumable``, offline or not, or ``failed`` with its
            ``error`` set).
        """
        self.on_train_start()
        done = False
        try:
            self.session.finish(
                best_path,
                epoch=None if epoch is None else int(epoch),
                map50_95=_number(map50_95),
                timeout=self.finish_timeout,
            )
            # Offline, finish records and returns: the hub has none of it yet.
            done = not any(self.session.pending().values())
        except (HubfsmError, OSError) as exc:
            self._failed("train_end", exc)
        finally:
            if self.close_at_end:
                self.close()
        return done

    def close(self) -> None:
        """Close the session; one not finished becomes ``resumable``.

        A refusal the session has not raised yet (a key revoked mid-run) is logged like
        any hub error, unless ``strict``: closing never stops the trainer either.
        """
        try:
            self.session.close()
        except HubfsmError as exc:
            self._failed("close", exc)

    def _failed(self, event: str, exc: Exception) -> None:
        if self.strict:
            raise exc
        # Final weights the session keeps are named in its own line (its refusal notice,
        # or what it prints on closing), and so is a refusal closing raises; a warning
        # would say it all again.
        kept = event == "close" or (event == "train_end" and self.session.pending()["final"])
        said = log.info if kept else log.warning
        said(
            "callbacks.hub_error",
            step=event,
            error=f"{type(exc).__name__}: {exc}",
            state=self.session.state,
            model_id=self.session.model_id,
            pending=self.session.pending(),
        )
