"""How far a metric and a checkpoint walk: the modules their path enters, and the hand-offs.

A count anyone can repeat, where a reading by eye drifts. The script composes a real
session as users get it by default (the worker thread, the outbox and the journal in a
temporary directory, the HUB dialect) on an in-memory hub behind the in-memory
transport, and traces (``sys.setprofile`` on the training thread,
``threading.setprofile`` on the worker) every Python call from the trainer's call to
the moment the request leaves through the transport:

- **metric**: from ``Session.log_metrics`` to the call of the transport's ``send`` with
  the metrics request (``{"type": "metrics", ...}``);
- **checkpoint**: from ``Session.save_checkpoint`` to the call of the transport's
  ``send`` with the checkpoint's multipart upload.

Both threads count. The training thread's part is the trainer's call itself, from its
entry to its return; the worker's part starts when the trainer's call starts and ends
at the transport. The worker is made to sleep until it is woken (a nap of an hour
instead of a quarter second), so its part holds nothing but the datum's: before each
walk the session has opened, started, sent its first heartbeat and gone quiet, and
after ``log_metrics`` (which wakes nobody) the script wakes the worker as its nap's end
would; ``save_checkpoint`` wakes it itself. No limit holds either request back: it is
the first of its channel.

What counts:

- A *module* is a module of ``hubfsm`` or ``transports`` whose code runs on the path
  (``hubfsm.logs`` and anything called while logging excepted), or the worker's loop
  that calls into it. Methods that attrs writes (the constructors of frozen values)
  belong to their class's module: a value made on the path is a module it needs.
- A *hand-off* is a call whose nearest counted caller on the stack is another counted
  module (calls through the standard library or third-party code count from the
  counted frame below them).
- *Entries* into a package: hand-offs from outside the package into it, per thread.

The transport's own work (serialising, the hub answering) is not on the walk: the walk
ends where the request leaves.

Usage::

    python bench/walks.py [--json PATH]

Run it against another checkout with ``PYTHONPATH=<checkout> python bench/walks.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

#: The API key of the in-memory hub.
KEY = "fX7kQ2mW9rT4vB8nL3pZ6hJ1yC5dS0gA2eU7iO4rVb"
#: The metrics of the walked epoch (ten, as a trainer logs them).
METRICS = {f"metrics/m{k}": 0.1 * k for k in range(10)}
#: Seconds to wait for a walk's request to leave.
TIMEOUT = 30.0


def _counted(module: str | None) -> bool:
    return (
        module is not None
        and (module == "hubfsm" or module.startswith(("hubfsm.", "transports")))
        and module != "hubfsm.logs"
    )


def _logging(module: str | None) -> bool:
    return module is not None and (
        module == "hubfsm.logs" or module.startswith(("structlog", "logging"))
    )


def _package(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "transports":
        return "transports"
    if len(parts) >= 3:
        return parts[1]
    return "ground"


class Tracer:
    """Records the counted calls of one walk, on both threads, until ``stop`` says so."""

    def __init__(self) -> None:
        self.on = False
        self.main_on = False
        self.main = threading.get_ident()
        self.calls: dict[int, list[tuple[str | None, str, str]]] = {}
        self.stop: Callable[[FrameType], bool] = lambda frame: False
        self.done = threading.Event()

    def begin(self, stop: Callable[[FrameType], bool]) -> None:
        """Start a walk that ends at the first call ``stop`` accepts."""
        self.calls = {}
        self.stop = stop
        self.done.clear()
        self.on = True

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        """The profile function of both threads."""
        if not self.on or event != "call":
            return
        tid = threading.get_ident()
        if tid == self.main and not self.main_on:
            return
        module = frame.f_globals.get("__name__")
        if not _counted(module):
            return
        caller: str | None = None
        back = frame.f_back
        while back is not None:
            name = back.f_globals.get("__name__")
            if _logging(name):
                return
            if _counted(name):
                caller = name
                break
            back = back.f_back
        assert module is not None
        self.calls.setdefault(tid, []).append((caller, module, frame.f_code.co_name))
        if self.stop(frame):
            self.on = False
            self.done.set()


def _request_of(frame: FrameType) -> Any:
    module = frame.f_globals.get("__name__") or ""
    if not module.startswith("transports") or frame.f_code.co_name != "send":
        return None
    return frame.f_locals.get("request")


def _is_metrics(frame: FrameType) -> bool:
    request = _request_of(frame)
    return request is not None and (request.json or {}).get("type") == "metrics"


def _is_checkpoint(frame: FrameType) -> bool:
    request = _request_of(frame)
    return (
        request is not None
        and request.file is not None
        and (request.fields or {}).get("type") == "epoch"
    )


def summarise(tracer: Tracer) -> dict[str, Any]:
    """The walk's modules, hand-offs and package entries per thread."""
    modules: set[str] = set()
    handoffs = 0
    threads: dict[str, Any] = {}
    for tid, calls in tracer.calls.items():
        label = "training" if tid == tracer.main else "worker"
        entries: dict[str, int] = {}
        shape: list[str] = []
        mine: set[str] = set()
        for caller, module, _ in calls:
            mine.add(module)
            if caller is not None:
                mine.add(caller)
            if caller is not None and caller != module:
                handoffs += 1
                package = _package(module)
                if _package(caller) != package:
                    entries[package] = entries.get(package, 0) + 1
            package = _package(module)
            if not shape or shape[-1] != package:
                shape.append(package)
        modules |= mine
        threads[label] = {
            "calls": [f"{c or '-'} -> {m}.{f}" for c, m, f in calls],
            "modules": sorted(mine),
            "entries": entries,
            "shape": " > ".join(shape),
            "handoffs": sum(1 for c, m, _ in calls if c is not None and c != m),
        }
    return {
        "modules": sorted(modules),
        "count": len(modules),
        "handoffs": handoffs,
        "threads": threads,
    }


