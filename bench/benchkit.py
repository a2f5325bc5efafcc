"""What every benchmark script shares: quiet logs, private state, a local hub, children, tables.

The benchmark scripts import this module by its plain name (``bench/`` is the script's own
directory, so it is on ``sys.path`` whether a script runs alone or under ``run_all.py``).

Three rules hold for every benchmark:

- Logs are at WARNING: structlog (hubfsm logs every transition at INFO) and the standard
  ``logging`` root. :data:`LOG_LEVEL` names the level in every report.
- Nothing is written outside a private temporary directory: hubfsm's outbox
  (``HUBFSM_OUTBOX``), ultralytics' settings (``YOLO_CONFIG_DIR``), Matplotlib's cache and
  every Weights & Biases directory point into it, and ultralytics' and W&B's own network
  checks are switched off (``YOLO_OFFLINE``, W&B offline mode), so a benchmark talks to
  127.0.0.1 only.
- Every client that is compared runs in a fresh subprocess, so its timings and its memory
  are its own; servers run in the parent.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

LOG_LEVEL = "WARNING"

#: Where a benchmark run keeps its private state; children inherit it.
STATE_ENV = "HUBFSM_BENCH_STATE"
#: The API key of the local hub, handed to children here and never on a command line.
KEY_ENV = "HUBFSM_BENCH_KEY"

#: The comparison tools of the ``bench`` extra: distribution name -> import name.
PEERS = {"hub-sdk": "hub_sdk", "ultralytics": "ultralytics", "wandb": "wandb"}

#: The metrics of one epoch as a trainer logs them (names in ultralytics' style).
_METRIC_NAMES = (
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
)


def epoch_metrics(keys: int, epoch: int = 0) -> dict[str, float]:
    """One epoch's metrics with ``keys`` float values."""
    names = list(_METRIC_NAMES[:keys]) + [f"extra/m{i}" for i in range(keys - len(_METRIC_NAMES))]
    return {name: round(0.5 + 0.001 * i + 1.0 / (epoch + 2), 6) for i, name in enumerate(names)}


# --- the command line -----------------------------------------------------------------


def command_line(
    doc: str | None, *, children: Iterable[str] | None = None
) -> argparse.ArgumentParser:
    """A benchmark script's argument parser, for :func:`script_main`.

    It describes the script by the first line of ``doc`` and has ``--json PATH``. For a
    script whose clients run as children of it (see :func:`run_child`), ``children``
    names the variants a child may be (empty: any), and the parser takes the hidden
    ``--child VARIANT --spec JSON`` that :func:`run_child` passes.
    """
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    if children is not None:
        choices = list(children) or None
        parser.add_argument("--child", choices=choices, help=argparse.SUPPRESS)
        parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser


