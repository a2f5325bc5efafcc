"""What a :class:`~hubfsm.Session` lets a caller read: state, record, plan, counts.

None of these calls reaches the training thread's hot path or changes what the session
sends; only :meth:`SessionViews.download_weights` changes anything, the record it planned
from, when the hub had replaced the weights. At opening, the session keeps the record
beside the outbox (an offline run trains from it) and continues the epochs it names.
:class:`SessionViews` is the base of :class:`~hubfsm.runtime.session.Session`, which
sets the attributes it reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubfsm.core.answers import TrainingPlan
from hubfsm.core.engine import Core
from hubfsm.core.identifier import Identifier
from hubfsm.durable.handover import Inbox
from hubfsm.durable.layout import keep_record, kept_record
from hubfsm.durable.port import Durability
from hubfsm.env import OFFLINE as OFFLINE_ENV
from hubfsm.errors import HubfsmError
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.weight_cache import download_newest_weights, plan_of

if TYPE_CHECKING:
    from hubfsm.runtime.factory import Shell


class SessionViews:
    """Read-only views of a session (see :class:`~hubfsm.Session`)."""

    web_root: str
    identifier: Identifier
    offline: bool
    _core: Core
    _driver: Driver
    _inbox: Inbox
    _durability: Durability | None
    _create_args: dict[str, Any]
    _settings: Settings
    _shell: Shell
    #: True once the trainer's events are kept and sent (the session started).
    _accepting: bool
    #: The record as last read, once a download had to read it again (else the core's).
    _record: Mapping[str, Any] | None = None
    _next_epoch: int

    # -- the record, at opening ---------------------------------------------------

    def _keep_record(self, model_id: str) -> None:
        # An offline run of a hub model trains from the record an online start kept.
        durability = self._durability
        if durability is None:
            return
        if self.offline:
            self._record = kept_record(model_id, durability.root)
        elif self._core.record:
            keep_record(model_id, self._core.record, durability.root)

    def _continue_from_record(self) -> None:
        # A resumed model's new epochs follow the ones the hub has: a loop that logs
        # without epoch numbers must not overwrite the earlier epochs' metrics.
        try:
            plan = self.plan
        except HubfsmError:
            return  # nothing to continue; reading the plan raises for the caller
        if plan.resume_epoch is not None:
            self._next_epoch = plan.resume_epoch

    # -- views ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The session's state (see the state machine in the docs)."""
        return self._core.state

    @property
    def waiting_to_start(self) -> bool:
        """True once the model is open and until :meth:`~hubfsm.Session.start` is called."""
        machine = self._core.machine
        # The states that allow `start` are the opened ones, and `refused`, which records.
        return machine.allows("start") and not machine.records

    @property
    def training(self) -> bool:
        """True while the trainer's events are kept and sent, and heartbeats go on."""
        machine = self._core.machine
        return machine.records and machine.sends

    @property
    def model_id(self) -> str | None:
        """The hub's id of the model."""
        return self._core.model_id

    @property
    def model_url(self) -> str:
        """The model's page on the hub's web site (Platform: the URL its answer gave)."""
        if self._core.dialect.name == "platform":
            return self._core.model_url or ""
        return f"{self.web_root}/models/{self._core.model_id}"

    @property
    def protocol(self) -> str:
        """The protocol dialect the session speaks: ``hub`` or ``platform``."""
        return self._core.dialect.name

    @property
    def run_id(self) -> int | None:
        """The Platform run the session reports to (None for HUB)."""
        return self._core.run_id

    @property
    def cancelled(self) -> bool:
        """True once an answer said a person cancelled the run (Platform's ``cancelled``).

        The session goes on recording and sending; stopping training is the trainer's
        call (the ultralytics integration sets ``trainer.stop``).
        """
        return self._core.cancelled

    @property
    def record(self) -> Mapping[str, Any]:
        """The model record the hub sent when the model was loaded.

        After :meth:`download_weights` found the weights replaced, the record read then.
        """
        return self._core.record if self._record is None else self._record

    @property
    def resume_url(self) -> str | None:
        """Where the hub keeps the last epoch weights, when training can resume from them."""
        record = self.record
        url = record.get("resume")
        return url if record.get("has_last_weights") and isinstance(url, str) else None

    @property
    def plan(self) -> TrainingPlan:
        """What to train, as the hub's record says (see :mod:`hubfsm.core.answers`).

        For a model loaded from the hub: its train arguments, whether it is new,
        pretrained or resumable, its model file (architecture, parent weights or last
        weights) and the epoch to resume from when the hub says. For a model created
        from a local file: that file with the arguments given.

        Offline, the record is the one an online session of the model kept.

        Raises:
            ModelTrainedError: The model is trained already.
            RecordError: The record lacks what training needs (e.g. the dataset is
                still processing).
            HubfsmError: Offline, and no online session of this hub model kept its record.
        """
        record = self.record
        if self.offline and not record and self.identifier.filename is None:
            raise HubfsmError(
                f"offline, there is no record of model {self._core.model_id} to train from: "
                "a hub model needs one online start, which keeps its record for offline "
                f"runs (open it once without {OFFLINE_ENV}=1, e.g. "
                f"hubfsm.open({self.model_url!r}).close(), with the same outbox root)"
            )
        return plan_of(self.identifier, self._create_args, record)

    def download_weights(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        deadline: float = 1800.0,
    ) -> Path | None:
        """Download the weights the plan starts from (parent or last weights).

        The file is cached (see :func:`hubfsm.runtime.weight_cache.download`): a second call, or a
        later session on the same weights, reuses it. The session's transport fetches it
        when it is a :class:`~hubfsm.transport.Downloader` (the default HTTP transport
        is, and sends the API key only to the API root's origin); else it is fetched
        without a key.

        When this session delivers newer last weights (a checkpoint the killed run left
        in the outbox), the hub no longer names the ones the plan named: before training
        starts, this call waits for that checkpoint (at most the open timeout), then the
        newer weights are downloaded, and :attr:`plan` and :attr:`record` say so from then
        on.

        Offline, nothing is downloaded: the weights must be in the cache already (an
        online start that downloaded them left them there).

        Returns:
            The local weights file, or None when the plan starts from an architecture
            or a local file.

        Raises:
            DownloadError: The download failed or did not match the expected size/digest,
                or (offline) the weights are not in the cache.
        """
        record = self.record
        reread = False
        if not self.offline and not self._accepting:
            # A checkpoint the killed run left in the outbox goes to the hub first and
            # replaces the last weights the record read at opening names, whose file an
            # earlier resume may have left in the cache: training resumes from the newer.
            self._shell.wait_for(
                lambda c: not c.pending()["checkpoint"] or not c.machine.sends,
                self._settings.open_timeout,
            )
            reread = self._core.stats.checkpoints > 0
        path, used = download_newest_weights(
            self.identifier,
            self._create_args,
            record,
            self._driver.transport,
            model_id=self._core.model_id,
            cache_dir=cache_dir,
            progress=progress,
            deadline=deadline,
            offline=self.offline,
            reread=reread,
        )
        if used is not record:
            self._record = used
            resume_epoch = self.plan.resume_epoch
            if resume_epoch is not None:
                # Epochs logged without numbers follow the newer checkpoint's.
                self._next_epoch = max(self._next_epoch, resume_epoch)
        return path

    @property
    def outbox_dir(self) -> Path | None:
        """This session's outbox directory, if it keeps one."""
        return None if self._durability is None else self._durability.directory

    @property
    def kept(self) -> dict[str, int] | None:
        """What the outbox held on disk when the session closed, per channel.

        None before :meth:`close`, or without an outbox. It can differ from
        :meth:`pending` only where writing to the outbox failed.
        """
        return None if self._durability is None else self._durability.kept

    @property
    def error(self) -> HubfsmError | None:
        """The error that stopped the session, if any."""
        return self._core.error

    def rejected(self) -> list[str]:
        """The records the hub refused (400/422) and that are kept aside, described."""
        return [record.describe() for record in list(self._core.rejected)]

    def pending(self) -> dict[str, int]:
        """What the hub has not acknowledged yet, per channel (a snapshot).

        Epochs logged, and final weights handed to ``finish``, that the worker has not
        taken in yet count too.
        """
        counts = self._core.pending()
        inbox = self._inbox
        counts["metrics"] += len(set(inbox.queued_epochs()))
        if inbox.finish_queued():
            counts["final"] = 1
        return counts

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
