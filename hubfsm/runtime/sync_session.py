"""The session ``hubfsm sync`` sends one outbox with, and its first contact with the hub.

A HUB session's first request opens the model. Refused (nothing listens at the address)
or unresolved, it is tried briefly (the ``first_contact`` retry policy) and the session
fails with an error naming the address; a TLS failure or a URL that cannot be requested
fails it at once. A Platform outbox that names its run opens with no request at all (the
run goes on unannounced, as the official client's would), so its first contact is a
data request, which the core retries like any other. :class:`FirstContact` judges that
request as the opening's would be judged, so both dialects fail alike, within seconds.
"""

from __future__ import annotations

from typing import TextIO

import attrs

from hubfsm.core import answers
from hubfsm.core.config import ChannelPolicies
from hubfsm.core.machine import FIRST_CONTACT_FATAL
from hubfsm.core.values import Send
from hubfsm.durable.survey import OutboxInfo
from hubfsm.errors import HubUnavailableError
from hubfsm.runtime.console import NOBODY_THERE, Console, hub_name
from hubfsm.runtime.factory import Shell, build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.transport import Outcome, Response, Transport, TransportError


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
