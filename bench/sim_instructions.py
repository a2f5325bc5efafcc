"""Instructions one simulated 300-epoch session executes: a figure a busy machine cannot move.

Timings on a shared machine vary by a fifth from run to run; the count of instructions
a session executes does not. This runs ``bench/session300.py``'s session (profile
``flaky``, a checkpoint every epoch) under Valgrind's callgrind, once with no session and
once with ``--sessions`` of them, and prints the difference per session. Comparing two
versions of the code: run it with ``PYTHONPATH`` pointing at each checkout. It needs
``valgrind`` (Debian package ``valgrind``) and takes about a minute.

Usage::

    python bench/sim_instructions.py [--sessions 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The child: warm up on a short session, then play the asked number of long ones.
CHILD = """
import sys
try:
    from hubfsm.sim.play import run_seed
except ImportError:  # a checkout from before the simulator's split
    from hubfsm.sim.world import run_seed
run_seed(99, profile="flaky", epochs=20, checkpoint_every=1, keep_trace=False)
for seed in range(int(sys.argv[1])):
    result = run_seed(seed, profile="flaky", epochs=300, checkpoint_every=1, keep_trace=False)
    assert result.ok, result.violations
"""


def _instructions(sessions: int, scratch: Path) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={scratch / 'callgrind.out'}",
            sys.executable,
            "-c",
            CHILD,
            str(sessions),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    with tempfile.TemporaryDirectory(prefix="hubfsm-bench-") as scratch:
        start_up = _instructions(0, Path(scratch))
        total = _instructions(args.sessions, Path(scratch))
    per_session = (total - start_up) / args.sessions
    print(f"one 300-epoch flaky session: {per_session / 1e6:.0f} M instructions "
          f"(over {args.sessions} sessions, start-up subtracted)")


if __name__ == "__main__":
    main()
