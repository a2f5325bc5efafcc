"""How long ``hubfsm demo --hub URL`` takes to fail on a wrong address, and what it says.

Three mistakes a first run makes: no hub running at the URL (connection refused),
``https://`` against a plain ``http://`` hub (a TLS failure), and a malformed port.
Each runs as a fresh ``hubfsm`` process, a few times; the table shows the median wall
time to the exit, the exit status and the last line on standard error.

    python bench/first_contact.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchkit

from hubfsm.hub.server import LocalHub


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def attempt(root: str, key: str) -> tuple[float, int, str]:
    env = dict(os.environ, HUB_API_KEY=key)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hubfsm", "demo", "--epochs", "1", "--hub", root],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return seconds, done.returncode, last.replace(key, "***")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    state = benchkit.setup()
    with LocalHub(Path(state) / "hub") as hub:
        cases = {
            "connection refused": f"http://127.0.0.1:{free_port()}",
            "https to an http hub": hub.url.replace("http://", "https://"),
            "malformed port": "http://127.0.0.1:8799x",
        }
        print("| mistake | median to exit | exit status | last line on stderr |")
        print("|---|---:|---:|---|")
        for name, root in cases.items():
            results = [attempt(root, hub.api_key) for _ in range(runs)]
            median = statistics.median(r[0] for r in results)
            _, code, last = results[-1]
            print(f"| {name} | {median:.1f} s | {code} | {last[:140]} |")
    info = benchkit.machine()
    print(f"\n{runs} runs each; {info['cores']} cores, {info['cpu']}, Python {info['python']}")


if __name__ == "__main__":
    main()
