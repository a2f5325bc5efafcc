"""The error taxonomy: what went wrong, and whether the user must act."""

from __future__ import annotations


class HubfsmError(Exception):
    """Base class of every error hubfsm raises on purpose."""


class IdentifierError(HubfsmError, ValueError):
    """A model identifier is in none of the accepted forms."""


class SettingsError(HubfsmError, ValueError):
    """A setting (the API key, the API root, a timeout) is refused before any request."""


class IllegalEventError(HubfsmError):
    """An event arrived in a state where the machine does not allow it.

    Attributes:
        state: The state the session was in.
        event: The event that was refused.
    """

    def __init__(self, state: str, event: str, hint: str = "") -> None:
        self.state = state
        self.event = event
        # The hint says what the caller can do instead (see hubfsm.runtime.calls).
        said = f"event {event!r} is not allowed in state {state!r}"
        super().__init__(f"{said}: {hint}" if hint else said)


class HubError(HubfsmError):
    """The hub refused a request for a reason the user must act on (never retried).

    Attributes:
        status: The HTTP status, or 0 when the hub never answered usefully.
        channel: The kind of request that failed (``metrics``, ``load``, ...).
    """

    def __init__(self, message: str, *, status: int = 0, channel: str = "") -> None:
        self.status = status
        self.channel = channel
        super().__init__(message)


class AuthError(HubError):
    """The API key is missing, wrong or revoked (401/403)."""


class ModelNotFoundError(HubError):
    """The model does not exist or was deleted (404)."""


class ModelTrainedError(HubError):
    """The model is already trained, so it cannot be trained again."""


class HubUnavailableError(HubfsmError):
    """The hub did not answer usefully in time, so nothing was decided; try again later."""


class DeliveryIncomplete(HubfsmError):
    """A flush ran out of time; what was not sent stays pending.

    Attributes:
        pending: A short description of what is left, per channel.
    """

    def __init__(self, message: str, pending: dict[str, int]) -> None:
        self.pending = pending
        super().__init__(message)
