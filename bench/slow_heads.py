"""Benchmark: how many slow request heads hold every worker thread of the local hub.

Each attacker keeps one connection open that has sent one byte of a request head and
nothing more, and connects again as soon as the hub closes it. A worker thread takes such
a connection as soon as it is readable: it waits for the rest up to the head deadline
(10 s) and answers 408, or, once half the threads wait on such heads, answers 503 at
once. Meanwhile a probe asks ``POST /v1/auth`` (with the key) every ``--every`` seconds
on a fresh connection and times the answer.

The hub runs as ``hubfsm hub serve`` in a subprocess, with its defaults (64 threads).

Usage::

    python bench/slow_heads.py [--attackers 0 32 63 64 96] [--seconds 12] [--json PATH]
"""

from __future__ import annotations

import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
import hub_load  # noqa: E402

#: Seconds a probe waits for its answer before it counts as lost.
PROBE_TIMEOUT = 15.0


def attacker(port: int, stop: threading.Event, opened: list[int]) -> None:
    """Hold a connection with one byte of a head; open another when the hub closes it."""
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            time.sleep(0.05)
            continue
        opened.append(1)
        with sock:
            try:
                sock.sendall(b"G")
                while not stop.is_set():
                    try:
                        if not sock.recv(4096):
                            break  # cut at the head deadline (after a 408)
                    except TimeoutError:
                        continue
            except OSError:
                pass


def probe(port: int, key: str) -> float | None:
    """Seconds to an answer of an authenticated request on a new connection; None if lost."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("POST", "/v1/auth", headers={"x-api-key": key})
        conn.getresponse().read()
    except OSError:
        return None
    finally:
        conn.close()
    return time.perf_counter() - started


def scenario(port: int, key: str, attackers: int, seconds: float, every: float) -> dict[str, Any]:
    """Probe the hub for ``seconds`` while ``attackers`` hold slow heads."""
    stop = threading.Event()
    opened: list[int] = []
    threads = [
        threading.Thread(target=attacker, args=(port, stop, opened), daemon=True)
        for _ in range(attackers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every attacker connected
    waits: list[float | None] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        waits.append(probe(port, key))
        time.sleep(every)
    stop.set()
    for thread in threads:
        thread.join(PROBE_TIMEOUT)
    answered = [w for w in waits if w is not None]
    return {
        "attackers": attackers,
        "connections_per_10s": round(len(opened) / (seconds + 0.5) * 10, 1),
        "probes": len(waits),
        "lost": len(waits) - len(answered),
        "median_s": round(statistics.median(answered), 3) if answered else None,
        "max_s": round(max(answered), 3) if answered else None,
        "over_1s": sum(w > 1.0 for w in answered),
    }


def run(attackers: list[int], seconds: float = 12.0, every: float = 0.5) -> dict[str, Any]:
    """Every attacker count against one hub, a pause between them for it to drain."""
    benchkit.setup()
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="slow-heads-") as tmp,
        hub_load.served(Path(tmp) / "hub") as (url, key, _),
    ):
        port = int(url.rsplit(":", 1)[1])
        for count in attackers:
            rows.append(scenario(port, key, count, seconds, every))
            time.sleep(11)  # the last heads reach their deadline
    return {"seconds": seconds, "every": every, "rows": rows}


def render(result: dict[str, Any]) -> list[str]:
    """The results as a Markdown table and a note."""
    rows = [
        [r["attackers"], r["connections_per_10s"], r["probes"], r["lost"],
         benchkit.fmt(r["median_s"], 3), benchkit.fmt(r["max_s"], 3), r["over_1s"]]
        for r in result["rows"]
    ]  # fmt: skip
    header = ["attackers", "connections / 10 s", "probes", "lost", "median s", "max s", "> 1 s"]
    return [
        *benchkit.table(header, rows),
        "",
        f"A probe every {result['every']:g} s for {result['seconds']:g} s per row, against "
        "`hubfsm hub serve` (64 threads, 10 s head deadline) in a subprocess.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__)
    parser.add_argument("--attackers", type=int, nargs="+", default=[0, 32, 63, 64, 96])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--every", type=float, default=0.5)
    return benchkit.script_main(
        parser, argv, run=lambda a: run(a.attackers, a.seconds, a.every), render=render
    )


if __name__ == "__main__":
    raise SystemExit(main())
