import attrs

from hubfsm.runtime.clocks import VirtualClock
from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings


def inline_session(identifier, *, transport, clock=None, **settings):
    """A session whose driver runs on the calling thread, on a virtual clock.

    Returns the session and its shell: trainer calls are taken in, and requests sent,
    only as the test lets virtual time pass (``shell.run_until``) or waits in a call.
    """
    clock = clock or VirtualClock(1000.0)
    resolved = attrs.evolve(Settings.resolve(identifier, **settings), at_exit=False)
    parts = build(resolved, transport=transport, clock=clock, inline=True)
    return Session.compose(parts), parts.shell
