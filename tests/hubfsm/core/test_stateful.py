"""A hypothesis state machine interleaving trainer events, time and faults."""

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hubfsm.core.values import Interrupted, Resumed
from hubfsm.errors import ModelTrainedError
from hubfsm.sim.ends import on_hub
from hubfsm.sim.play import scratch_root
from hubfsm.sim.profiles import PROFILES
from hubfsm.sim.trainer import end_epoch, finish, open_session
from hubfsm.sim.world import World
from transports.faults import FaultMix

MIXES = {
    "calm": FaultMix(),
    "flaky": PROFILES["flaky"].faults,
    "down": FaultMix(connection_error=1.0),
    "throttled": FaultMix(rate_limited=0.8, retry_after=(10.0, 200.0)),
    "lossy": FaultMix(lost_response=0.5, timeout=0.2),
}


class SessionUnderFaults(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1), create=st.booleans())
    def open(self, seed, create):
        self.root = Path(tempfile.mkdtemp(prefix="hubfsm-test-", dir=scratch_root()))
        self.world = World(seed, PROFILES["calm"], root=self.root)
        open_session(self.world, create=create)
        assert self.world.core.state in ("created", "loaded")
        self.world.start()
        # A session takes no more trainer events once finish() has returned.
        self.finished = False

    def teardown(self):
        if hasattr(self, "world") and self.world.session is not None:
            self.world.session.close(timeout=0.0)
        if hasattr(self, "root"):
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def core(self):
        return self.world.core

    @rule(mix=st.sampled_from(sorted(MIXES)))
    def hub_changes_mood(self, mix):
        self.world.faults.mix = MIXES[mix]

    @rule(seconds=st.floats(0.0, 2000.0))
    def time_passes(self, seconds):
        self.world.runner.run_until(self.world.clock.now + seconds)

    @precondition(lambda self: self.core.state == "training" and not self.finished)
    @rule(checkpoint=st.booleans())
    def epoch_ends(self, checkpoint):
        end_epoch(self.world, checkpoint=checkpoint)

    @precondition(lambda self: self.core.state == "training" and not self.finished)
    @rule()
    def trainer_is_interrupted(self):
        self.world.runner.call(Interrupted())

    @precondition(lambda self: self.core.state == "resumable" and not self.finished)
    @rule()
    def trainer_resumes(self):
        self.world.runner.call(Resumed())

    @precondition(lambda self: self.core.state == "training" and not self.finished)
    @rule(timeout=st.sampled_from([60.0, 3600.0]))
    def training_finishes(self, timeout):
        finish(self.world, timeout=timeout)
        self.finished = True
        if self.core.state == "failed":
            # Only legitimate when an earlier, interrupted final upload did land and
            # training went on after it: the hub then refuses more as "already trained".
            assert isinstance(self.core.error, ModelTrainedError), self.core.error
            assert any(u.type == "final" for u in self.world.hub.audit().uploads)
        else:
            assert self.core.state in ("done", "resumable")

    @invariant()
    def no_violation_so_far(self):
        if not hasattr(self, "world"):
            return
        self.world.check_end()
        assert not self.world.checker.violations, [str(v) for v in self.world.checker.violations]

    @invariant()
    def no_metrics_lost(self):
        if not hasattr(self, "world"):
            return
        world = self.world
        # Logged epochs the driver has not taken in yet wait in its inbox (and journal).
        queued = set(world.runner.inbox.queued_epochs())
        assert set(world.logged) <= on_hub(world) | world.core.unacknowledged_epochs() | queued


SessionUnderFaults.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_session_under_faults = SessionUnderFaults.TestCase
