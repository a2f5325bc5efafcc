"""``hubfsm sync``: send what outboxes hold (``hubfsm status`` lists it, in the CLI).

Sync opens each model's outbox through an ordinary :class:`~hubfsm.runtime.session.Session`, so
it sends the same operations with the same keys as the session that left them; an
interrupted sync leaves everything unsent in place, and running it again is safe.

Both first fold each outbox's journal in: what a killed process had only journaled (its
worker stuck in a request) is pending like the rest. That needs the outbox's lock, so an
outbox a running session holds is left as it is.

The first contact with the hub: a HUB session's first request opens the model. Refused
(nothing listens at the address) or unresolved, it is tried briefly (the
``first_contact`` retry policy) and the session fails with an error naming the address;
a TLS failure or a URL that cannot be requested fails it at once. A Platform outbox that
names its run opens with no request at all (the run goes on unannounced, as the official
client's would), so its first contact is a data request, which the core retries like any
other. :class:`FirstContact` judges that request as the opening's would be judged, so
both dialects fail alike, within seconds.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import attrs

from hubfsm.core import answers
from hubfsm.core.config import ChannelPolicies
from hubfsm.core.machine import FIRST_CONTACT_FATAL
from hubfsm.core.values import Send, describe_pending
from hubfsm.durable.layout import OutboxDamaged, default_root
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.recovery import fold
from hubfsm.durable.survey import OutboxInfo, report_damage, set_aside_reporting, survey
from hubfsm.errors import AuthError, HubfsmError, HubUnavailableError, ModelNotFoundError
from hubfsm.runtime.console import (
    NOBODY_THERE,
    Console,
    hub_name,
    keyed_sync_command,
    same_hub,
)
from hubfsm.runtime.factory import Shell, build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import API_ROOT_ENV, Settings
from hubfsm.transport import Outcome, Response, Transport, TransportError

#: Opens the session that sends one outbox.
SessionOpener = Callable[[OutboxInfo], Session]


def fold_journals(infos: list[OutboxInfo], *, damaged: bool) -> None:
    """Fold each outbox's journal into it, under its lock; skip an outbox in use.

    Damage is for the survey taken before to report: what a damaged journal lost is
    judged against the outbox as it was. So a damaged journal is folded only with
    ``damaged`` (by sync, once it has kept a copy), and ``status`` leaves it for sync
    to report again.
    """
    for info in infos:
        if info.in_use or (info.journal_damage is not None and not damaged):
            continue
        try:
            outbox = Outbox(info.directory, info.model_id)
        except (HubfsmError, OSError):  # a session took it since, or it is damaged
            continue
        try:
            fold(outbox)
        except (HubfsmError, OSError, ValueError):
            continue
        finally:
            outbox.close()


def target(info: OutboxInfo, *, hub: str | None, api_root: str | None) -> str:
    """Where ``hubfsm sync`` sends an outbox: the hub it records, unless ``--hub`` says.

    Args:
        info: The outbox.
        hub: The API root given with ``--hub``: it wins.
        api_root: The API root the environment names (``ULTRALYTICS_HUB_API``, or
            ``ULTRALYTICS_PLATFORM_URL`` for a Platform outbox), if any.

    Raises:
        HubfsmError: The outbox records another hub than the environment names: the
            message says which ``--hub`` sends it where.
    """
    from hubfsm.core.platform import PLATFORM_API_ROOT
    from hubfsm.env import PLATFORM_URL
    from transports.settings import DEFAULT_API_ROOT

    if hub:
        return hub
    platform = info.protocol == "platform"
    recorded = info.hub.api_root if info.hub is not None else None
    if recorded is None:  # an outbox older than the record
        return api_root or (PLATFORM_API_ROOT if platform else DEFAULT_API_ROOT)
    if api_root and not same_hub(api_root, recorded):
        where = shlex.quote(str(info.directory))
        variable = PLATFORM_URL if platform else API_ROOT_ENV
        raise HubfsmError(
            f"its outbox was made for the hub at {recorded}, but {variable} names "
            f"{api_root}; nothing was sent. `hubfsm sync --hub {recorded} {where}` sends it "
            f"where it was made; `--hub {api_root}` sends it there instead"
        )
    return recorded


def _sync_one(
    info: OutboxInfo,
    *,
    api_key: str | None,
    api_root: str | None,
    transport: Transport | None,
    timeout: float,
    out: TextIO,
    open_session: SessionOpener | None = None,
) -> bool:
    shown = f" to {api_root}" if api_root and transport is None and open_session is None else ""
    print(f"model {info.model_id}: sending {describe_pending(info.pending)}{shown} ...", file=out)
    if info.hub is not None and api_root and shown and not same_hub(api_root, info.hub.api_root):
        print(
            f"model {info.model_id}: its outbox was made for the hub at {info.hub.api_root}; "
            "sending it elsewhere as --hub says",
            file=out,
        )
    # One budget per model, opening included: a hub that never lets the model open
    # (429s, a dripped answer) took the session's own 120 s before, whatever --timeout.
    ends = time.monotonic() + timeout
    contact = None
    if open_session is not None:
        session = open_session(info)
    else:
        session, contact = open_for_sync(
            info, api_key=api_key, api_root=api_root, transport=transport, timeout=timeout, out=out
        )
    try:
        # A session opened by the caller (the simulator's) keeps its own clock.
        left_time = timeout if open_session is not None else max(0.0, ends - time.monotonic())
        try:
            if session.pending()["final"]:
                session.finish_pending(timeout=left_time)
            else:
                session.flush(timeout=left_time)
        except HubfsmError:
            if contact is None or contact.missing is None:
                raise  # else the worker stopped, as nothing is there: said below
        left = session.pending()
    finally:
        missing = contact is not None and contact.missing is not None
        session.close(timeout=0.0 if missing else min(timeout, 10.0))
    if contact is not None:
        contact.check()  # a first contact that met nothing: the records stay in place
    kept = session.kept
    if kept is not None:
        # What is still on disk counts, even if the hub has it: a write that failed
        # left it there, and the next sync sends it again under the same key.
        left = {kind: max(n, kept.get(kind, 0)) for kind, n in left.items()}
    stats = session.stats()
    sent = sum(stats["sent"].values())
    if any(left.values()):
        print(
            f"model {info.model_id}: {describe_pending(left)} still pending "
            f"({sent} requests, {stats['retries']} retries); run sync again",
            file=out,
        )
        return False
    print(
        f"model {info.model_id}: all sent ({sent} requests, {stats['retries']} retries)",
        file=out,
    )
    return True


def sync(
    root: str | os.PathLike[str] | None,
    *,
    api_key: str | None = None,
    api_root: str | None = None,
    hub: str | None = None,
    transport: Transport | None = None,
    timeout: float = 600.0,
    out: TextIO,
    open_session: SessionOpener | None = None,
    protocol: str | None = None,
) -> int:
    """Send every pending outbox under ``root``; 0 when all of them are empty afterwards.

    Each outbox goes to the hub it records (see :func:`target`), in the dialect it
    recorded. A damaged outbox is reported and set aside, and the others are sent; the
    exit status is then 1, as it is when a journal was damaged, or while any record the
    hub rejected is held (``hubfsm discard`` removes those). ``open_session`` opens the
    session that sends one outbox (the simulator composes one on its virtual clock); by
    default an ordinary :class:`Session`.

    Args:
        root: The outbox root, or one model's outbox (None: the default root).
        api_key: The key to send with.
        api_root: The API root the environment names, if any: for outboxes that record
            no hub; one that records another is refused.
        hub: The API root given with ``--hub``: every outbox goes there.
        transport: Where requests go instead of HTTP to each outbox's hub.
        timeout: Seconds to spend on each model.
        out: Where the report goes.
        open_session: Opens the session that sends one outbox.
        protocol: ``hub`` or ``platform``: send only that dialect's outboxes, whose key
            and API root ``api_key`` and ``api_root`` then are.
    """
    found = survey(root)
    damaged = report_damage(found, out=out, repair=True)
    fold_journals(found.infos, damaged=True)
    infos = [i for i in survey(root).infos if protocol is None or i.protocol == protocol]
    todo = [i for i in infos if any(i.pending.values())]
    if not todo:
        looked = Path(root) if root is not None else default_root()
        print(f"nothing to send in {looked}", file=out)
        held = _report_rejected(infos, out=out)
        return 1 if damaged or held else 0
    ok = 0
    for info in todo:
        if info.in_use:
            print(f"model {info.model_id}: skipped, a running session holds it", file=out)
            continue
        try:
            where: str | None
            if transport is None and open_session is None:
                where = target(info, hub=hub, api_root=api_root)
            else:
                where = hub or api_root  # the given transport decides where it goes
            ok += _sync_one(
                info,
                api_key=api_key,
                api_root=where,
                transport=transport,
                timeout=timeout,
                out=out,
                open_session=open_session,
            )
        except ModelNotFoundError as exc:
            # Models belong to the key that made them: a 404 may mean another key, not a
            # deleted model, so nothing here advises deleting what is kept.
            print(
                f"model {info.model_id}: not found for this key on the hub ({exc}); its "
                f"records stay in {info.directory}. If the model was made with another key, "
                "sync with that key (a local hub can hand a revoked key's models to a new one: "
                "`hubfsm hub keys transfer`)",
                file=out,
            )
        except HubUnavailableError as exc:
            # Its message says what failed and what to check ("cannot reach the hub
            # (...); is the hub at ... running?"), so it leads, wrapped in nothing.
            said = str(exc)
            print(
                f"model {info.model_id}: {said}{' ' if said.endswith(('?', '.')) else '. '}"
                f"Its records stay in {info.directory}; run sync again when the hub is back",
                file=out,
            )
        except OutboxDamaged as exc:
            print(f"damaged: {exc}", file=out)
            set_aside_reporting(exc, out=out)
            damaged += 1
        except AuthError as exc:
            # Refused at opening, its message names only the answer: say how to go on.
            said = str(exc)
            if str(info.directory) not in said:
                command = keyed_sync_command(info.directory, where, info.protocol)
                said += (
                    f"; its records stay in {info.directory}. Run `{command}` with the key "
                    "that made the model (on a local hub, `hubfsm hub keys transfer` hands "
                    "a revoked key's models to a new one)"
                )
            print(f"model {info.model_id}: {said}", file=out)
        except HubfsmError as exc:
            # A refusal's message already says what is kept where, and what to run.
            said = str(exc)
            kept = "" if str(info.directory) in said else f"; its records stay in {info.directory}"
            print(f"model {info.model_id}: {said}{kept}", file=out)
        except OSError as exc:  # the machine, for this outbox only: the others still go
            print(
                f"model {info.model_id}: its outbox cannot be opened ({exc}); its records "
                f"stay in {info.directory}",
                file=out,
            )
    print(f"synced {ok} of {len(todo)} outboxes", file=out)
    if damaged:
        print(f"{damaged} damaged or unreadable outbox(es) or journal(s): see above", file=out)
    left = [i for i in survey(root).infos if protocol is None or i.protocol == protocol]
    held = _report_rejected(left, out=out)
    return 0 if ok == len(todo) and not damaged and not held else 1


def _report_rejected(infos: list[OutboxInfo], *, out: TextIO) -> int:
    """List the rejected records held; 1 if there are any (they are not delivered)."""
    held = 0
    for info in infos:
        for records, what in (
            (info.rejected, "records the hub rejected are kept"),
            (info.kept_aside, "records that could not be sent are kept aside"),
        ):
            if not records:
                continue
            held += len(records)
            print(
                f"model {info.model_id}: {len(records)} {what} in {info.directory} "
                f"(`hubfsm discard {info.model_id} --rejected` removes them):",
                file=out,
            )
            for record in records:
                print(f"  {record}", file=out)
    return 1 if held else 0


def root_of(path: str | None) -> Path | None:
    """The argument as a path, or None for the default root."""
    return Path(path) if path else None


# -- the session that sends one outbox, and its first contact with the hub ---------


class FirstContact:
    """Watches sync's requests until the hub first answers; ends the work if none is there.

    An observer of the session's driver (called on its thread). The opening's own
    request is the core's to judge; a data request sent before the hub ever answered
    is judged here within the first-contact policy: its attempts, and its deadline,
    which the core's next attempt (on the channel's slower policy) may not start
    past. When nothing is there, the worker stops (every wait on it ends) and
    :attr:`missing` holds the last outcome.

    Args:
        policies: The session's retry policies.
    """

    def __init__(self, policies: ChannelPolicies) -> None:
        self.policies = policies
        #: The shell to stop; set once the parts are built.
        self.shell: Shell | None = None
        #: The outcome that showed nothing is there (None: not so, or not yet).
        self.missing: TransportError | None = None
        self._judged = False
        self._tried = 0
        self._since: float | None = None

    def sent(self, now: float, send: Send) -> None:
        """Nothing to do before the outcome."""

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        """Take one outcome in, until the first contact is judged."""
        if self._judged:
            return
        if isinstance(outcome, Response):  # something is there: from now on it is lost
            self._judged = True  # or busy, not missing, and the core's policies hold
            return
        if send.channel == "control":  # the opening's request: the core judges it
            return
        if outcome.kind not in NOBODY_THERE:
            # A failure that says something is there (a timeout), or that nothing can
            # be (TLS, URL), as for an opening.
            self._judged = True
            if outcome.kind in FIRST_CONTACT_FATAL:
                self._give_up(outcome)
            return
        self._tried += 1
        since = self._since = now if self._since is None else self._since
        first = self.policies.first_contact
        later = getattr(self.policies, send.channel).bound(self._tried - 1)
        if self._tried >= first.max_attempts or now - since + later > first.deadline:
            self._judged = True
            self._give_up(outcome)

    def _give_up(self, outcome: TransportError) -> None:
        self.missing = outcome
        if self.shell is not None:
            self.shell.stop(timeout=0.0)  # on the worker's thread: it ends after this step

    def check(self) -> None:
        """Raise what an opening that met nothing at the address raises, if so.

        Raises:
            HubUnavailableError: The message names the address and what to check.
        """
        if self.missing is not None:
            raise answers.unreachable_error(self.missing)


def open_for_sync(
    info: OutboxInfo,
    *,
    api_key: str | None,
    api_root: str | None,
    transport: Transport | None,
    timeout: float,
    out: TextIO,
) -> tuple[Session, FirstContact]:
    """Open the session that sends ``info``'s outbox, and what watches its first contact.

    It raises what :class:`Session` raises when it opens; when nothing is at the
    address, the :class:`~hubfsm.errors.HubUnavailableError` names it, whichever request
    found that out.
    """
    settings = Settings.resolve(
        info.model_id,
        api_key=api_key,
        api_root=api_root,
        web_root=info.hub.web_root if info.hub is not None else None,
        outbox_dir=info.directory.parent,
        offline=False,
        protocol=info.protocol,
        open_timeout=timeout,
    )
    contact = FirstContact(settings.config.policies)
    # Sync reports a refusal on its own output; the session's stderr notice is for
    # trainers. Losing the hub it says there too, or it would wait out --timeout mute.
    parts = build(
        attrs.evolve(settings, notify_refusal=False), transport=transport, observer=contact
    )
    contact.shell = parts.shell
    hub = f"the hub at {hub_name(api_root)}" if transport is None else "the hub"
    parts.driver.console = Console(
        hub, open_timeout=settings.open_timeout, stream=out, training=False
    )
    try:
        session = Session.compose(parts)
    except HubUnavailableError:
        # A HUB outbox's kept data goes out while its model opens: when those requests
        # used up the first contact first, the worker stopped under the opening, which
        # knows only that it ended unopened. Say what the first contact met instead.
        contact.check()
        raise
    return session, contact
