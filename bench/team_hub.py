"""Benchmark: simulated trainers against a team's hub (two processes, PostgreSQL and S3).

Starts a PostgreSQL and an S3 server (SeaweedFS) on 127.0.0.1 as the tests do (or uses
the ones ``--database`` and ``--objects`` name, with ``AWS_*`` set), then
``hubfsm hub serve --workers 2`` on them. Each of ``--trainers`` simulated trainers
creates a model, sends a heartbeat, and then one metrics request (one new epoch, with an
Idempotency-Key) every ``--interval`` seconds, spread evenly over the interval, for
``--seconds``. The client is light (``http.client``, one keep-alive connection per
trainer, a few sender threads) so that the load generator costs less CPU than the hub.

Reports requests per second, p50 and p99 latency, the CPU seconds per request of the hub
processes and of the database server (from ``/proc``), and how many acknowledged epochs
are missing when every one is read back from the database (0 is the only right answer).

Usage::

    python bench/team_hub.py [--trainers 1000] [--seconds 30] [--interval 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import services  # noqa: E402

#: Sender threads (each plays its share of the trainers in turn).
SENDERS = 64
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of ``pids`` so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        each = todo.pop()
        found.append(each)
        todo.extend(children.get(each, ()))
    return found


def postgres_pids(port: int) -> list[int]:
    """The database server's processes (the postmaster listening on ``port``, and below)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = entry.joinpath("cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"postgres") and str(port).encode() in cmd:
                return descendants(int(entry.name))
    return []


@contextlib.contextmanager
def hub(database: str, objects: str, data: Path) -> Iterator[tuple[int, int, str]]:
    """``hubfsm hub serve --workers 2``: (port, pid, key)."""
    (port,) = services.free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubfsm", "hub", "serve", "--data", str(data), "--database",
         database, "--objects", objects, "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(b"Press Ctrl-C"):
            break
    try:
        yield port, proc.pid, (data / "api_key").read_text().strip()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)


class Trainer:
    """One simulated training session on its own keep-alive connection."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.model = ""
        self.epoch = 0
        self.acked: list[int] = []

    def call(self, method: str, path: str, body: object, idem: str | None = None) -> dict:
        headers = {"x-api-key": self.key, "Content-Type": "application/json"}
        if idem:
            headers["Idempotency-Key"] = idem
        data = json.dumps(body).encode()
        for attempt in range(3):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                answer = self.conn.getresponse()
                raw = answer.read()
                if answer.status == 200:
                    return json.loads(raw)
                raise RuntimeError(f"{answer.status}: {raw[:200]!r}")
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def start(self) -> None:
        self.model = self.call("POST", "/v1/models", {"lineage": {"architecture": {"name": "n"}}})[
            "data"
        ]["id"]
        self.call("POST", f"/v1/agent/heartbeat/models/{self.model}", {"agent": "bench"})

    def metrics(self) -> None:
        epoch = self.epoch
        body = {"type": "metrics", "metrics": {str(epoch): json.dumps({"loss": 1.0 / (epoch + 1)})}}
        self.call("POST", f"/v1/models/{self.model}", body, f"{self.model}-{epoch}")
        self.acked.append(epoch)
        self.epoch += 1


def run(trainers: int, seconds: float, interval: float, port: int, key: str) -> dict:
    """Play the trainers; latencies and counts."""
    people = [Trainer(port, key) for _ in range(trainers)]
    with_errors: list[str] = []

    def start_some(group: list[Trainer]) -> None:
        for each in group:
            each.start()

    groups = [people[i::SENDERS] for i in range(SENDERS)]
    starters = [threading.Thread(target=start_some, args=(g,)) for g in groups]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()
    latencies: list[list[float]] = [[] for _ in groups]
    began = time.monotonic()
    end = began + seconds

    def play(index: int) -> None:
        group = groups[index]
        # Each trainer's turn is offset evenly across the interval.
        offsets = [((index + SENDERS * k) / max(1, trainers)) * interval for k in range(len(group))]
        due = [began + offset for offset in offsets]
        while True:
            nxt = min(range(len(group)), key=due.__getitem__) if group else None
            if nxt is None or due[nxt] >= end:
                return
            wait = due[nxt] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            try:
                group[nxt].metrics()
            except (OSError, RuntimeError, http.client.HTTPException) as error:
                with_errors.append(str(error)[:200])
            latencies[index].append(time.perf_counter() - sent)
            due[nxt] += interval

    players = [threading.Thread(target=play, args=(i,)) for i in range(SENDERS)]
    for thread in players:
        thread.start()
    for thread in players:
        thread.join()
    elapsed = time.monotonic() - began
    for each in people:
        each.conn.close()
    flat = sorted(x for group in latencies for x in group)
    return {
        "people": people,
        "requests": len(flat),
        "elapsed": elapsed,
        "p50_ms": 1000 * flat[len(flat) // 2] if flat else None,
        "p99_ms": 1000 * flat[min(len(flat) - 1, int(len(flat) * 0.99))] if flat else None,
        "errors": with_errors,
    }


def lost(database: str, people: list[Trainer]) -> tuple[int, int]:
    """(acknowledged epochs, those missing from the database)."""
    import psycopg

    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT model_id, epoch FROM metrics").fetchall()
    stored = {(str(model), int(epoch)) for model, epoch in rows}
    acked = {(p.model, e) for p in people for e in p.acked}
    return len(acked), len(acked - stored)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--database", help="an empty PostgreSQL database (else one is started)")
    parser.add_argument("--objects", help="s3://bucket/prefix (with --database)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.database:
            database, objects = args.database, args.objects
        else:
            admin = stack.enter_context(services.postgres())
            s3 = stack.enter_context(services.s3())
            os.environ.update(s3.environ())
            database = services.new_database(admin)
            objects = f"s3://{s3.bucket}/bench-{secrets.token_hex(4)}"
        pg_port = int(database.rsplit(":", 1)[1].split("/")[0])
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        port, pid, key = stack.enter_context(hub(database, objects, data))
        hub_pids, db_pids = descendants(pid), postgres_pids(pg_port)
        hub_cpu, db_cpu = cpu_seconds(hub_pids), cpu_seconds(db_pids)
        result = run(args.trainers, args.seconds, args.interval, port, key)
        # Backends the pools opened during the run count whole (their start is in the run).
        later = [p for p in postgres_pids(pg_port) if p not in db_pids]
        hub_cpu = cpu_seconds(hub_pids) - hub_cpu
        db_cpu = cpu_seconds(db_pids) + cpu_seconds(later) - db_cpu
        acked, missing = lost(database, result.pop("people"))
    requests = max(1, result["requests"])
    report = {
        "trainers": args.trainers,
        "seconds": round(result["elapsed"], 1),
        "requests": result["requests"],
        "requests_per_s": round(result["requests"] / result["elapsed"], 1),
        "p50_ms": round(result["p50_ms"] or 0.0, 1),
        "p99_ms": round(result["p99_ms"] or 0.0, 1),
        "hub_cpu_ms_per_request": round(1000 * hub_cpu / requests, 2),
        "db_cpu_ms_per_request": round(1000 * db_cpu / requests, 2),
        "epochs_acknowledged": acked,
        "epochs_lost": missing,
        "errors": len(result["errors"]),
        "first_errors": result["errors"][:3],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
