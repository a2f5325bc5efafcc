"""Benchmark: uploading large final weights, hubfsm against hub-sdk and a plain streaming post.

Every variant uploads the same file in a fresh subprocess, so its peak RSS growth
(``ru_maxrss`` after the upload minus the RSS just before the upload call) is the
client's alone:

- ``hubfsm``: ``RequestsTransport.send`` of the final upload (``multipart/form-data``
  streamed from disk, ``Content-Length`` known in advance).
- ``hub-sdk``: hub-sdk 0.0.25's ``Models.upload_model(final=True)`` (its ``ModelUpload``),
  the official client's path: it reads the whole file, and requests then builds the
  whole multipart body in memory.
- ``requests``: ``requests.post(url, data=<file object>)``, the simplest streaming upload
  requests can do (a raw body, not multipart).

All three go to the same sink server, which drains each request body to disk in 1 MiB
chunks (so the server costs the same for all). The multipart variants (hubfsm and
hub-sdk) also run against the project's local hub, which parses the form and hashes
and stores the file: an end-to-end figure, not part of the ratio.

Usage::

    python bench/upload.py [--size-mib 256] [--runs 3] [--warmup 1] [--json results.json]

Targets: throughput hubfsm/requests >= 0.8, and hubfsm's peak memory growth <= 32 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402

MIB = 1 << 20
DUMMY_KEY = "bench" * 8 + "00"
MODEL = "benchmarkmodel000000"
TARGET_RATIO = 0.8
TARGET_GROWTH_MIB = 32.0
SINK_VARIANTS = ("hubfsm", "hub-sdk", "requests")
HUB_VARIANTS = ("hubfsm", "hub-sdk")
LABELS = {
    "hubfsm": "hubfsm `RequestsTransport` (final upload, streamed multipart)",
    "hub-sdk": "hub-sdk 0.0.25 `Models.upload_model` (reads the whole file)",
    "requests": "`requests.post(data=file)` (streamed raw body)",
}
PEER_OF = {"hub-sdk": "hub-sdk"}


# --- the client side: one upload in a fresh process ---------------------------------------


def child(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    benchkit.quiet_logs()
    key = os.environ.get(benchkit.KEY_ENV, DUMMY_KEY)
    file, url, model, epoch = spec["file"], spec["url"], spec["model"], spec["epoch"]
    size = os.path.getsize(file)
    if variant == "hubfsm":
        from hubfsm.core import protocol
        from hubfsm.transport import FilePart
        from transports.http import RequestsTransport

        client = RequestsTransport(key, api_root=url, progress=False)
        part = FilePart("best.pt", file, size, spec["sha256"])
        request = protocol.upload_final(model, epoch, part, map50_95=0.5, key=uuid.uuid4().hex)
        benchkit.reset_peak_rss()
        before = benchkit.rss_now_kib()
        started = time.perf_counter()
        response = client.send(request)
        seconds = time.perf_counter() - started
        status = response.status
        client.close()
    elif variant == "hub-sdk":
        os.environ["ULTRALYTICS_HUB_API"] = url  # hub-sdk reads it at import
        from hub_sdk.base.server_clients import ModelUpload

        uploader = ModelUpload({"x-api-key": key})
        benchkit.reset_peak_rss()
        before = benchkit.rss_now_kib()
        started = time.perf_counter()
        answer = uploader.upload_model(model, epoch, file, map=0.5, final=True)
        seconds = time.perf_counter() - started
        status = answer.status_code if answer is not None else 0
    else:
        import requests

        headers = {"x-api-key": key, "Content-Type": "application/octet-stream"}
        benchkit.reset_peak_rss()
        before = benchkit.rss_now_kib()
        started = time.perf_counter()
        with open(file, "rb") as handle:
            posted = requests.post(
                f"{url}/v1/models/{model}/upload", data=handle, headers=headers, timeout=(10, 60)
            )
        seconds = time.perf_counter() - started
        status = posted.status_code
    growth = max(0, benchkit.peak_rss_kib() - before) / 1024
    return {"status": status, "seconds": seconds, "bytes": size, "growth_mib": growth}


# --- the server side ----------------------------------------------------------------------


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
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

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


# --- orchestration ------------------------------------------------------------------------


def run_child(
    variant: str, url: str, file: Path, sha256: str, model: str, key: str
) -> dict[str, Any]:
    spec = {"url": url, "file": str(file), "sha256": sha256, "model": model, "epoch": 1}
    result = benchkit.run_child(__file__, variant, spec, key=key, timeout=900)
    if result["status"] != 200:
        raise RuntimeError(f"{variant} upload answered HTTP {result['status']}")
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    growth = [r["growth_mib"] for r in runs]
    median_s = statistics.median(seconds)
    return {
        "runs": len(runs),
        "seconds": seconds,
        "growth_mib": growth,
        "median_seconds": median_s,
        "mb_per_s": runs[0]["bytes"] / 1e6 / median_s,
        "median_growth_mib": statistics.median(growth),
        "max_growth_mib": max(growth),
    }


def run(*, size_mib: int = 256, runs: int = 3, warmup: int = 1, hub: bool = True) -> dict[str, Any]:
    """Upload the file with every variant; medians of ``runs`` after ``warmup`` discarded."""
    root = benchkit.setup()
    size = size_mib * MIB
    notes: list[str] = []
    sink_variants = [v for v in SINK_VARIANTS if v not in PEER_OF or benchkit.installed(PEER_OF[v])]
    hub_variants = [v for v in HUB_VARIANTS if v in sink_variants]
    for variant in SINK_VARIANTS:
        if variant not in sink_variants:
            notes.append(f"{LABELS[variant]}: {benchkit.missing_note(PEER_OF[variant])}")
    results: dict[str, dict[str, Any]] = {}
    where = root / "upload"
    where.mkdir(exist_ok=True)
    file = where / "best.pt"
    print(f"  upload: writing a {size_mib} MiB file", file=sys.stderr)
    sha256 = benchkit.make_file(file, size)
    try:
        per: dict[str, list[dict[str, Any]]] = {v: [] for v in sink_variants}
        with sink_server(where) as url:
            for _ in range(warmup):  # page cache, disk writeback, first connections
                for variant in sink_variants:
                    run_child(variant, url, file, sha256, MODEL, DUMMY_KEY)
            for number in range(runs):
                shift = number % len(sink_variants)  # rotate the order from run to run
                for variant in sink_variants[shift:] + sink_variants[:shift]:
                    result = run_child(variant, url, file, sha256, MODEL, DUMMY_KEY)
                    per[variant].append(result)
                    print(
                        f"  upload: run {number + 1} {variant} -> sink: {result['seconds']:.2f} s",
                        file=sys.stderr,
                    )
        for variant in sink_variants:
            results[f"{variant} -> sink"] = {"variant": variant, "target": "sink"}
            results[f"{variant} -> sink"].update(summarize(per[variant]))
        if hub:
            with benchkit.local_hub(root / "hub-upload") as local:
                per_hub: dict[str, list[dict[str, Any]]] = {v: [] for v in hub_variants}
                for number in range(runs):
                    for variant in hub_variants:
                        model = benchkit.new_model(local)  # a final upload ends a model
                        result = run_child(variant, local.url, file, sha256, model, local.api_key)
                        per_hub[variant].append(result)
                        print(
                            f"  upload: run {number + 1} {variant} -> local hub: "
                            f"{result['seconds']:.2f} s",
                            file=sys.stderr,
                        )
                for variant in hub_variants:
                    results[f"{variant} -> local hub"] = {"variant": variant, "target": "local hub"}
                    results[f"{variant} -> local hub"].update(summarize(per_hub[variant]))
        else:
            notes.append("local hub rows skipped (--no-hub)")
    finally:
        file.unlink(missing_ok=True)

    a = results["hubfsm -> sink"]
    b = results["requests -> sink"]
    ratio = a["mb_per_s"] / b["mb_per_s"]
    for row in results.values():
        row["throughput_vs_hubfsm"] = row["mb_per_s"] / a["mb_per_s"]
    checks = [
        {
            "target": f"hubfsm throughput / plain streaming post >= {TARGET_RATIO}",
            "value": f"{ratio:.2f}",
            "met": ratio >= TARGET_RATIO,
        },
        {
            "target": f"hubfsm peak memory growth <= {TARGET_GROWTH_MIB:g} MiB",
            "value": f"{a['max_growth_mib']:.1f} MiB (max over runs)",
            "met": a["max_growth_mib"] <= TARGET_GROWTH_MIB,
        },
    ]
    official = results.get("hub-sdk -> sink")
    if official:
        checks.append(
            {
                "target": "hubfsm throughput >= hub-sdk `upload_model` (sink)",
                "value": f"{a['mb_per_s'] / official['mb_per_s']:.2f}x",
                "met": a["mb_per_s"] >= official["mb_per_s"],
            }
        )
    return {
        "size_bytes": size,
        "size_mib": size_mib,
        "runs": runs,
        "warmup_runs": warmup,
        "results": results,
        "throughput_ratio": ratio,
        "targets": checks,
        "notes": notes,
    }


def render(report: dict[str, Any]) -> list[str]:
    """The report as Markdown."""
    rows = [
        [
            LABELS[row["variant"]],
            row["target"],
            row["runs"],
            benchkit.fmt(row["median_seconds"]),
            benchkit.fmt(row["mb_per_s"], 0),
            f"{row['median_growth_mib']:.1f} / {row['max_growth_mib']:.1f}",
        ]
        for row in report["results"].values()
    ]
    lines = benchkit.table(
        [
            "variant",
            "server",
            "runs",
            "median time (s)",
            "throughput (MB/s)",
            "peak RSS growth (MiB, median / max)",
        ],
        rows,
        "llrrrr",
    )
    lines.append("")
    lines.append(
        f"A {report['size_mib']} MiB file over 127.0.0.1, each upload in a fresh process; "
        f"medians of {report['runs']} runs after {report['warmup_runs']} discarded per "
        "variant (sink rows)."
    )
    for note in report["notes"]:
        lines.append(f"- {note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__, children=SINK_VARIANTS)
    parser.add_argument("--size-mib", type=int, default=256, help="file size (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded runs per variant")
    parser.add_argument("--no-hub", action="store_true", help="skip the local hub rows")

    def measure(args: argparse.Namespace) -> dict[str, Any]:
        report = run(
            size_mib=args.size_mib, runs=args.runs, warmup=args.warmup, hub=not args.no_hub
        )
        report["machine"] = benchkit.machine()  # a standalone run is reported on its own
        return report

    return benchkit.script_main(parser, argv, run=measure, render=render, child=child, strict=True)


if __name__ == "__main__":
    sys.exit(main())
