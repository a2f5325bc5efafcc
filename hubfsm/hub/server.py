"""The local hub over HTTP: :class:`LocalHub` (in a background thread) and ``serve``.

The WSGI app (:mod:`hubfsm.hub.app`) runs under cheroot, a thread-pool HTTP/1.1 server
from PyPI that streams request bodies to the app (so the key is checked before a body is
read) and closes connections that stay silent longer than its socket timeout (so idle or
slow clients cannot hold the server's threads).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import platformdirs
from cheroot import server as cheroot_server
from cheroot import wsgi

from hubfsm.errors import HubfsmError
from hubfsm.hub.access import PageAccess, Sessions, is_loopback
from hubfsm.hub.app import BodyLimits, HubApp
from hubfsm.hub.calls import id_factory
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import DEFAULT_TTL, UrlSigner, load_or_create_key, load_or_create_secret
from hubfsm.hub.store import Store
from hubfsm.hub.store_sqlite import SqliteStore
from hubfsm.logs import get_logger
from transports.faults import FaultMix

__all__ = ["LocalHub", "default_data_dir", "serve"]

_log = get_logger("hubfsm.hub")

#: Seconds a connection may stay silent (between requests, or inside a body) before it is
#: closed.
DEFAULT_TIMEOUT = 30.0
#: Seconds a request's head (request line and headers) may take to arrive.
DEFAULT_HEAD_TIMEOUT = 10.0
#: Worker threads. Idle connections hold none (they wait in a selector); a request being
#: read or answered holds one.
DEFAULT_THREADS = 64


def default_data_dir() -> Path:
    """Where ``hubfsm hub serve`` keeps its data unless told otherwise."""
    return Path(platformdirs.user_data_dir("hubfsm")) / "hub"


def reachable_address(host: str) -> str:
    """The address clients reach a server on ``host`` at: an interface's for a wildcard."""
    if host not in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising, not binding
        return host
    # Connecting a UDP socket sends nothing; it only picks the interface of the default
    # route (the documentation networks below are never routed anywhere).
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            found = str(sock.getsockname()[0])
            if not ipaddress.ip_address(found).is_loopback:
                return found
    return socket.gethostname()


class _Gateway(wsgi.Gateway_10):
    """Cheroot's WSGI gateway, plus two hooks the app needs: the socket and "close after"."""

    # cheroot's stubs declare get_environ as returning None; it returns the environ.
    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        """The WSGI environ, with ``hubfsm.socket`` and ``hubfsm.close_connection``."""
        environ: dict[str, Any] = super().get_environ()  # type: ignore[no-untyped-call]
        request = self.req

        def close_after() -> None:
            # The answer goes out, the unread body is not read: the connection is closed.
            request.close_connection = True

        environ["hubfsm.socket"] = request.conn.socket
        environ["hubfsm.close_connection"] = close_after
        return environ


class _Request(cheroot_server.HTTPRequest):
    """A request whose head (request line and headers) must arrive within a short timeout.

    Cheroot gives each connection one socket timeout. A client that sends half a request
    head and stalls holds a worker thread for that long, so the head gets its own, shorter
    one; the body (a large upload on a slow link) keeps the longer one.
    """

    def parse_request(self) -> None:
        """Read the request head under the head timeout."""
        sock = self.conn.socket
        sock.settimeout(getattr(self.server, "head_timeout", self.server.timeout))
        try:
            super().parse_request()
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.server.timeout)


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request


class _Server(wsgi.Server):
    """Cheroot's server, its own messages routed to the hub's log."""

    ConnectionClass = _Connection
    head_timeout: float = 10.0

    @classmethod
    def prepare_socket(cls, *args: Any, **kwargs: Any) -> socket.socket:
        """The listening socket, reusable at once after a stop, also when the port was 0."""
        sock: socket.socket = super().prepare_socket(*args, **kwargs)
        # Cheroot skips this for port 0; a hub restarted on the port it was given then
        # finds the port held by the first run's connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        """Log a server message (dropped connections, broken requests)."""
        _log.info("hub.server_message", level=level, text=str(msg).strip()[:500])