def _memory_store() -> Any:
    # The store's module may move between checkouts; the class keeps its name.
    for name in ("hubfsm.hub.store_memory", "hubfsm.hub.store", "hubfsm.hub.stores"):
        try:
            return importlib.import_module(name).MemoryStore()
        except (ImportError, AttributeError):
            continue
    raise RuntimeError("no MemoryStore in this checkout's hub")


def walk() -> dict[str, Any]:
    """Compose a session, and walk a metric and a checkpoint through it."""
    import structlog

    from hubfsm.hub.domain import Hub
    from hubfsm.runtime.factory import build
    from hubfsm.runtime.session import Session
    from hubfsm.runtime.settings import Settings
    from transports.memory import InMemoryTransport

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    tracer = Tracer()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hubfsm-walks-") as tmp:
        root = Path(tmp)
        hub = Hub(_memory_store(), keys=[KEY])
        settings = Settings.resolve(
            "yolov8n.yaml",
            api_key=KEY,
            train_args={"data": "coco8.yaml", "epochs": 3},
            outbox_dir=root / "outbox",
        )
        weights = root / "last.pt"
        weights.write_bytes(os.urandom(64 << 10))
        threading.setprofile(tracer.profile)  # the worker starts with it
        try:
            parts = build(settings, transport=InMemoryTransport(hub, KEY), nap=3600.0)
            session = Session.compose(parts)
            session.start()
            session.flush(timeout=TIMEOUT)
            time.sleep(0.3)  # the worker goes back to sleep
            sys.setprofile(tracer.profile)

            tracer.begin(_is_metrics)
            tracer.main_on = True
            session.log_metrics(METRICS, epoch=0)
            tracer.main_on = False
            parts.shell.wake_up()  # as the worker's nap would end
            if not tracer.done.wait(TIMEOUT):
                raise RuntimeError("the metrics request never left")
            results["metric"] = summarise(tracer)

            session.flush(timeout=TIMEOUT)
            time.sleep(0.3)
            tracer.begin(_is_checkpoint)
            tracer.main_on = True
            session.save_checkpoint(weights, epoch=0)
            tracer.main_on = False
            if not tracer.done.wait(TIMEOUT):
                raise RuntimeError("the checkpoint upload never left")
            results["checkpoint"] = summarise(tracer)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            tracer.on = False
        session.close(timeout=TIMEOUT)
    return results


def report(results: dict[str, Any], *, calls: bool = False) -> list[str]:
    """The figures as lines of text."""
    lines: list[str] = []
    for name, figures in results.items():
        core = [m for m in figures["modules"] if m.startswith("hubfsm.core.")]
        lines.append(
            f"{name}: {figures['count']} modules ({len(core)} of the core), "
            f"{figures['handoffs']} hand-offs"
        )
        for label, thread in figures["threads"].items():
            entries = ", ".join(f"{p} {n}" for p, n in sorted(thread["entries"].items()))
            lines.append(
                f"  {label} thread: {len(thread['modules'])} modules, "
                f"{thread['handoffs']} hand-offs; entries: {entries or 'none'}"
            )
            lines.append(f"    shape: {thread['shape']}")
            lines.append(f"    modules: {', '.join(thread['modules'])}")
            if calls:
                lines.extend(f"      {call}" for call in thread["calls"])
    return lines


def main(argv: list[str] | None = None) -> int:
    """Walk, print the figures, and write them as JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--calls", action="store_true", help="also list every counted call")
    args = parser.parse_args(argv)
    import hubfsm

    results = walk()
    print(f"hubfsm from {Path(hubfsm.__file__).parent}")
    print("\n".join(report(results, calls=args.calls)))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
