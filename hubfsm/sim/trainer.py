"""The simulated trainer: what it does to a world's session, epoch by epoch, and finish.

The trainer's calls go to the real session the world composed (see
:class:`~hubfsm.sim.world.World`); here is what a trainer asks of it, in one life of the
process: open (again), start, end epochs with metrics and weights files, finish. A
machine fault may kill it inside a call; :func:`~hubfsm.sim.play.play` starts it again.
"""

from __future__ import annotations

import hashlib
import os

from hubfsm.core import protocol
from hubfsm.core.identifier import Identifier
from hubfsm.core.platform import PLATFORM
from hubfsm.errors import HubfsmError
from hubfsm.runtime.session import Session
from hubfsm.sim.machine import Crash, Machine, Terminated, poison_value
from hubfsm.sim.world import World
from hubfsm.transport import FilePart, Transport
from transports.memory import InMemoryTransport

#: The metrics a simulated epoch reports, beside the loss.
METRIC_KEYS = tuple(f"metrics/m{i}" for i in range(8))

#: Where a simulated Platform trainer reports a new run (``project=local/sim``).
PLATFORM_PROJECT = "local/sim"


def platform_model(transport: Transport) -> str:
    """Open a Platform run behind the session's back, as another trainer would; its id."""
    opened = transport.send(
        PLATFORM.training_started(
            Identifier(project=PLATFORM_PROJECT, run_name="earlier"),
            PLATFORM.train_data({"data": "coco8"}),
            key=None,
        )
    )
    return str(opened.body["modelId"])


def weights_file(world: World, name: str, content: bytes) -> FilePart:
    """Write the weights file ``name`` where the trainer keeps it; its upload part."""
    target = _write_weights(world, name, content)
    return FilePart(name, target, len(content), hashlib.sha256(content).hexdigest())


def _write_weights(world: World, name: str, content: bytes) -> str:
    """Write the weights file ``name`` where the trainer keeps it, in place; its path.

    As ``torch.save`` does, a file that is there is cut short and written again: the same
    inode, so a link to it sees the new bytes too. Its modification time is the simulated
    time, as the file system would stamp a write that many seconds on: each epoch's file
    has a stamp of its own, where writes a few microseconds apart could share one.
    """
    target = f"{world.weights}{os.sep}{name}"
    # A descriptor rather than pathlib: the trainer writes a file every few epochs.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, content)
        ns = int(world.clock() * 1e9)
        os.utime(fd, ns=(ns, ns))
    finally:
        os.close(fd)
    return target


def existing_model(world: World) -> str:
    """Create a model on the hub behind the session's back, and return its id."""
    if world.protocol == "platform":
        return platform_model(InMemoryTransport(world.hub_now(), world.key))
    created = InMemoryTransport(world.hub_now(), world.key).send(
        protocol.create_model(protocol.create_payload("yolov8n.yaml", {"data": "coco8"}))
    )
    return str(created.data["id"])


def open_session(world: World, *, create: bool, timeout: float = 3600.0) -> None:
    """Open the session: the run's model if there is one, else a new or existing one."""
    if world.model_id is not None:
        identifier = world.model_id
    else:
        new = PLATFORM_PROJECT if world.protocol == "platform" else "yolov8n.pt"
        identifier = new if create else existing_model(world)
    world.session = world.compose(identifier, timeout=timeout)


def end_epoch(world: World, *, checkpoint: bool) -> None:
    """The trainer ends an epoch now: metrics, and maybe weights."""
    session = world.session
    assert session is not None
    epoch = len(world.logged)
    rng = world.rng
    draw = rng.random
    metrics = {key: round(draw(), 6) for key in METRIC_KEYS}
    metrics["train/loss"] = round(1.0 / (epoch + 1), 6)
    machine = world.machine
    if machine is not None and machine.plan.poison_epoch == epoch:
        _log_poison(world, session, epoch, metrics, machine)
    else:
        session.log_metrics(metrics, epoch=epoch)
    world.logged.append(epoch)
    if machine is not None and not world.journaled():
        world.unjournaled.add(epoch)
    if checkpoint:
        content = f"weights of epoch {epoch} seed {world.seed}".encode()
        # One last.pt, written again at each checkpoint, as ultralytics keeps it. Only the
        # path is handed over: the session stamps and hashes the file itself.
        path = _write_weights(world, "last.pt", content)
        world.checkpoints[epoch] = hashlib.sha256(content).hexdigest()
        session.save_checkpoint(path, epoch=epoch, is_best=rng.random() < 0.3)
    if world.quit_after is not None and len(world.logged) == world.quit_after:
        world.gave_up = True
        world.deaths.clear()  # this is the last death: the trainer does not come back
        world.checker.note("the process is killed between two calls; the trainer gives up")
        raise Crash(f"the process is killed after epoch {epoch}; the trainer gives up")


