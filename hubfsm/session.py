"""The facade trainers call: :class:`Session`.

Every call from the training thread returns at once, except opening (which waits for
the hub to load or create the model) and :meth:`Session.finish` (which waits for the
final upload). The work happens on one background worker.
"""

from __future__ import annotations

import os
import random
import types
from collections.abc import Mapping
from typing import Any

import structlog

from hubfsm import protocol
from hubfsm.core import Core, CoreConfig
from hubfsm.errors import DeliveryIncomplete, HubfsmError, HubUnavailableError, IllegalEventError
from hubfsm.files import describe
from hubfsm.identifier import DEFAULT_WEB_ROOT, WEB_ROOT_ENV, Identifier, parse_identifier
from hubfsm.runner import ThreadRunner
from hubfsm.transport import Transport

log = structlog.get_logger("hubfsm")

_SETTLED = ("done", "resumable", "failed")


def _log_change(model: list[str | None]) -> Any:
    def changed(source: str, event: str, dest: str) -> None:
        if source != dest:
            log.info(
                "session.transition", model_id=model[0], source=source, trigger=event, dest=dest
            )

    return changed


class Session:
    """A training session on the hub, for one model.

    Args:
        identifier: A model URL, ``apiKey_modelId``, a model id, or a local
            ``.pt``/``.yaml`` to create a model from.
        api_key: The API key; else the one in ``identifier``; else ``HUB_API_KEY``.
        transport: Where requests go; default an HTTP transport to ``api_root``.
        api_root: The API root for the default transport (else ``ULTRALYTICS_HUB_API``).
        web_root: The web root for model URLs (else ``ULTRALYTICS_HUB_WEB``).
        train_args: For a local file: training arguments in ultralytics' names
            (``data``, ``epochs``, ``batch``, ``imgsz``, ``patience``, ``device``, ``cache``).
        config: Limits and retry policies of the core.
        open_timeout: Seconds to wait for the hub to load or create the model.
        seed: Seeds the jitter, for reproducible runs.

    Raises:
        IdentifierError: The identifier is in none of the accepted forms.
        HubError: The hub refused the key or the model (see its subclasses).
        HubUnavailableError: The hub did not answer within ``open_timeout``.
    """

    def __init__(
        self,
        identifier: str,
        *,
        api_key: str | None = None,
        transport: Transport | None = None,
        api_root: str | None = None,
        web_root: str | None = None,
        train_args: Mapping[str, Any] | None = None,
        config: CoreConfig | None = None,
        open_timeout: float = 120.0,
        seed: int | None = None,
    ) -> None:
        self.web_root = (web_root or os.environ.get(WEB_ROOT_ENV) or DEFAULT_WEB_ROOT).rstrip("/")
        parsed = parse_identifier(identifier, web_root=self.web_root)
        self.identifier: Identifier = parsed
        if transport is None:
            key = api_key or parsed.api_key or os.environ.get("HUB_API_KEY")
            if not key:
                raise HubfsmError(
                    "no API key: pass api_key=, use an 'apiKey_modelId' identifier, "
                    "or set HUB_API_KEY"
                )
            from transports.http import RequestsTransport

            transport = RequestsTransport(key, api_root=api_root)
        self._model_box: list[str | None] = [parsed.model_id]
        core = Core(config, rng=random.Random(seed), on_change=_log_change(self._model_box))
        self._core = core
        self._runner = ThreadRunner(core, transport)
        self._inbox = self._runner.inbox
        self._wake = self._runner.wake
        self._accepting = False
        self._next_epoch = 0
        self._finished = False
        create = None
        if parsed.filename is not None:
            create = protocol.create_payload(parsed.filename, train_args or {})
        core.open(parsed, create=create, now=self._runner.clock())
        self._runner.start()
        opened = self._runner.wait_for(lambda c: c.state != "resolved", open_timeout)
        if not opened or core.state == "failed":
            error = core.error
            self._runner.stop(timeout=0.0)
            if core.state == "failed" and error is not None:
                raise error
            raise HubUnavailableError(
                f"the hub did not load or create the model within {open_timeout:g}s"
                + (f"; last failure: {core.last_failure}" if core.last_failure else "")
            )
        self._model_box[0] = core.model_id
        log.info("session.opened", model_id=core.model_id, state=core.state)

    # -- read-only views ------------------------------------------------------------

    @property
    def state(self) -> str:
        """The session's state (see the state machine in the docs)."""
        return self._core.state

    @property
    def model_id(self) -> str | None:
        """The hub's id of the model."""
        return self._core.model_id

    @property
    def model_url(self) -> str:
        """The model's page on the hub's web site."""
        return f"{self.web_root}/models/{self._core.model_id}"

    @property
    def record(self) -> Mapping[str, Any]:
        """The model record the hub sent when the model was loaded."""
        return self._core.record

    @property
    def error(self) -> HubfsmError | None:
        """The error that stopped the session, if any."""
        return self._core.error

    def pending(self) -> dict[str, int]:
        """What the hub has not acknowledged yet, per channel (a snapshot)."""
        return self._core.pending()

    def stats(self) -> dict[str, Any]:
        """Counters of requests, retries and deliveries (a snapshot)."""
        s = self._core.stats
        return {
            "sent": dict(s.sent),
            "retries": s.retries,
            "give_ups": s.give_ups,
            "epochs_acknowledged": s.acknowledged_epochs,
            "checkpoints_acknowledged": s.checkpoints,
        }

    def __repr__(self) -> str:
        return f"<Session model={self._core.model_id} state={self._core.state}>"

    # -- what the trainer calls -----------------------------------------------------

    def start(self) -> None:
        """Training begins: heartbeats start. Returns once the session is ``training``."""
        self._check("start", ("created", "loaded"))
        self._runner.submit(lambda core, now: core.start(now=now))
        self._runner.wait_for(lambda c: c.state not in ("created", "loaded"), 10.0)
        self._raise_job_errors()
        self._accepting = self._core.state == "training"

    def log_metrics(self, metrics: Mapping[str, Any], *, epoch: int | None = None) -> None:
        """Queue one epoch's metrics; returns at once.

        Args:
            metrics: Metric names to numbers (anything JSON can encode).
            epoch: The epoch; by default the one after the last logged, from 0.
        """
        if not self._accepting:
            raise IllegalEventError(self._core.state, "epoch_end")
        if epoch is None:
            epoch = self._next_epoch
        self._next_epoch = epoch + 1
        item = dict(metrics)
        self._inbox.append(lambda core, now: core.epoch_end(epoch, item, now=now))
        if not self._wake.is_set():
            self._wake.set()

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, epoch: int, is_best: bool = False
    ) -> None:
        """Offer epoch weights for upload; returns at once.

        The newest offer wins: uploads go at most every 900 s (the first at once).
        """
        if not self._accepting:
            raise IllegalEventError(self._core.state, "checkpoint")
        file = os.fspath(path)
        os.stat(file)  # a missing file is the caller's error, raised here and now

        def job(core: Core, now: float) -> None:
            core.checkpoint(epoch, describe(file, "last.pt"), is_best=is_best, now=now)

        self._runner.submit(job)

    def finish(
        self,
        path: str | os.PathLike[str],
        *,
        epoch: int | None = None,
        map50_95: float = 0.0,
        timeout: float = 3600.0,
    ) -> None:
        """Send what is pending, then upload the final weights; waits until the hub has them.

        Args:
            path: The final (best) weights.
            epoch: The last epoch; by default the last one logged.
            map50_95: The model's mAP50-95, sent with the weights.
            timeout: Seconds to wait; past it the session becomes ``resumable``.

        Raises:
            DeliveryIncomplete: The upload did not complete within ``timeout``.
            HubError: The hub refused the upload.
        """
        if not self._accepting:
            raise IllegalEventError(self._core.state, "finish")
        self._accepting = False
        last = self._next_epoch - 1 if epoch is None else epoch
        # finish() blocks anyway, so the caller's thread may read the file.
        part = describe(path, "best.pt")

        def job(core: Core, now: float) -> None:
            core.finish(max(last, 0), part, map50_95=map50_95, now=now, timeout=timeout)

        self._runner.submit(job)
        self._runner.wait_for(lambda c: c.state in _SETTLED, timeout + 5.0)
        self._finished = True
        self._raise_job_errors()
        state = self._core.state
        if state == "done":
            log.info("session.finished", model_id=self._core.model_id, **self.stats())
            return
        error = self._core.error
        if error is not None:
            raise error
        raise DeliveryIncomplete(f"final upload incomplete (state {state})", self.pending())

    def close(self, *, timeout: float = 30.0) -> None:
        """End the session: send what can be sent within ``timeout`` seconds, then stop.

        A session closed before :meth:`finish` becomes ``resumable``.
        """
        if self._accepting:
            self._accepting = False
            self._runner.submit(lambda core, now: core.interrupt(now=now))
        self._runner.stop(timeout=timeout)
        pending = self._core.pending()
        if any(pending.values()):
            left = ", ".join(f"{n} {k}" for k, n in pending.items() if n)
            log.warning(
                "session.closed_with_pending",
                model_id=self._core.model_id,
                pending=left,
                state=self._core.state,
            )

    def __enter__(self) -> Session:
        if self._core.state in ("created", "loaded"):
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def _check(self, event: str, states: tuple[str, ...]) -> None:
        if self._core.state not in states:
            raise IllegalEventError(self._core.state, event)

    def _raise_job_errors(self) -> None:
        errors = self._runner.job_errors
        if errors:
            raise errors.pop(0)
