"""hubfsm's Platform session beside ultralytics 8.4.190's Platform callbacks, in one run.

Both clients talk to the same local hub's Platform API (a ``ul_`` key, 127.0.0.1), each
in a fresh interpreter. The official client is the real module
``ultralytics.utils.callbacks.platform`` (with the ``ultralytics-platform`` SDK), called
with a small fake trainer that has the attributes its callbacks read:
``on_pretrain_routine_start`` (``training_started``, console capture, environment and
system info), ``on_fit_epoch_end`` and ``on_model_save`` per epoch, ``on_train_end``.
hubfsm is ``Session(..., protocol="platform")`` with ``log_metrics`` and
``save_checkpoint`` per epoch and ``finish``. The hub records when each event arrives.

Three parts:

- ``epoch``: time on the training thread per epoch (both calls of an epoch), no latency.
  The official ``on_model_save`` uploads at most every 15 minutes, so in a short run it
  returns at once; hubfsm's first checkpoint goes at once and is snapshotted on the call.
- ``drain``: the hub delays every request by 50-150 ms; 300 epochs are logged as fast as
  possible, then the end of training (``finish`` / ``on_train_end``) is timed. When does
  ``training_complete`` reach the hub relative to the last ``epoch_end``, how long does
  the trainer wait, what is missing when the call returns and when the process has exited.
- ``kill``: each client trains with a short pause per epoch against the slow hub and is
  killed with SIGKILL at a random epoch; for hubfsm ``hubfsm sync --protocol platform``
  runs alone afterwards. Epochs on the hub versus epochs logged, per seed.

The official module does nothing under pytest; this is a plain script. It needs
ultralytics 8.4.190 and ultralytics-platform importable (Python 3.11 or newer).

Usage::

    python bench/platform_client.py [--full] [--json PATH]
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# This file's name is the standard library's ``platform``: with its own directory first on
# sys.path, every later ``import platform`` (benchkit's, torch's) would get this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.append(str(_HERE))  # after the standard library: benchkit still imports by name

import benchkit  # noqa: E402

KEYS = 10
LATENCY = (0.05, 0.15)
CKPT_MIB = 6  # about a YOLOv8n last.pt
VARIANTS = ("hubfsm", "official")
LABELS = {
    "hubfsm": 'hubfsm `Session(protocol="platform")`',
    "official": "ultralytics 8.4.190 Platform callbacks",
}
#: Default and ``--full`` sizes.
SIZES = {
    False: {
        "epoch_n": 100,
        "drain_epochs": 300,
        "drain_runs": 1,
        "kill_seeds": 3,
        "kill_epochs": 30,
    },
    True: {
        "epoch_n": 300,
        "drain_epochs": 300,
        "drain_runs": 3,
        "kill_seeds": 8,
        "kill_epochs": 60,
    },
}
PAUSE = 0.05  # seconds of "training" per epoch in the kill part: half the mean latency


# --- the children ---------------------------------------------------------------------------


def _hubfsm_session(spec: dict[str, Any]) -> Any:
    import hubfsm

    session = hubfsm.Session(
        spec["project"],
        api_key=benchkit.child_key(),
        api_root=spec["url"],
        protocol="platform",
        train_args={"name": "train", "epochs": spec["epochs"]},
    )
    session.start()
    return session


class _Trainer(types.SimpleNamespace):
    """The attributes the official Platform callbacks read, and nothing else."""


def _official_trainer(spec: dict[str, Any]) -> Any:
    os.environ["ULTRALYTICS_PLATFORM_URL"] = spec["url"]
    os.environ["ULTRALYTICS_API_KEY"] = benchkit.child_key()
    import torch

    save_dir = Path(spec["dir"])
    save_dir.mkdir(parents=True, exist_ok=True)
    args = types.SimpleNamespace(
        project=spec["project"], name="train", resume=False, device="cpu", task="classify"
    )
    return _Trainer(
        args=args,
        epochs=spec["epochs"],
        device=torch.device("cpu"),
        save_dir=save_dir,
        epoch=0,
        tloss=None,
        metrics={},
        optimizer=None,
        fitness=0.5,
        best_fitness=0.5,
        label_loss_items=lambda tloss, prefix="train": {},
        best=Path(spec["final"]),
        last=Path(spec["ckpt"]),
        data={"names": {0: "bird"}},
        stop=False,
    )


def _official_run(spec: dict[str, Any]) -> tuple[Any, Any]:
    """A trainer with a run the official callbacks opened on the local hub, and them."""
    trainer = _official_trainer(spec)  # sets the hub's URL before the import reads it
    from ultralytics.utils.callbacks import platform as official

    official.on_pretrain_routine_start(trainer)
    if not trainer.platform:
        raise RuntimeError("the official callbacks did not open a run on the local hub")
    return trainer, official


def child_epoch(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch time on the training thread, with a checkpoint offered every epoch."""
    n = spec["epochs"]
    ckpt = spec["ckpt"]
    times: list[float] = []
    if variant == "hubfsm":
        session = _hubfsm_session(spec)
        for epoch in range(n):
            metrics = benchkit.epoch_metrics(KEYS, epoch)
            t0 = time.perf_counter()
            session.log_metrics(metrics, epoch=epoch)
            session.save_checkpoint(ckpt, epoch=epoch)
            times.append(time.perf_counter() - t0)
        session.finish(spec["final"], map50_95=0.5, timeout=300.0)
        session.close(timeout=5.0)
    else:
        trainer, official = _official_run(spec)
        for epoch in range(n):
            trainer.epoch, trainer.metrics = epoch, benchkit.epoch_metrics(KEYS, epoch)
            t0 = time.perf_counter()
            official.on_fit_epoch_end(trainer)
            official.on_model_save(trainer)
            times.append(time.perf_counter() - t0)
        official.on_train_end(trainer)
    return {"times": times}