def script_main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any]], list[str]],
    child: Callable[[str, dict[str, Any]], Mapping[str, Any]] | None = None,
    strict: bool = False,
) -> int:
    """Run a benchmark script: as a child when asked to, else the benchmark and its report.

    A child's result goes to standard output as one JSON line (:func:`emit`). Otherwise
    ``run`` gets the parsed arguments; its result is printed through ``render``, followed
    by its targets if it has any, and written to ``--json`` if given.

    Returns:
        The exit status: 0, or with ``strict`` 1 when a target was missed.
    """
    args = parser.parse_args(argv)
    if child is not None and getattr(args, "child", None):
        emit(child(args.child, json.loads(args.spec)))
        return 0
    result = run(args)
    print("\n".join(render(result)))
    checks = result.get("targets", [])
    if checks:
        print()
    for check in checks:
        print(f"- {check['target']}: {check['value']} ({'met' if check['met'] else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 1 if strict and not all(check["met"] for check in checks) else 0


# --- the environment ------------------------------------------------------------------


def quiet_logs() -> None:
    """Logs at WARNING: structlog's filtering logger and the standard logging root."""
    import structlog

    level = getattr(logging, LOG_LEVEL)
    logging.getLogger().setLevel(level)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


def private_state() -> Path:
    """Point all state of hubfsm and of the peers into one private temporary directory.

    The first call in a benchmark run makes the directory (removed at exit) and sets the
    environment; children find it in :data:`STATE_ENV` and keep it.
    """
    existing = os.environ.get(STATE_ENV)
    if existing and Path(existing).is_dir():
        return Path(existing)
    root = Path(tempfile.mkdtemp(prefix="hubfsm-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dirs = {
        "HUBFSM_OUTBOX": "outbox",
        "YOLO_CONFIG_DIR": "ultralytics",
        "MPLCONFIGDIR": "matplotlib",
        "WANDB_DIR": "wandb",
        "WANDB_CONFIG_DIR": "wandb-config",
        "WANDB_CACHE_DIR": "wandb-cache",
        "WANDB_DATA_DIR": "wandb-data",
        "WANDB_ARTIFACT_DIR": "wandb-artifacts",
    }
    for name, sub in dirs.items():
        (root / sub).mkdir()
        os.environ[name] = str(root / sub)
    os.environ.update(
        {
            STATE_ENV: str(root),
            "YOLO_OFFLINE": "true",  # ultralytics probes public DNS servers at import otherwise
            "YOLO_VERBOSE": "false",
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_DISABLE_GIT": "true",
        }
    )
    for name in ("HUB_API_KEY", "ULTRALYTICS_HUB_API", "ULTRALYTICS_HUB_WEB", "HUBFSM_OFFLINE"):
        os.environ.pop(name, None)
    return root


def setup() -> Path:
    """Quiet logs and private state: the first thing every benchmark entry point does."""
    quiet_logs()
    return private_state()


def installed(distribution: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_note(distribution: str) -> str:
    """The sentence a report prints for a peer that is not installed."""
    return f"{distribution} is not installed (pip install -e '.[bench]'): row skipped"


def machine() -> dict[str, Any]:
    """What the benchmarks ran on: cores, memory, CPU model, Python, OS; no host names."""
    memory_gib = None
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / (1 << 20), 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    if memory_gib is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {_major_minor(platform.release())} ({platform.machine()})",
        "libc": " ".join(platform.libc_ver()).strip() or None,
        "log_level": LOG_LEVEL,
        "versions": {
            name: installed(name)
            for name in ("hubfsm", "requests", "urllib3", "structlog", "transitions", *PEERS)
        },
    }


def _major_minor(release: str) -> str:
    parts = release.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else release


# --- numbers ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of sorted values, nearest rank."""
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median, p95, p99, mean and count of samples."""
    values = sorted(samples)
    return {
        "median": statistics.median(values) if values else math.nan,
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values) if values else math.nan,
        "n": len(values),
    }


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else math.nan


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell; a dash when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """A Markdown table; ``align`` holds one of ``l``/``r`` per column (default: l, then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# --- the local hub ------------------------------------------------------------------------


@contextlib.contextmanager
def local_hub(where: Path, **options: Any) -> Iterator[Any]:
    """Run the project's local hub (a ``LocalHub``) in this process, on 127.0.0.1."""
    from hubfsm.hub.server import LocalHub

    hub = LocalHub(where, host="127.0.0.1", **options)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def new_model(hub: Any, name: str = "yolov8n.yaml") -> str:
    """Create a model on the local hub, the way a trainer's first run does; its id."""
    from hubfsm.core import protocol
    from transports.http import RequestsTransport

    client = RequestsTransport(hub.api_key, api_root=hub.url, progress=False)
    try:
        payload = protocol.create_payload(name, {"data": "coco8.yaml", "epochs": 300})
        created = client.send(protocol.create_model(payload))
    finally:
        client.close()
    if not created.ok:
        raise RuntimeError(f"the local hub refused to create a model (HTTP {created.status})")
    return str(created.data["id"])


def metrics_on_hub(hub: Any, model_id: str) -> set[int]:
    """The epochs whose metrics the local hub holds for a model."""
    return {int(row["epoch"]) for row in hub.hub.metrics(model_id)}


# --- children -----------------------------------------------------------------------------


def run_child(
    script: str | Path,
    variant: str,
    spec: Mapping[str, Any],
    *,
    key: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run ``script --child VARIANT --spec JSON`` in a fresh interpreter; its last JSON line.

    The API key goes through the environment (:data:`KEY_ENV`), never the command line.
    """
    command = [sys.executable, str(script), "--child", variant, "--spec", json.dumps(spec)]
    child_env = dict(os.environ)
    child_env.update(env or {})
    if key is not None:
        child_env[KEY_ENV] = key
    done = subprocess.run(
        command, env=child_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout)[-3000:]
        raise RuntimeError(f"{Path(script).name} {variant} failed ({done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def child_key() -> str:
    """The local hub's API key, in a child."""
    return os.environ[KEY_ENV]


def emit(result: Mapping[str, Any]) -> None:
    """A child's answer: one JSON line on standard output."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def rss_now_kib() -> int:
    """The current resident set size in KiB (the peak so far where /proc is missing)."""
    now = _status_kib("VmRSS")
    return now if now is not None else peak_rss_kib()


def reset_peak_rss() -> None:
    """Start the peak RSS over from the current RSS, where the kernel allows it.

    It matters: after a fork and exec, ``getrusage``'s ``ru_maxrss`` starts at the
    parent's peak, so a large parent would show up as the child's growth.
    """
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM (Linux 4.0 and later)


def peak_rss_kib() -> int:
    """The peak resident set size of this process in KiB (since :func:`reset_peak_rss`)."""
    import resource

    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; their sha256."""
    import hashlib

    digest = hashlib.sha256()
    block_size = 1 << 20
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, block_size))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


# --- the official client ------------------------------------------------------------------


def official_session(url: str, model_id: str) -> Any:
    """ultralytics 8.2.0's ``HUBTrainingSession`` opened on a local hub's model, in a child.

    It authenticates, loads the model and starts its heartbeat thread, as in training.
    """
    os.environ["ULTRALYTICS_HUB_API"] = url  # hub-sdk and ultralytics read it at import
    from ultralytics.hub.session import HUBTrainingSession

    session = HUBTrainingSession(f"{child_key()}_{model_id}")
    if getattr(session, "model_id", None) != model_id:
        raise RuntimeError("the official client did not load the model from the local hub")
    return session
