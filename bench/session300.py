"""One simulated 300-epoch session, checkpoints every epoch, under the flaky fault mix.

Prints the median wall time of 20 runs (target: at most 30 ms) and the requests, retries
and virtual duration of each. Run: ``python bench/session300.py [--runs 20]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from hubfsm.sim.play import run_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    walls, rows = [], []
    for seed in range(args.runs):
        started = time.perf_counter()
        result = run_seed(seed, profile="flaky", epochs=300, checkpoint_every=1, keep_trace=False)
        walls.append(time.perf_counter() - started)
        assert result.ok and result.state == "done", result.violations
        rows.append({"seed": seed, "requests": result.requests, "retries": result.retries,
                     "virtual_hours": round(result.virtual_seconds / 3600, 2)})
    median_ms = statistics.median(walls) * 1000
    print(f"300-epoch flaky session: median {median_ms:.1f} ms over {args.runs} runs "
          f"(min {min(walls) * 1000:.1f}, max {max(walls) * 1000:.1f}); target <= 30 ms")
    print(f"requests per session: median {statistics.median(r['requests'] for r in rows)}, "
          f"retries: median {statistics.median(r['retries'] for r in rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median_ms": median_ms, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
