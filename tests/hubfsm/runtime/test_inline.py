"""The inline shell: the driver on the calling thread, bounded by a deadline on its clock."""

import attrs
import pytest

from hubfsm.runtime.factory import build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.shells import RunTimeout, VirtualClock
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport


class Stamped:
    """Sends through ``inner`` and keeps the clock's time of each request."""

    def __init__(self, inner, clock):
        self.inner, self.clock, self.times = inner, clock, []

    def send(self, request):
        self.times.append(self.clock())
        return self.inner.send(request)


def test_a_run_stops_at_its_deadline_on_its_clock(hub):
    clock = VirtualClock(1000.0)
    link = Stamped(InMemoryTransport(hub, KEY), clock)
    settings = attrs.evolve(
        Settings.resolve(new_model(hub), config=FAST, outbox=False), at_exit=False
    )
    parts = build(settings, transport=link, clock=clock, inline=True, deadline=1030.0)
    session = Session.compose(parts)
    session.start()
    parts.shell.run_until(1020.0)  # inside the deadline: time goes as far as asked
    assert clock() == 1020.0
    with pytest.raises(RunTimeout):
        parts.shell.run_until(2000.0)
    # Heartbeats go every 0.3 s of this clock, so only the deadline stopped the run.
    assert 1030.0 <= clock() < 1031.0
    assert max(link.times) < 1030.0
    assert len([t for t in link.times if t > 1020.0]) > 10
    session.close(timeout=0.0)
