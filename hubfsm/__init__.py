"""hubfsm: a training-session client for model hubs, built as a sans-I/O state machine.

The facade names below load their modules on first use, so that importing a lower layer
(``hubfsm.transport``, ``hubfsm.core``) never pulls in the runtime and its transports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hubfsm.errors import (
    AuthError,
    DeliveryIncomplete,
    HubError,
    HubfsmError,
    HubUnavailableError,
    IdentifierError,
    IllegalEventError,
    ModelNotFoundError,
    ModelTrainedError,
    SettingsError,
)
from hubfsm.version import __version__

if TYPE_CHECKING:
    from hubfsm.core.config import ChannelPolicies, RetryPolicy
    from hubfsm.core.identifier import Identifier, parse_identifier
    from hubfsm.runtime.opener import NullSession, TrainingSession, open
    from hubfsm.runtime.session import Session

_LAZY = {
    "ChannelPolicies": "hubfsm.core.config",
    "Identifier": "hubfsm.core.identifier",
    "NullSession": "hubfsm.runtime.opener",
    "RetryPolicy": "hubfsm.core.config",
    "Session": "hubfsm.runtime.session",
    "TrainingSession": "hubfsm.runtime.opener",
    "open": "hubfsm.runtime.opener",
    "parse_identifier": "hubfsm.core.identifier",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hubfsm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthError",
    "ChannelPolicies",
    "DeliveryIncomplete",
    "HubError",
    "HubUnavailableError",
    "HubfsmError",
    "Identifier",
    "IdentifierError",
    "IllegalEventError",
    "ModelNotFoundError",
    "ModelTrainedError",
    "NullSession",
    "RetryPolicy",
    "Session",
    "SettingsError",
    "TrainingSession",
    "__version__",
    "open",
    "parse_identifier",
]
