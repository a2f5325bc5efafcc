"""``hubfsm hub serve``: the local hub in the foreground, in one process or several.

:func:`serve` runs a :class:`~hubfsm.hub.server.LocalHub` until Ctrl-C or SIGTERM and
prints how to point clients at it. With a team's database it migrates the schema first,
and ``workers`` processes then share the port (``SO_REUSEPORT``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from hubfsm.errors import HubfsmError
from hubfsm.hub.access import is_loopback
from hubfsm.hub.admin import migrate
from hubfsm.hub.bodies import BodyLimits
from hubfsm.hub.server import DEFAULT_TIMEOUT, LocalHub, default_data_dir
from transports.faults import FaultMix

__all__ = ["serve"]

#: Seconds a worker must serve before one that dies is replaced; sooner, it would most
#: likely die again the same way, so the hub stops (a service manager may then start it).
WORKER_SETTLE = 10.0


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    """Why the hub cannot listen at ``host:port``, and what to do about it."""
    where = f"{host}:{port}"
    # cheroot wraps the socket's error into a message of its own, errno and all.
    if exc.errno == errno.EADDRINUSE or f"[Errno {errno.EADDRINUSE}]" in str(exc):
        return (
            f"cannot serve at {where}: the port is in use (another `hubfsm hub serve`?); "
            "pick another with --port N, or --port 0 for any free one"
        )
    return f"cannot serve at {where}: {exc.strerror or exc}"


def serve(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    fault_rate: float = 0.0,
    rate_limit: float | None = None,
    latency: float = 0.0,
    seed: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    limits: BodyLimits | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    heartbeat_interval: float = 300.0,
    database: str | None = None,
    objects: str | None = None,
    workers: int = 1,
    sign_in: bool | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    sweep_hours: float = 24.0,
) -> int:
    """Run the local hub in the foreground until Ctrl-C (or until ``stop`` is set).

    Args:
        data_dir: Where the hub keeps its state; :func:`default_data_dir` when None.
        host: The address to listen on.
        port: The port; 0 picks a free one.
        fault_rate: The share of API requests to fail (see :meth:`FaultMix.from_rate`).
        rate_limit: Requests per second per API key, or None.
        latency: Up to this many seconds added to each API request.
        seed: Seeds the fault draws.
        timeout: Seconds a connection may stay silent before it is closed.
        limits: The largest request bodies read.
        out: Where to print the instructions; stdout by default.
        stop: Set it to stop the server (for tests and embedding).
        heartbeat_interval: Seconds between a trainer's heartbeats (see :class:`LocalHub`).
        database: A ``postgresql://`` URL for the records (with ``objects``); its schema
            is migrated before serving.
        objects: An ``s3://bucket/prefix`` URL for the weight files (with ``database``).
        workers: Server processes sharing the port (``SO_REUSEPORT``; needs ``database``:
            SQLite is one process's).
        sign_in: Browsers sign in to the pages with an API key (see :class:`LocalHub`).
        tls_cert: A PEM certificate file: serve HTTPS (with ``tls_key``).
        tls_key: The certificate's PEM private key file.
        sweep_hours: With ``database``, hours between the team's sweeps of weight objects
            no record names, older than a day (as ``hubfsm hub sweep``); 0 never sweeps.

    Returns:
        The process exit status: 0, or 1 when a worker died within :data:`WORKER_SETTLE`
        seconds of its start (a worker that dies later is replaced).

    Raises:
        HubfsmError: The hub cannot listen there (the port is in use, say); a data
            directory it created for the attempt is removed again.
    """
    out = out if out is not None else sys.stdout
    if workers > 1 and database is None:
        raise ValueError("several workers need a shared database (--database, --objects)")
    faults = FaultMix.from_rate(fault_rate, latency=latency) if fault_rate or latency else None
    if (database is None) != (objects is None):
        raise ValueError("a database and an object store go together (--database, --objects)")
    if database is not None:
        import psycopg

        # Once, before any worker serves: the workers then find the schema they expect.
        try:
            migrate(database)
        except psycopg.OperationalError as error:
            # libpq's message names the host and port, never the password.
            raise ValueError(f"cannot use the database: {str(error).strip()}") from None
        from botocore.exceptions import BotoCoreError, ClientError

        from hubfsm.hub.team import S3Objects

        try:
            S3Objects(str(objects)).check()
        except (BotoCoreError, ClientError) as error:
            # botocore names the endpoint, bucket and operation, never the secret key.
            raise ValueError(f"cannot use the object store {objects}: {error}") from None
    options: dict[str, Any] = {
        "host": host,
        "faults": faults,
        "seed": seed,
        "rate_limit": rate_limit,
        "timeout": timeout,
        "limits": limits,
        "heartbeat_interval": heartbeat_interval,
        "database": database,
        "objects": objects,
        "sign_in": sign_in,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "audit": False,  # a served hub's notes would grow with every request
        "sweep_every": sweep_hours * 3600.0 or None,
    }
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    existed = folder.exists()
    if database is not None:
        # Uploads that older versions received here, cut short by a crash; no worker runs.
        for leftover in folder.joinpath("spool").glob("*.part"):
            leftover.unlink(missing_ok=True)
    stop = stop if stop is not None else threading.Event()
    if workers > 1:
        return _serve_workers(folder, port, workers, options, out, stop)
    local = LocalHub(folder, port=port, **options)
    try:
        local.start()
    except OSError as exc:
        if not existed:
            # A hub that never served leaves nothing behind: not even its new key.
            shutil.rmtree(folder, ignore_errors=True)
        raise HubfsmError(_cannot_listen(host, port, exc)) from None
    try:
        _banner(local, out, f"{fault_rate:g}" if faults is not None else None, latency)
        _wait(stop)
        print("Stopping.", file=out, flush=True)
    finally:
        local.stop()
    return 0


def _banner(local: LocalHub, out: TextIO, faults: str | None, latency: float) -> None:
    key_file = shlex.quote(str(local.key_file))
    print(f"Local hub serving at {local.url}", file=out)
    if local.database is not None:
        print(f"  records:  PostgreSQL ({_without_password(local.database)})", file=out)
        print(f"  weights:  {local.objects}", file=out)
        if local.sweep_every:
            every = local.sweep_every / 3600.0
            print(f"  sweeps:   every {every:g} h, objects no record names older than "
                  f"{local.sweep_older_than / 3600.0:g} h", file=out)  # fmt: skip
    else:
        print(f"  data:     {local.data_dir}", file=out)
    print(f"  API key:  in {local.key_file} (mode 0600)", file=out)
    if local.sign_in:
        print(f"  runs:     {local.url}/ (web pages: sign in with an API key)", file=out)
    else:
        print(f"  runs:     {local.url}/ (web pages, from this machine only)", file=out)
    # A team's keys live in its database: commands given --data would miss them.
    where = (
        f"--data {shlex.quote(str(local.data_dir))}"
        if local.database is None
        else f"--database {shlex.quote(_for_commands(local.database))}"
    )
    print(f"  keys:     hubfsm hub keys list {where}", file=out)
    if faults is not None:
        print(f"  faults:   {faults} of requests, latency up to {latency:g} s", file=out)
    if local.rate_limit:
        print(f"  limit:    {local.rate_limit:g} requests per second per key", file=out)
    print("Point a client at it with:", file=out)
    print(f"  export ULTRALYTICS_HUB_API={local.url}", file=out)
    print(f"  export ULTRALYTICS_HUB_WEB={local.url}", file=out)
    print(f"  export HUB_API_KEY=$(cat {key_file})", file=out)
    print("For ultralytics 8.4 (the Platform API), make a key with", file=out)
    print(f"  hubfsm hub keys add --platform {where}", file=out)
    print("then set ULTRALYTICS_API_KEY to the key it prints, and", file=out)
    print(f"  export ULTRALYTICS_PLATFORM_URL={local.url}", file=out)
    if local.tls is None and not is_loopback(local.host):
        print(
            "Warning: this hub speaks plain HTTP to the network: API keys (and page sign-ins) "
            "can be read on the way. Serve it with --tls-cert and --tls-key, or behind a TLS "
            "proxy (see the how-to on running a hub for a team).",
            file=out,
        )
    print("Press Ctrl-C to stop.", file=out, flush=True)


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "local socket"
    where = f"{host}:{parts.port}" if parts.port else host
    return f"{where}{parts.path}"


def _for_commands(url: str) -> str:
    """The database URL to print in a command: without its password (PGPASSWORD has it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return "URL"  # a libpq string may hold the password anywhere: not printed
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    where = f"{user}{host}:{parts.port}" if parts.port else f"{user}{host}"
    query = "&".join(
        each for each in parts.query.split("&") if each and not each.startswith("password=")
    )
    return f"{parts.scheme}://{where}{parts.path}" + (f"?{query}" if query else "")


def _wait(stop: threading.Event, watch: Callable[[], None] | None = None) -> None:
    """Block until ``stop`` is set, Ctrl-C, or SIGTERM, calling ``watch`` twice a second."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a service manager, a test harness) stops as cleanly as Ctrl-C.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.wait(0.5):
            if watch is not None:
                watch()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _worker(
    folder: str | os.PathLike[str], port: int, options: dict[str, Any], parent: int
) -> None:
    """One server process of several: serves until SIGTERM, or until its parent is gone."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    with LocalHub(folder, port=port, reuse_port=True, **options):
        # A parent killed outright (SIGKILL, OOM) cannot stop its workers: left serving,
        # they would share the port with the hub started in its place.
        while not stop.wait(0.5) and os.getppid() == parent:
            pass


def _serve_workers(
    folder: str | os.PathLike[str],
    port: int,
    workers: int,
    options: dict[str, Any],
    out: TextIO,
    stop: threading.Event,
) -> int:
    """Run ``workers`` server processes on one port until Ctrl-C or SIGTERM, then stop them."""
    import multiprocessing

    # Made here so that every worker reads the same key file.
    first = LocalHub(folder, port=port, **options)
    family = socket.AF_INET6 if ":" in first.host else socket.AF_INET
    if port:
        # SO_REUSEPORT would let the workers share the port with whatever serves there
        # already (another hub, on another database): a plain bind says if anything does.
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((first.host, port))
            except OSError as exc:
                raise HubfsmError(_cannot_listen(first.host, port, exc)) from None
    # Holding the port (bound, not listening) keeps it ours when it was picked at random.
    holder = socket.socket(family)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((first.host, port))
    first.port = int(holder.getsockname()[1])
    context = multiprocessing.get_context("spawn")
    args = (folder, first.port, options, os.getpid())
    procs: list[Any] = []
    started: list[float] = []
    failed: list[str] = []

    def start(index: int) -> None:
        proc = context.Process(target=_worker, args=args, daemon=True)
        proc.start()
        procs[index : index + 1], started[index : index + 1] = [proc], [time.monotonic()]

    def watch() -> None:
        # A worker that dies (a crash, SIGKILL, the OOM killer) is replaced, so that the
        # hub keeps its N processes; one that cannot stay up stops the hub instead.
        for index, proc in enumerate(procs):
            if proc.is_alive():
                continue
            said = f"worker {proc.pid} exited ({_exit_status(proc.exitcode)})"
            if time.monotonic() - started[index] < WORKER_SETTLE:
                failed.append(said)
                print(
                    f"{said} within {WORKER_SETTLE:g} s of its start: stopping the hub.",
                    file=out,
                    flush=True,
                )
                stop.set()
                return
            start(index)
            print(f"{said}; worker {procs[index].pid} serves in its place.", file=out, flush=True)

    try:
        for index in range(workers):
            start(index)
        _wait_listening(first.host, first.port)
        _banner(first, out, None, 0.0)
        print(f"  workers:  {workers} processes on port {first.port}", file=out, flush=True)
        _wait(stop, watch)
    finally:
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(30)
        holder.close()
    print("Stopping.", file=out, flush=True)
    return 1 if failed else 0


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"status {code}"


def _wait_listening(host: str, port: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no worker listens on port {port} after {seconds:g} s")
