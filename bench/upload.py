"""Benchmark: streaming a large checkpoint with RequestsTransport vs a plain requests.post.

Both variants upload the same file to the same local server, which drains each request body
to disk in 1 MiB chunks: (a) ``RequestsTransport.send`` with a multipart checkpoint upload,
(b) ``requests.post(url, data=<file object>)``, the simplest streaming upload requests can do.
Each run happens in a fresh subprocess, so its peak RSS growth (``ru_maxrss`` after the upload
minus the RSS just before it) is the client's alone. When the project's local hub can be
started, (a) also runs against it, as a real end-to-end figure (not part of the ratio, since
the hub parses the form and hashes the file).

Usage::

    python bench/upload.py [--size-mib 256] [--runs 3] [--warmup 1] [--json results.json]

Targets: throughput (a)/(b) >= 0.8, and (a)'s peak memory growth <= 32 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import structlog
from werkzeug.serving import WSGIRequestHandler, make_server

MIB = 1 << 20
KEY_ENV = "HUBFSM_BENCH_KEY"  # the child reads the key here, never from its command line
DUMMY_KEY = "bench" * 8 + "00"
MODEL = "benchmarkmodel000000"
TARGET_RATIO = 0.8
TARGET_GROWTH_MIB = 32.0


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# --- the client side: one upload in a fresh process ---------------------------------------


def rss_now_kib() -> int:
    """The current resident set size in KiB (the peak so far where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return peak_rss_kib()


def peak_rss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def child(args: argparse.Namespace) -> None:
    quiet_logs()
    from hubfsm import protocol
    from hubfsm.transport import FilePart
    from transports.http import RequestsTransport

    key = os.environ.get(KEY_ENV, DUMMY_KEY)
    size = os.path.getsize(args.file)
    path = f"/v1/models/{args.model}/upload"
    if args.variant == "hubfsm":
        client = RequestsTransport(key, api_root=args.url, progress=False)
        part = FilePart("last.pt", args.file, size, args.sha256)
        request = protocol.upload_checkpoint(
            args.model, args.epoch, part, is_best=False, key=uuid.uuid4().hex
        )
        before = rss_now_kib()
        started = time.perf_counter()
        response = client.send(request)
        seconds = time.perf_counter() - started
        status = response.status
        client.close()
    else:
        headers = {"x-api-key": key, "Content-Type": "application/octet-stream"}
        before = rss_now_kib()
        started = time.perf_counter()
        with open(args.file, "rb") as handle:
            answer = requests.post(args.url + path, data=handle, headers=headers, timeout=(10, 60))
        seconds = time.perf_counter() - started
        status = answer.status_code
    growth = max(0, peak_rss_kib() - before) / 1024
    print(json.dumps({"status": status, "seconds": seconds, "bytes": size, "growth_mib": growth}))


# --- the server side ----------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def sink_app(where: Path) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app that writes each request body to a file, 1 MiB at a time, then deletes it."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        left = int(environ.get("CONTENT_LENGTH") or 0)
        stream = environ["wsgi.input"]
        target = where / f"upload-{uuid.uuid4().hex}"
        total = 0
        with open(target, "wb") as out:
            while left > 0:
                block = stream.read(min(left, MIB))
                if not block:
                    break
                out.write(block)
                left -= len(block)
                total += len(block)
        target.unlink()
        body = json.dumps({"success": True, "message": "", "data": {"bytes": total}}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


@contextmanager
def sink_server(where: Path) -> Iterator[str]:
    server = make_server(
        "127.0.0.1", 0, sink_app(where), threaded=True, request_handler=QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def local_hub(where: Path) -> Iterator[tuple[str, str, str] | str]:
    """The project's local hub with one model: (url, key, model id), or why it is unavailable."""
    try:
        from hubfsm import protocol
        from hubfsm.hub.server import LocalHub
        from transports.http import RequestsTransport
    except ImportError as error:
        yield f"not importable ({error})"
        return
    hub = LocalHub(where / "hub")
    try:
        hub.start()
        client = RequestsTransport(hub.api_key, api_root=hub.url)
        payload = {"lineage": {"architecture": {"name": "yolov8n"}}, "meta": {"name": "bench"}}
        created = client.send(protocol.create_model(payload))
        client.close()
        if not created.ok:
            yield f"could not create a model (HTTP {created.status})"
            return
        yield hub.url, hub.api_key, str(created.data["id"])
    except Exception as error:  # a hub under construction must not sink the benchmark
        yield f"failed to start ({type(error).__name__}: {error})"
    finally:
        hub.stop()


# --- orchestration ------------------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, MIB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def run_child(
    variant: str, url: str, file: Path, sha256: str, model: str, epoch: int, key: str
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", variant, "--url", url, "--file", str(file)]
    command += ["--sha256", sha256, "--model", model, "--epoch", str(epoch)]
    env = dict(os.environ, **{KEY_ENV: key})
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} run failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["status"] != 200:
        raise RuntimeError(f"{variant} run answered HTTP {result['status']}")
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    growth = [r["growth_mib"] for r in runs]
    median_s = statistics.median(seconds)
    return {
        "seconds": seconds,
        "growth_mib": growth,
        "median_seconds": median_s,
        "mb_per_s": runs[0]["bytes"] / 1e6 / median_s,
        "median_growth_mib": statistics.median(growth),
        "max_growth_mib": max(growth),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=256, help="file size (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded runs per variant")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    parser.add_argument("--no-hub", action="store_true", help="skip the local hub row")
    parser.add_argument("--child", choices=["hubfsm", "requests"], help=argparse.SUPPRESS)
    for hidden in ("--url", "--file", "--sha256", "--model"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--epoch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.variant = args.child
        child(args)
        return 0

    quiet_logs()
    size = args.size_mib * MIB
    results: dict[str, dict[str, Any]] = {}
    hub_note = "skipped (--no-hub)"
    with tempfile.TemporaryDirectory(prefix="hubfsm-bench-") as tmp:
        where = Path(tmp)
        file = where / "last.pt"
        print(f"writing a {args.size_mib} MiB file...", file=sys.stderr)
        sha256 = make_file(file, size)
        runs: dict[str, list[dict[str, Any]]] = {"hubfsm": [], "requests": []}
        with sink_server(where) as url:
            for _ in range(args.warmup):  # page cache, disk writeback, first connections
                for variant in ("hubfsm", "requests"):
                    run_child(variant, url, file, sha256, MODEL, 1, DUMMY_KEY)
            for number in range(args.runs):
                for variant in (
                    ("hubfsm", "requests") if number % 2 == 0 else ("requests", "hubfsm")
                ):
                    result = run_child(variant, url, file, sha256, MODEL, 1, DUMMY_KEY)
                    runs[variant].append(result)
                    print(
                        f"  run {number + 1} {variant}: {result['seconds']:.2f} s", file=sys.stderr
                    )
        results["(a) RequestsTransport -> sink"] = summarize(runs["hubfsm"])
        results["(b) requests.post(data=file) -> sink"] = summarize(runs["requests"])
        if not args.no_hub:
            with local_hub(where) as hub:
                if isinstance(hub, str):
                    hub_note = hub
                else:
                    hub_url, key, model = hub
                    hub_runs = [
                        run_child("hubfsm", hub_url, file, sha256, model, epoch, key)
                        for epoch in range(1, args.runs + 1)
                    ]
                    results["(a) RequestsTransport -> local hub"] = summarize(hub_runs)
                    hub_note = "ran"

    a = results["(a) RequestsTransport -> sink"]
    b = results["(b) requests.post(data=file) -> sink"]
    ratio = a["mb_per_s"] / b["mb_per_s"]
    print()
    print(
        f"Upload of {args.size_mib} MiB over 127.0.0.1, median of {args.runs} runs each "
        f"after {args.warmup} discarded"
    )
    print()
    print("| variant | median time (s) | throughput (MB/s) | peak RSS growth (MiB, median / max) |")
    print("|---|---:|---:|---:|")
    for name, row in results.items():
        print(
            f"| {name} | {row['median_seconds']:.2f} | {row['mb_per_s']:.0f} | "
            f"{row['median_growth_mib']:.1f} / {row['max_growth_mib']:.1f} |"
        )
    print()
    ratio_ok = ratio >= TARGET_RATIO
    growth_ok = a["max_growth_mib"] <= TARGET_GROWTH_MIB
    print(
        f"- throughput ratio (a)/(b): {ratio:.2f} (target >= {TARGET_RATIO}: "
        f"{'met' if ratio_ok else 'MISSED'})"
    )
    print(
        f"- (a) peak memory growth: {a['max_growth_mib']:.1f} MiB (target <= "
        f"{TARGET_GROWTH_MIB:.0f} MiB: {'met' if growth_ok else 'MISSED'})"
    )
    print(f"- local hub row: {hub_note}")
    if args.json:
        report = {
            "size_bytes": size,
            "runs": args.runs,
            "warmup_runs": args.warmup,
            "results": results,
            "throughput_ratio": ratio,
            "targets": {
                "ratio_min": TARGET_RATIO,
                "ratio_met": ratio_ok,
                "growth_max_mib": TARGET_GROWTH_MIB,
                "growth_met": growth_ok,
            },
            "local_hub": hub_note,
            "python": platform.python_version(),
            "requests": requests.__version__,
            "platform": platform.platform(),
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ratio_ok and growth_ok else 1


if __name__ == "__main__":
    sys.exit(main())
