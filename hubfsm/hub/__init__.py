"""A reference hub: the HUB REST API over a store, in memory or served over HTTP.

The client never needs it at run time; tests, simulations and ``hubfsm hub serve`` do.
"""

from __future__ import annotations

from hubfsm.hub.domain import Audit, BadJson, Hub, HubCall, HubReply, UploadEntry
from hubfsm.hub.store import ModelRecord, Store, WeightsInfo
from hubfsm.hub.store_memory import MemoryStore
from hubfsm.hub.store_sqlite import SqliteStore
from transports.faults import FaultMix

__all__ = [
    "Audit",
    "BadJson",
    "FaultMix",
    "Hub",
    "HubCall",
    "HubReply",
    "MemoryStore",
    "ModelRecord",
    "SqliteStore",
    "Store",
    "UploadEntry",
    "WeightsInfo",
]