def _log_poison(
    world: World, session: Session, epoch: int, metrics: dict[str, float], machine: Machine
) -> None:
    """Log an epoch with a value JSON cannot carry; if refused, log it again without."""
    kind = machine.plan.poison_kind
    machine.injected += 1
    world.checker.note(f"the trainer logs epoch {epoch} with a value JSON cannot carry ({kind})")
    try:
        session.log_metrics({**metrics, **poison_value(kind)}, epoch=epoch)
    except (TypeError, ValueError) as exc:
        # Refused at the call: the trainer is told, and logs what it can.
        world.checker.note(f"log_metrics refuses it: {type(exc).__name__}: {exc}")
        session.log_metrics(metrics, epoch=epoch)


def finish(world: World, *, timeout: float = 7200.0) -> None:
    """The trainer ends training and waits for the final upload (or its timeout).

    What ``finish`` raises is kept in :attr:`raised`, for a world that checks it. With
    machine faults the process may be killed inside it, or terminated while it waits;
    either way the trainer does not come back, and ``hubfsm sync`` sends the rest.
    """
    session = world.session
    assert session is not None
    best = weights_file(world, "best.pt", f"best of seed {world.seed}".encode())
    world.expected_sha = best.sha256
    last = max(len(world.logged) - 1, 0)
    world.finishing = True
    machine = world.machine
    term = machine is not None and machine.plan.finish_kill == "sigterm"
    if machine is not None:
        machine.arm_finish_kill()
    world.final_accepted = True
    world.final_unjournaled = machine is not None and not world.journaled()
    try:
        session.finish(
            best.path,
            epoch=last,
            map50_95=0.5,
            timeout=machine.plan.term_after if term and machine else timeout,
        )
    except HubfsmError as exc:
        world.raised = exc
    except OSError as exc:
        # The trainer is told the final weights are not kept, and stops there.
        world.final_accepted = False
        world.checker.note(f"finish() raises {type(exc).__name__}: {exc}; the trainer stops")
        world.give_up()
        raise Crash("the trainer stops: finish() raised") from None
    except Crash:
        if machine is not None and machine.killed:
            world.give_up()  # a kill inside finish(): the trainer does not come back
        raise
    if term and machine is not None and world.core.state != "done":
        machine.injected += 1
        world.checker.note("SIGTERM while finish() waits: the exit path flushes, then exits")
        try:
            session.close()  # the exit hook's flush, within the session's exit timeout
        except HubfsmError as exc:
            world.raised = exc
        world.give_up()
        raise Terminated("the process is terminated inside finish()")


def train(
    world: World,
    *,
    create: bool,
    epochs: int,
    checkpoint_every: int,
    epoch_seconds: tuple[float, float],
    patience: float,
) -> None:
    """One life of the trainer: open (again), train the epochs left, finish."""
    open_session(world, create=create, timeout=patience)
    if not world.core.machine.allows("start"):
        return
    world.start()
    if not world.finishing:
        while len(world.logged) < epochs:
            world.runner.run_until(world.clock() + world.rng.uniform(*epoch_seconds))
            if not world.core.machine.records:
                return
            epoch = len(world.logged)
            end_epoch(world, checkpoint=epoch % checkpoint_every == 0)
    if world.core.machine.allows("finish"):
        # A trainer that died inside finish() calls it again with the same weights.
        world.finishing = True
        finish(world, timeout=patience)
