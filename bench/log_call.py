"""How long ``Session.log_metrics`` takes on the training thread.

Runs a real session (worker thread, real clock) against the in-memory hub and times
``log_metrics`` in batches; prints the median, p95 and p99 per call in microseconds.

    python bench/log_call.py [--keys 10] [--calls 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import hubfsm
from hubfsm import protocol
from hubfsm.hub.domain import Hub
from hubfsm.hub.store_memory import MemoryStore
from transports.memory import InMemoryTransport

KEY = "b" * 42
BATCH = 50


def measure(keys: int, calls: int) -> dict[str, float]:
    hub = Hub(MemoryStore(), keys=[KEY])
    created = InMemoryTransport(hub, KEY).send(
        protocol.create_model(protocol.create_payload("yolov8n.yaml", {}))
    )
    session = hubfsm.Session(str(created.data["id"]), transport=InMemoryTransport(hub, KEY))
    session.start()
    metrics = {f"metrics/key{i}": 0.5 + i for i in range(keys)}
    per_call: list[float] = []
    log = session.log_metrics
    clock = time.perf_counter_ns
    epoch = 0
    for _ in range(calls // BATCH):
        t0 = clock()
        for _ in range(BATCH):
            log(metrics, epoch=epoch)
            epoch += 1
        per_call.append((clock() - t0) / BATCH / 1000.0)
    session.close(timeout=5.0)
    per_call.sort()
    return {
        "keys": keys,
        "calls": calls,
        "median_us": statistics.median(per_call),
        "p95_us": per_call[int(len(per_call) * 0.95)],
        "p99_us": per_call[int(len(per_call) * 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    import structlog

    # Benchmarks state their log level: WARNING, so transitions are not printed.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows = [measure(k, args.calls) for k in args.keys]
    print("| keys | median us | p95 us | p99 us |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['keys']} | {r['median_us']:.2f} | {r['p95_us']:.2f} | {r['p99_us']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