class LocalHub:
    """The local hub server, run in a background thread.

    At the first start in ``data_dir`` it creates an API key in ``data_dir/api_key``
    (mode 0600) and reuses it afterwards (unless it was revoked with ``hubfsm hub keys``);
    records, metrics, weights and further keys persist there.

    Args:
        data_dir: Where the hub keeps its state.
        host: The address to listen on.
        port: The port; 0 picks a free one.
        faults: Faults to inject into API requests, or None.
        seed: Seeds the fault draws.
        rate_limit: Requests per second per API key, or None.
        hang: Seconds an injected timeout stalls.
        timeout: Seconds a connection may stay silent before it is closed.
        head_timeout: Seconds a request's head may take to arrive (at most ``timeout``).
        threads: Worker threads of the server.
        limits: The largest request bodies read.
        url_ttl: Seconds a signed weight URL stays valid.
        heartbeat_interval: Seconds between a client's heartbeats; the pages call a run
            stalled after two of them without a sign of it (tests use a short one).
        database: A ``postgresql://`` URL: records go there instead of SQLite in
            ``data_dir`` (the schema must be migrated, see
            :func:`hubfsm.hub.store_postgres.migrate`). Needs ``objects``.
        objects: An ``s3://bucket/prefix`` URL for weight files (with ``database``).
        reuse_port: Let other processes listen on the same port (``SO_REUSEPORT``): the
            kernel spreads connections over them.
        sign_in: Every browser signs in to the pages with an API key and sees that key's
            models (see :mod:`hubfsm.hub.signin`); None does so when ``host`` is not a
            loopback address, False keeps the pages to loopback browsers without a sign-in.
        tls_cert: A PEM certificate (chain) file: the hub speaks HTTPS (with ``tls_key``).
        tls_key: The certificate's PEM private key file.
        audit: Keep :meth:`Hub.audit`'s notes of what was applied (tests and simulations
            read them; ``hubfsm hub serve`` turns them off, as they grow without bound).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultMix | None = None,
        seed: int = 0,
        rate_limit: float | None = None,
        hang: float = 60.0,
        timeout: float = DEFAULT_TIMEOUT,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        threads: int = DEFAULT_THREADS,
        limits: BodyLimits | None = None,
        url_ttl: float = DEFAULT_TTL,
        heartbeat_interval: float = 300.0,
        database: str | None = None,
        objects: str | None = None,
        reuse_port: bool = False,
        sign_in: bool | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        audit: bool = True,
    ) -> None:
        self.audit = audit
        if (database is None) != (objects is None):
            raise ValueError("a database and an object store go together (--database, --objects)")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("a TLS certificate and its key go together (--tls-cert, --tls-key)")
        for each in (tls_cert, tls_key):
            if each is not None and not Path(each).is_file():
                raise ValueError(f"no such file: {each}")
        self.tls = None if tls_cert is None or tls_key is None else (str(tls_cert), str(tls_key))
        self.sign_in = not is_loopback(host) if sign_in is None else sign_in
        # What clients are told to use: a wildcard address is no address to connect to.
        self.address = reachable_address(host)
        self.data_dir = Path(data_dir)
        self.heartbeat_interval = heartbeat_interval
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.key_file = self.data_dir / "api_key"
        self._api_key = load_or_create_key(self.key_file)
        self.database, self.objects, self.reuse_port = database, objects, reuse_port
        # With a database, the secret is kept there, shared by every process.
        self._secret = None if database else load_or_create_secret(self.data_dir / "url_secret")
        self.host = host
        self.port = port
        self.faults = faults
        self.seed = seed
        self.rate_limit = rate_limit
        self.hang = hang
        self.timeout = timeout
        self.head_timeout = min(head_timeout, timeout)
        self.threads = threads
        self.limits = limits if limits is not None else BodyLimits()
        self.url_ttl = url_ttl
        self._hub: Hub | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"LocalHub({str(self.data_dir)!r}, url={self.url!r})"

    @property
    def api_key(self) -> str:
        """The API key created with the data directory (``data_dir/api_key``)."""
        return self._api_key

    @property
    def url(self) -> str:
        """The API root, such as ``http://127.0.0.1:8000`` (an interface's address for 0.0.0.0)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def hub(self) -> Hub:
        """The domain object behind the server (for inspection and admin calls)."""
        if self._hub is None:
            raise RuntimeError("the local hub is not running; call start() first")
        return self._hub

    def start(self) -> LocalHub:
        """Open the data directory and start serving in a background thread."""
        if self._server is not None:
            raise RuntimeError("the local hub is already running")
        store, secret, spool = self._open_store()
        signer = UrlSigner(secret, time.time, self.url_ttl)
        hub = Hub(store, clock=time.time, new_id=id_factory(random.SystemRandom()), signer=signer)
        try:
            hub.ensure_key(self._api_key, label="api_key file", admin=True)
            app = HubApp(
                hub,
                faults=self.faults,
                seed=self.seed,
                rate_limit=self.rate_limit,
                hang=self.hang,
                limits=self.limits,
                spool_dir=spool,
                access=PageAccess(Sessions(secret, time.time), self.sign_in),
                # Several processes share a database: the limit is counted there.
                shared_buckets=getattr(store, "take_token", None),
                # An object store takes the file as it arrives: no copy on the way.
                stream_uploads=self.database is not None,
            )
            server = _Server(
                (self.host, self.port),
                app,
                numthreads=self.threads,
                timeout=max(1, round(self.timeout)),
                shutdown_timeout=1,
                accepted_queue_timeout=max(1, round(self.timeout)),
            )
            server.gateway = _Gateway
            if self.tls is not None:
                from cheroot.ssl.builtin import BuiltinSSLAdapter

                server.ssl_adapter = BuiltinSSLAdapter(*self.tls)
            server.head_timeout = self.head_timeout
            # Keep-alive connections wait in a selector, not a thread: allow many.
            server.keep_alive_conn_limit = 1000
            # How often the serving loop looks up from its selector: a stop takes this long.
            server.expiration_interval = 0.05
            # Uploads are capped by the app, per kind of body, after the key was checked.
            server.max_request_body_size = 0
            server.reuse_port = self.reuse_port
            if self.database is not None:
                # A team's many trainers connect at once; cheroot's default backlog is 5.
                server.request_queue_size = 512
            server.prepare()
        except BaseException:
            store.close()
            raise
        self.port = int(server.bind_addr[1])
        hub.public_root = self.url
        hub.heartbeat_interval = self.heartbeat_interval
        hub.audits = self.audit
        self._hub, self._server = hub, server
        self._thread = threading.Thread(target=server.serve, name="local-hub", daemon=True)
        self._thread.start()
        _log.info("hub.started", url=self.url, data_dir=str(self.data_dir), server="cheroot")
        return self

    def _open_store(self) -> tuple[Store, bytes, Path | None]:
        """The store, the URL-signing secret, and where uploads are received (if anywhere)."""
        if self.database is None or self.objects is None:
            local = SqliteStore(self.data_dir)
            assert self._secret is not None
            return local, self._secret, local.data_dir / "weights" / ".staging"
        from hubfsm.hub.objects_s3 import S3Objects
        from hubfsm.hub.store_postgres import PostgresStore

        pool = min(self.threads, 16)  # a connection is held only inside a transaction
        team = PostgresStore(self.database, S3Objects(self.objects), pool_size=pool)
        try:
            secret = team.url_secret()
        except BaseException:
            team.close()
            raise
        # Uploads stream from the request to the object store: nothing is received here.
        return team, secret, None

    def stop(self) -> None:
        """Stop serving and close the data directory (a later start() reopens it)."""
        if self._server is None:
            return
        self._server.stop()
        if self._thread is not None:
            self._thread.join()
        self.hub.store.close()
        self._server = self._thread = self._hub = None
        _log.info("hub.stopped", url=self.url)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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

    Returns:
        The process exit status, 0.

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

        from hubfsm.hub.store_postgres import migrate

        # Once, before any worker serves: the workers then find the schema they expect.
        try:
            migrate(database)
        except psycopg.OperationalError as error:
            # libpq's message names the host and port, never the password.
            raise ValueError(f"cannot use the database: {str(error).strip()}") from None
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
    else:
        print(f"  data:     {local.data_dir}", file=out)
    print(f"  API key:  in {local.key_file} (mode 0600)", file=out)
    if local.sign_in:
        print(f"  runs:     {local.url}/ (web pages: sign in with an API key)", file=out)
    else:
        print(f"  runs:     {local.url}/ (web pages, from this machine only)", file=out)
    if local.database is None:
        print(
            f"  keys:     hubfsm hub keys list --data {shlex.quote(str(local.data_dir))}", file=out
        )
    if faults is not None:
        print(f"  faults:   {faults} of requests, latency up to {latency:g} s", file=out)
    if local.rate_limit:
        print(f"  limit:    {local.rate_limit:g} requests per second per key", file=out)
    print("Point a client at it with:", file=out)
    print(f"  export ULTRALYTICS_HUB_API={local.url}", file=out)
    print(f"  export ULTRALYTICS_HUB_WEB={local.url}", file=out)
    print(f"  export HUB_API_KEY=$(cat {key_file})", file=out)
    print("For ultralytics 8.4 (the Platform API), make a key with", file=out)
    data = shlex.quote(str(local.data_dir))
    print(f"  hubfsm hub keys add --platform --data {data}", file=out)
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


def _wait(stop: threading.Event) -> None:
    """Block until ``stop`` is set, Ctrl-C, or SIGTERM."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a service manager, a test harness) stops as cleanly as Ctrl-C.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _worker(folder: str | os.PathLike[str], port: int, options: dict[str, Any]) -> None:
    """One server process of several: serves until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    with LocalHub(folder, port=port, reuse_port=True, **options):
        while not stop.wait(0.5):
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
    # Holding the port (bound, not listening) keeps it ours when it was picked at random.
    holder = socket.socket(socket.AF_INET6 if ":" in first.host else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((first.host, port))
    first.port = int(holder.getsockname()[1])
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_worker, args=(folder, first.port, options), daemon=True)
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            proc.start()
        _wait_listening(first.host, first.port)
        _banner(first, out, None, 0.0)
        print(f"  workers:  {workers} processes on port {first.port}", file=out, flush=True)
        _wait(stop)
    finally:
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(30)
        holder.close()
    print("Stopping.", file=out, flush=True)
    return 0


def _wait_listening(host: str, port: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no worker listens on port {port} after {seconds:g} s")
