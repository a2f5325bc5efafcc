"""What the runtime tests share: a key, the shipped behaviour sped up, an in-memory hub."""

import attrs
import pytest

from hubfsm.core import protocol
from hubfsm.core.engine import CoreConfig
from hubfsm.hub.domain import Hub
from hubfsm.hub.store_memory import MemoryStore
from hubfsm.runtime.clocks import VirtualClock
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from transports.memory import InMemoryTransport

KEY = "r" * 42
#: The shipped behaviour, a thousand times as fast.
FAST = CoreConfig().scaled(0.001)


@pytest.fixture
def hub():
    return Hub(MemoryStore(), keys=[KEY])


def new_model(hub):
    reply = InMemoryTransport(hub, KEY).send(
        protocol.create_model(protocol.create_payload("yolov8n.yaml", {}))
    )
    return reply.data["id"]


def inline_session(identifier, *, transport, clock=None, **settings):
    """A session whose driver runs on the calling thread, on a virtual clock.

    Returns the session and its shell: trainer calls are taken in, and requests sent,
    only as the test lets virtual time pass (``shell.run_until``) or waits in a call.
    """
    clock = clock or VirtualClock(1000.0)
    resolved = attrs.evolve(Settings.resolve(identifier, **settings), at_exit=False)
    parts = build(resolved, transport=transport, clock=clock, inline=True)
    return Session.compose(parts), parts.shell
