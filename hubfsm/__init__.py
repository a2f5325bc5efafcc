"""hubfsm: a training-session client for model hubs, built as a sans-I/O state machine."""

from __future__ import annotations

from hubfsm.distributed import NullSession
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
)
from hubfsm.identifier import Identifier, parse_identifier
from hubfsm.opener import TrainingSession, open
from hubfsm.retry import ChannelPolicies, RetryPolicy
from hubfsm.session import Session

__version__ = "0.1.0"

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
    "TrainingSession",
    "__version__",
    "open",
    "parse_identifier",
]
