"""A stand-in for ultralytics' ``HUBTrainingSession``, built on :class:`~hubfsm.Session`.

ultralytics (8.2.x and 8.3.x, which have ``ultralytics.hub``) uses it in place of its own
once :func:`~hubfsm.integrations.ultralytics.install` ran.

It has the public surface that ultralytics' ``Model`` and its stock HUB callbacks
(``ultralytics/utils/callbacks/hub.py``) use: ``create_session``, ``load_model``,
``create_model``, ``client.authenticated``, ``model.id``, ``model_url``, ``model_file``,
``train_args``, ``metrics_queue``, ``metrics_upload_failed_queue``, ``timers``,
``rate_limits``, ``upload_metrics``, ``upload_model`` and ``alive``. Nothing of hub-sdk
runs: no request from it, no heartbeat thread of its own, no signal handler.

Differences from the official class, on purpose:

- ``rate_limits`` for metrics and checkpoints are 0, so the stock callbacks hand over
  every epoch and every ``last.pt``; hubfsm applies the hub's limits itself (metrics
  every 3 s, checkpoints every 900 s with the first at once) and never drops the last
  epochs' metrics at the end.
- ``model_file`` of a pretrained or resumed model is the weights file hubfsm downloaded
  (cached, checked, owner-only), not a URL for ultralytics to fetch.
- ``metrics_upload_failed_queue`` stays empty: what the hub has not acknowledged waits
  in hubfsm's outbox, and a crash does not lose it.
- A hub failure during training is logged and leaves the data pending (``hubfsm sync``
  delivers it); training goes on, as with the official client.
- Epoch weights wait for their epoch's metrics: ultralytics saves a checkpoint
  (``on_model_save``) before it reports the epoch (``on_fit_epoch_end``), and weights
  sent first could reach the hub while a kill in between lost their epoch's metrics, so
  a resumed run would start after an epoch the hub never heard of. The checkpoint is
  offered when the metrics are handed over (the file is not rewritten in between).

The API key is, in this order: the one inside the identifier (``KEY_MODELID``), the one
in ultralytics' settings (``yolo login``), ``HUB_API_KEY``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from hubfsm import env
from hubfsm.core.identifier import parse_identifier
from hubfsm.errors import HubfsmError, ModelTrainedError
from hubfsm.integrations.ultralytics_objects import every_arg, settings_key
from hubfsm.logs import get_logger
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import SessionOptions

__all__ = ["HUBTrainingSession", "StandInOptions"]

log = get_logger("hubfsm")


@attrs.frozen
class StandInOptions:
    """What :func:`~hubfsm.integrations.ultralytics.install` was given, for every session.

    Attributes:
        session: The session's options (see :class:`~hubfsm.runtime.settings.SessionOptions`).
        finish_timeout: Seconds the end of training waits for the final upload.
        cache_dir: Where downloaded weights are cached.
        progress: Show a progress bar while weights download.
    """

    session: SessionOptions = attrs.field(factory=lambda: SessionOptions())
    finish_timeout: float = 3600.0
    cache_dir: str | None = None
    progress: bool = True


class _Client:
    """What ultralytics reads of hub-sdk's client: ``authenticated`` (no request made)."""

    def __init__(self, authenticated: bool) -> None:
        self.authenticated = authenticated

    def __repr__(self) -> str:
        return f"<hubfsm client authenticated={self.authenticated}>"