def child_drain(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Log ``epochs`` epochs at once, then time the end of training."""
    n = spec["epochs"]
    epochs = [benchkit.epoch_metrics(KEYS, e) for e in range(n)]
    if variant == "hubfsm":
        session = _hubfsm_session(spec)
        time.sleep(LATENCY[1] + 0.2)  # the opening is back; the worker is idle
        for epoch in range(n):
            session.log_metrics(epochs[epoch], epoch=epoch)
        t_finish = time.time()
        session.finish(spec["final"], map50_95=0.5, timeout=600.0)
        t_return = time.time()
        session.close(timeout=5.0)
    else:
        trainer, official = _official_run(spec)
        for epoch in range(n):
            trainer.epoch, trainer.metrics = epoch, epochs[epoch]
            official.on_fit_epoch_end(trainer)
            official.on_model_save(trainer)
        t_finish = time.time()
        official.on_train_end(trainer)
        t_return = time.time()
    # What follows is the interpreter's exit: for the official client, it joins the pool.
    return {"t_finish": t_finish, "t_return": t_return, "logged": n}


def child_kill(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Train until killed, one line per logged epoch on standard output."""
    n = spec["epochs"]
    if variant == "hubfsm":
        session = _hubfsm_session(spec)
        for epoch in range(n):
            time.sleep(PAUSE)
            session.log_metrics(benchkit.epoch_metrics(KEYS, epoch), epoch=epoch)
            session.save_checkpoint(spec["ckpt"], epoch=epoch)
            benchkit.emit({"logged": epoch})
    else:
        trainer, official = _official_run(spec)
        # Console capture would swallow the lines the parent reads.
        trainer.platform["console_logger"].stop_capture()
        for epoch in range(n):
            time.sleep(PAUSE)
            trainer.epoch, trainer.metrics = epoch, benchkit.epoch_metrics(KEYS, epoch)
            official.on_fit_epoch_end(trainer)
            official.on_model_save(trainer)
            sys.__stdout__.write(f'{{"logged": {epoch}}}\n')
            sys.__stdout__.flush()
    time.sleep(600)  # the parent kills before this ends
    return {}


def child(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    benchkit.setup()
    part = spec["part"]
    if part == "epoch":
        return child_epoch(variant, spec)
    if part == "drain":
        return child_drain(variant, spec)
    return child_kill(variant, spec)


# --- the hub's side -------------------------------------------------------------------------


@contextmanager
def recorded_hub(where: Path, latency: tuple[float, float] | None) -> Iterator[Any]:
    """A local hub with a Platform key, recording (time, model, event, epoch) per event."""
    from hubfsm.hub.keys import new_platform_key
    from transports.faults import FaultMix

    faults = FaultMix(latency=latency) if latency else None
    with benchkit.local_hub(where, faults=faults, seed=7) as hub:
        key = new_platform_key()
        hub.hub.add_key(key, "bench")
        log: list[tuple[float, str, str, int | None]] = []
        handle = hub.hub.platform_handle

        def recording(call: Any) -> Any:
            reply = handle(call)
            body = call.json if isinstance(call.json, dict) else {}
            if reply.ok and body.get("event"):
                data = body.get("data") if isinstance(body.get("data"), dict) else {}
                log.append(
                    (time.time(), str(reply.body.get("modelId")), body["event"], data.get("epoch"))
                )
            return reply

        hub.hub.platform_handle = recording
        hub.platform_key, hub.events = key, log
        yield hub


def _model_of(hub: Any, project: str) -> str | None:
    for record in hub.hub.store.list_models():
        if record.project == project:
            return str(record.id)
    return None


# --- the parts ------------------------------------------------------------------------------


def _spec(root: Path, hub: Any, part: str, variant: str, tag: str, epochs: int) -> dict[str, Any]:
    return {
        "part": part,
        "url": hub.url,
        "project": f"bench/{part}-{variant}-{tag}",
        "epochs": epochs,
        "dir": str(root / f"{part}-{variant}-{tag}"),
        "ckpt": str(root / "last.pt"),
        "final": str(root / "best.pt"),
    }


def part_epoch(root: Path, n: int, notes: list[str]) -> list[dict[str, Any]]:
    rows = []
    with recorded_hub(root / "hub-epoch", None) as hub:
        for variant in VARIANTS:
            print(f"  epoch: {variant}", file=sys.stderr)
            spec = _spec(root, hub, "epoch", variant, "1", n)
            try:
                out = benchkit.run_child(__file__, variant, spec, key=hub.platform_key)
            except Exception as error:
                notes.append(f"epoch, {LABELS[variant]}: failed ({error})")
                continue
            times = [t * 1000 for t in out["times"]]
            rows.append(
                {
                    "variant": variant,
                    "epochs": n,
                    "first_ms": times[0],
                    **{f"{k}_ms": v for k, v in benchkit.spread(times[1:]).items() if k != "n"},
                }
            )
    base = next((r for r in rows if r["variant"] == "hubfsm"), None)
    for r in rows:
        r["ratio"] = r["median_ms"] / base["median_ms"] if base else None
    return rows


def part_drain(root: Path, epochs: int, runs: int, notes: list[str]) -> list[dict[str, Any]]:
    per: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with recorded_hub(root / "hub-drain", LATENCY) as hub:
        for number in range(runs):
            for variant in VARIANTS if number % 2 == 0 else VARIANTS[::-1]:
                print(f"  drain: {variant}, run {number + 1}", file=sys.stderr)
                spec = _spec(root, hub, "drain", variant, str(number), epochs)
                try:
                    out = benchkit.run_child(__file__, variant, spec, key=hub.platform_key)
                except Exception as error:
                    notes.append(f"drain, {LABELS[variant]} run {number + 1}: failed ({error})")
                    continue
                t_exit = time.time()
                model = _model_of(hub, spec["project"])
                events = [e for e in hub.events if e[1] == model]
                ends = [(at, ep) for at, _, ev, ep in events if ev == "epoch_end"]
                completes = [at for at, _, ev, _ in events if ev == "training_complete"]
                complete = completes[0] if completes else None
                last_end = max((at for at, _ in ends), default=None)
                at_return = {ep for at, ep in ends if at <= out["t_return"]}
                on_hub = {int(r["epoch"]) for r in hub.hub.metrics(model)} if model else set()
                per[variant].append(
                    {
                        "wait_s": out["t_return"] - out["t_finish"],
                        "exit_s": t_exit - out["t_finish"],
                        "complete_minus_last_end_s": (
                            complete - last_end if complete and last_end else None
                        ),
                        "ends_after_complete": sum(
                            1 for at, _ in ends if complete and at > complete
                        ),
                        "missing_at_return": epochs - len(at_return & set(range(epochs))),
                        "missing_at_end": epochs - len(on_hub & set(range(epochs))),
                        "complete": complete is not None,
                    }
                )
    rows = []
    for variant, got in per.items():
        if not got:
            continue
        row: dict[str, Any] = {"variant": variant, "runs": len(got)}
        for field in (
            "wait_s",
            "exit_s",
            "complete_minus_last_end_s",
            "ends_after_complete",
            "missing_at_return",
            "missing_at_end",
        ):
            row[field] = benchkit.median([r[field] for r in got if r[field] is not None])
        row["max_missing_at_end"] = max(r["missing_at_end"] for r in got)
        row["all_complete"] = all(r["complete"] for r in got)
        rows.append(row)
    return rows


def _kill_one(root: Path, hub: Any, variant: str, seed: int, epochs: int) -> dict[str, Any]:
    kill_at = random.Random(seed).randrange(2, epochs - 2)
    spec = _spec(root, hub, "kill", variant, str(seed), epochs)
    env = dict(os.environ)
    env[benchkit.KEY_ENV] = hub.platform_key
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", variant, "--spec", __import__("json").dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    logged = -1
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if line.startswith('{"logged"'):
            logged = int(line.split(":")[1].strip(" }\n"))
            if logged >= kill_at:
                break
        if time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Requests the hub had fully received before the kill are still being answered (the
    # injected latency); they count as delivered, so let them land before counting.
    time.sleep(LATENCY[1] + 0.5)
    model = _model_of(hub, spec["project"])
    before = {int(r["epoch"]) for r in hub.hub.metrics(model)} if model else set()
    synced = None
    if variant == "hubfsm":
        sync_env = dict(os.environ)
        sync_env.update(
            {"ULTRALYTICS_API_KEY": hub.platform_key, "ULTRALYTICS_PLATFORM_URL": hub.url}
        )
        done = subprocess.run(
            [sys.executable, "-m", "hubfsm", "sync", "--protocol", "platform"],
            env=sync_env,
            cwd=_HERE.parent,  # not bench/, where this file would shadow ``platform``
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        synced = done.returncode
        if done.returncode != 0:
            raise RuntimeError(f"hubfsm sync failed: {(done.stderr or done.stdout)[-1500:]}")
        model = model or _model_of(hub, spec["project"])
    after = {int(r["epoch"]) for r in hub.hub.metrics(model)} if model else set()
    record = hub.hub.store.get_model(model) if model else None
    return {
        "seed": seed,
        "killed_after": logged,
        "logged": logged + 1,
        "on_hub_at_kill": len(before),
        "on_hub": len(after & set(range(logged + 1))),
        "checkpoint": bool(record and record.has_last_weights),
        "sync_rc": synced,
    }


def part_kill(root: Path, seeds: int, epochs: int, notes: list[str]) -> dict[str, Any]:
    per: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with recorded_hub(root / "hub-kill", LATENCY) as hub:
        for seed in range(seeds):
            for variant in VARIANTS:
                print(f"  kill: {variant}, seed {seed}", file=sys.stderr)
                try:
                    per[variant].append(_kill_one(root, hub, variant, seed, epochs))
                except Exception as error:
                    notes.append(f"kill, {LABELS[variant]} seed {seed}: failed ({error})")
    return per


def run(*, full: bool = False) -> dict[str, Any]:
    root = benchkit.setup()
    size = SIZES[full]
    benchkit.make_file(root / "last.pt", CKPT_MIB << 20)
    benchkit.make_file(root / "best.pt", CKPT_MIB << 20)
    notes: list[str] = []
    if not (benchkit.installed("ultralytics") and benchkit.installed("ultralytics-platform")):
        notes.append("the official rows need ultralytics 8.4.190 and ultralytics-platform")
    return {
        "sizes": size,
        "latency_s": list(LATENCY),
        "ckpt_mib": CKPT_MIB,
        "pause_s": PAUSE,
        "ultralytics": benchkit.installed("ultralytics"),
        "epoch": part_epoch(root, size["epoch_n"], notes),
        "drain": part_drain(root, size["drain_epochs"], size["drain_runs"], notes),
        "kill": part_kill(root, size["kill_seeds"], size["kill_epochs"], notes),
        "machine": benchkit.machine(),
        "notes": notes,
    }


def render(result: dict[str, Any]) -> list[str]:
    """The result as Markdown."""
    f = benchkit.fmt
    lines = [
        f"Official client: ultralytics {result['ultralytics']}.",
        "",
        "Time on the training thread per epoch (ms):",
        "",
    ]
    lines += benchkit.table(
        ["client", "epochs", "first epoch", "median", "p95", "p99", "median / hubfsm"],
        [
            [
                LABELS[r["variant"]],
                r["epochs"],
                f(r["first_ms"], 3),
                f(r["median_ms"], 3),
                f(r["p95_ms"], 3),
                f(r["p99_ms"], 3),
                f(r["ratio"], 2) + "x" if r["ratio"] else "-",
            ]
            for r in result["epoch"]
        ],
    )
    lo, hi = result["latency_s"]
    lines += [
        "",
        f"The drain: {result['sizes']['drain_epochs']} epochs pending, "
        f"{lo * 1000:g}-{hi * 1000:g} ms per request:",
        "",
    ]
    lines += benchkit.table(
        [
            "client",
            "runs",
            "trainer waits (s)",
            "end of training → process exited (s)",
            "`training_complete` − last `epoch_end` at the hub (s)",
            "`epoch_end` after `training_complete`",
            "epochs missing when the call returns",
            "epochs missing at the end",
        ],
        [
            [
                LABELS[r["variant"]],
                r["runs"],
                f(r["wait_s"]),
                f(r["exit_s"]),
                f(r["complete_minus_last_end_s"]),
                f"{r['ends_after_complete']:g}",
                f"{r['missing_at_return']:g}",
                f"{r['missing_at_end']:g} (max {r['max_missing_at_end']:g})",
            ]
            for r in result["drain"]
        ],
    )
    lines += [
        "",
        f"kill -9 at a random epoch ({PAUSE * 1000:g} ms of training per epoch, "
        f"same latency; hubfsm then `hubfsm sync --protocol platform` alone):",
        "",
    ]
    rows = []
    for variant, got in result["kill"].items():
        for r in got:
            rows.append(
                [
                    LABELS[variant],
                    r["seed"],
                    r["logged"],
                    r["on_hub_at_kill"],
                    r["on_hub"],
                    "yes" if r["checkpoint"] else "no",
                ]
            )
    lines += benchkit.table(
        [
            "client",
            "seed",
            "epochs logged",
            "on the hub at the kill",
            "on the hub at the end",
            "a checkpoint on the hub",
        ],
        rows,
    )
    for note in result["notes"]:
        lines.append(f"- {note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.command_line(__doc__, children=VARIANTS)
    parser.add_argument("--full", action="store_true", help="the larger sizes (longer)")
    return benchkit.script_main(
        parser, argv, run=lambda a: run(full=a.full), render=render, child=child
    )


if __name__ == "__main__":
    sys.exit(main())