class _Model:
    """What ultralytics reads of hub-sdk's model: ``id`` and ``data`` (the record)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.data: Mapping[str, Any] = {}

    def stop_heartbeat(self) -> None:
        """Nothing to do: heartbeats belong to the session and stop when it ends."""

    def __repr__(self) -> str:
        return f"<hubfsm model id={self.id}>"


class HUBTrainingSession:
    """ultralytics' ``HUBTrainingSession`` on top of :class:`~hubfsm.Session`.

    Args:
        identifier: A model URL, ``KEY_MODELID``, a model id, or a local ``.pt``/``.yaml``.

    Raises:
        IdentifierError: The identifier is in none of the accepted forms.
        HubfsmError: A model id was given but no API key is known.
        ModelTrainedError: The model is trained already.
        RecordError: The record lacks what training needs (the dataset may still be
            processing).
    """

    options: ClassVar[StandInOptions] = StandInOptions()

    def __init__(self, identifier: str) -> None:
        self.rate_limits: dict[str, float] = {"metrics": 0.0, "ckpt": 0.0, "heartbeat": 300.0}
        self.metrics_queue: dict[Any, str] = {}
        self.metrics_upload_failed_queue: dict[Any, str] = {}
        self.timers: dict[str, float] = {}
        self.model = _Model()
        self.model_url: str | None = None
        self.model_file: str | None = None
        self.train_args: dict[str, Any] | None = None
        self.model_id: str | None = None
        self.session: Session | None = None
        # The newest epoch whose metrics went to the session, and epoch weights waiting
        # for their epoch's metrics.
        self._logged_epoch = -1
        self._waiting: tuple[int, str | os.PathLike[str], bool] | None = None
        opts = self.options
        parsed = parse_identifier(os.fspath(identifier), web_root=opts.session.get("web_root"))
        self.filename = parsed.filename
        key = parsed.api_key or settings_key() or env.api_key()

        def given_key() -> str | None:
            return key

        # A closure keeps the key out of repr() and vars().
        self._key = given_key
        self.client = _Client(bool(key))
        if parsed.model_id is not None:
            if not key:
                raise HubfsmError(
                    "no API key for the hub model: use a 'KEY_MODELID' identifier, "
                    "'yolo login KEY', or set HUB_API_KEY"
                )
            self.load_model(parsed.model_id)

    def __repr__(self) -> str:
        return f"<hubfsm HUBTrainingSession model={self.model.id} session={self.session!r}>"

    @classmethod
    def create_session(
        cls, identifier: str, args: Mapping[str, Any] | None = None
    ) -> HUBTrainingSession | None:
        """A session for ``identifier``, or None when there is no key or no model (8.3.x).

        With ``args`` and a local file, the model is created on the hub from them.
        """
        try:
            session = cls(identifier)
        except HubfsmError as exc:
            log.warning("ultralytics.hub_session_unavailable", error=str(exc))
            return None
        if not session.client.authenticated:
            return None
        if args and session.filename is not None:
            session.create_model(args)
            if not session.model.id:
                return None
        return session

    def _open(self, identifier: str, train_args: Mapping[str, Any] | None = None) -> Session:
        options = self.options.session.copy()
        options["api_key"] = self._key()
        options["train_args"] = train_args
        return Session(identifier, **options)

    def _adopt(self, session: Session) -> None:
        self.session = session
        self.model.id = self.model_id = session.model_id
        self.model.data = session.record
        self.model_url = session.model_url
        session.start()
        log.info("ultralytics.hub_session", model_id=session.model_id, url=session.model_url)
        print(f"hubfsm: view model at {session.model_url}", file=sys.stderr)

    def load_model(self, model_id: str) -> None:
        """Load a model: its plan gives ``train_args`` and ``model_file`` (weights downloaded).

        Raises:
            ModelTrainedError: The model is trained already, or its last run ended and
                its final weights, kept in the outbox, were sent now.
            RecordError: The record lacks what training needs.
            DownloadError: The weights could not be downloaded.
        """
        session = self._open(model_id)
        try:
            if session.pending()["final"]:
                # The last run ended, killed (or offline) before its final weights reached
                # the hub: training is over. Send them, as `hubfsm sync` would, rather
                # than train the last epochs again and replace them.
                session.finish_pending(timeout=self.options.finish_timeout)
                raise ModelTrainedError(
                    f"model {session.model_id} finished training: the final weights its "
                    "last run kept are on the hub now; create a new model to train again"
                )
            plan = session.plan
            weights = session.download_weights(
                cache_dir=self.options.cache_dir, progress=self.options.progress
            )
        except BaseException:
            session.close(timeout=0.0)
            raise
        self.train_args = dict(plan.train_args)
        self.model_file = str(weights) if weights is not None else _v5u(plan.model_file)
        self._adopt(session)

    def create_model(self, model_args: Mapping[str, Any]) -> None:
        """Create the model on the hub from the user's training arguments.

        Like the official client, a failure (a refused key, an unreachable hub) is
        logged and leaves ``model.id`` None, so ultralytics trains without the hub.
        """
        if self.filename is None:
            raise HubfsmError("create_model needs a session opened from a local .pt/.yaml")
        try:
            # Every argument: the wire carries its own few, a hubfsm hub keeps them all.
            session = self._open(self.filename, every_arg(model_args))
        except HubfsmError as exc:
            # INFO: the line below is the one for people.
            log.info("ultralytics.create_failed", error=str(exc))
            print(f"hubfsm: the hub did not create the model: {exc}", file=sys.stderr)
            return
        self._adopt(session)

    # -- what the stock callbacks call ----------------------------------------------

    def upload_metrics(self) -> None:
        """Hand the queued epochs to the session (it sends them within the hub's limits)."""
        session = self.session
        queued, self.metrics_queue = self.metrics_queue, {}
        if session is None:
            return
        for epoch, text in sorted(queued.items(), key=lambda item: int(item[0])):
            try:
                metrics = json.loads(text) if isinstance(text, str) else dict(text)
                session.log_metrics(metrics, epoch=int(epoch))
            except HubfsmError as exc:
                log.warning("ultralytics.metrics_not_queued", epoch=epoch, error=str(exc))
            self._logged_epoch = max(self._logged_epoch, int(epoch))
        waiting = self._waiting
        if waiting is not None and waiting[0] <= self._logged_epoch:
            self._waiting = None
            self._offer(session, *waiting)

    def upload_model(
        self,
        epoch: int,
        weights: str | os.PathLike[str],
        is_best: bool = False,
        map: float = 0.0,  # noqa: A002 - ultralytics' own keyword
        final: bool = False,
    ) -> None:
        """Offer epoch weights, or (``final``) upload the final weights and wait for the hub."""
        session = self.session
        if session is None:
            return
        if not Path(weights).is_file():
            log.warning("ultralytics.weights_missing", path=os.fspath(weights))
            return
        if not final:
            if int(epoch) <= self._logged_epoch:
                self._offer(session, int(epoch), weights, bool(is_best))
            else:
                # Offered once the epoch's metrics are handed over (see the module's notes);
                # a newer save replaces it.
                self._waiting = (int(epoch), weights, bool(is_best))
            return
        self.upload_metrics()  # anything the callbacks still hold goes before the weights
        self._waiting = None  # the final weights supersede epoch weights
        try:
            session.finish(
                weights,
                epoch=int(epoch),
                map50_95=float(map),
                timeout=self.options.finish_timeout,
            )
        except HubfsmError as exc:
            # INFO: final weights the session keeps are named in its own line (its refusal
            # notice, or what it prints on closing, with the sync command); a line here
            # would say it all again.
            log.info("ultralytics.final_upload_failed", model_id=session.model_id, error=str(exc))
            if not session.pending()["final"]:
                print(
                    f"hubfsm: the final weights of model {session.model_id} did not go to "
                    f"the hub: {exc}",
                    file=sys.stderr,
                )
        finally:
            self.close()

    @staticmethod
    def _offer(
        session: Session, epoch: int, weights: str | os.PathLike[str], is_best: bool
    ) -> None:
        try:
            session.save_checkpoint(weights, epoch=epoch, is_best=is_best)
        except (HubfsmError, OSError) as exc:
            log.warning("ultralytics.checkpoint_not_queued", epoch=epoch, error=str(exc))

    @property
    def alive(self) -> bool:
        """True while the session trains (heartbeats go on); set False to end it."""
        return self.session is not None and self.session.training

    @alive.setter
    def alive(self, value: bool) -> None:
        if not value:
            self.close()

    def close(self) -> None:
        """End the session (what is not sent stays in the outbox for later)."""
        session, self.session = self.session, None
        if session is not None:
            session.close()


def _v5u(model_file: str) -> str:
    # ultralytics maps YOLOv5 names to their 'u' variants (yolov5n.yaml -> yolov5nu.yaml)
    checks = sys.modules.get("ultralytics.utils.checks")
    convert = getattr(checks, "check_yolov5u_filename", None)
    if callable(convert):
        return str(convert(model_file, verbose=False))
    return model_file
