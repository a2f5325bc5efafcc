"""The local hub over HTTP: :class:`LocalHub`, serving in a background thread.

The WSGI app (:mod:`hubfsm.hub.app`) runs under cheroot, a thread-pool HTTP/1.1 server
from PyPI that streams request bodies to the app (so the key is checked before a body is
read) and closes connections that stay silent longer than its socket timeout (so idle or
slow clients cannot hold the server's threads); a connection's TLS handshake and each
request head also have a deadline in all (:mod:`hubfsm.hub.connections`), so neither a
client that trickles them nor one that connects and says nothing holds the hub.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import random
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import platformdirs
from cheroot import wsgi

from hubfsm.hub.access import PageAccess, Sessions, is_loopback
from hubfsm.hub.app import HubApp
from hubfsm.hub.bodies import BodyLimits
from hubfsm.hub.calls import id_factory
from hubfsm.hub.connections import Connection, DeferredTLSAdapter, Watchdog, read_deadline
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import DEFAULT_TTL, UrlSigner, load_or_create_key, load_or_create_secret
from hubfsm.hub.store import Store
from hubfsm.hub.store_sqlite import SqliteStore
from hubfsm.hub.team import Sweeper
from hubfsm.logs import get_logger
from transports.faults import FaultMix

__all__ = ["LocalHub", "default_data_dir"]

_log = get_logger("hubfsm.hub")

#: Seconds a connection may stay silent (between requests, or inside a body) before it is
#: closed.
DEFAULT_TIMEOUT = 30.0
#: Seconds a request's head (request line and headers) may take to arrive.
DEFAULT_HEAD_TIMEOUT = 10.0
#: Worker threads. Idle connections hold none (they wait in a selector); a request being
#: read or answered holds one.
DEFAULT_THREADS = 64
#: A day in seconds: how often a served team hub sweeps, and what a sweep leaves.
DAY = 86400.0


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
    """Cheroot's WSGI gateway, plus hooks the app needs: the socket, "close after", a deadline."""

    # cheroot's stubs declare get_environ as returning None; it returns the environ.
    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        """The WSGI environ, with ``hubfsm.socket``, ``.close_connection``, ``.read_deadline``."""
        environ: dict[str, Any] = super().get_environ()  # type: ignore[no-untyped-call]
        request = self.req

        def close_after() -> None:
            # The answer goes out, the unread body is not read: the connection is closed.
            request.close_connection = True

        server: Any = request.server
        environ["hubfsm.socket"] = request.conn.socket
        environ["hubfsm.close_connection"] = close_after
        environ["hubfsm.read_deadline"] = functools.partial(
            read_deadline, server.deadlines, request.conn.socket, server.head_timeout
        )
        return environ


def _cut(conn: Any) -> None:
    """End a connection a stop found still busy: its reading now, its writing a second later.

    Reading ends first, as cheroot does it, so a request cut short still gets its answer
    (a 503 a client retries); an answer still going out a second later is cut too.
    """
    if conn is None or conn.rfile.closed:
        return
    sock = conn.socket
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    later = threading.Timer(1.0, _shut_writing, (sock,))
    later.daemon = True
    later.start()


def _shut_writing(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already: the answer went out
        sock.shutdown(socket.SHUT_WR)


class _Server(wsgi.Server):
    """Cheroot's server, its own messages routed to the hub's log."""

    ConnectionClass = Connection
    head_timeout: float = 10.0
    deadlines: Watchdog
    slow_heads: threading.BoundedSemaphore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A stop cuts what still runs after its grace period. Cheroot shuts only the
        # reading side: an answer to a client that reads slowly (a weights download a
        # kilobyte at a time) then held the stop, Ctrl-C and SIGTERM, as long as it read.
        setattr(self.requests, "_force_close", _cut)  # noqa: B010 - a static method

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
            :func:`hubfsm.hub.admin.migrate`). Needs ``objects``.
        objects: An ``s3://bucket/prefix`` URL for weight files (with ``database``).
        reuse_port: Let other processes listen on the same port (``SO_REUSEPORT``): the
            kernel spreads connections over them.
        sign_in: Every browser signs in to the pages with an API key and sees that key's
            models (see :mod:`hubfsm.hub.access`); None does so when ``host`` is not a
            loopback address, False keeps the pages to loopback browsers without a sign-in.
        tls_cert: A PEM certificate (chain) file: the hub speaks HTTPS (with ``tls_key``).
        tls_key: The certificate's PEM private key file.
        audit: Keep :meth:`Hub.audit`'s notes of what was applied (tests and simulations
            read them; ``hubfsm hub serve`` turns them off, as they grow without bound).
        sweep_every: With a database, seconds between the team's sweeps of objects no
            record names (one process of the team sweeps each time; see
            :class:`~hubfsm.hub.team.Sweeper`); None never sweeps.
        sweep_older_than: What a sweep leaves, by age in seconds: an upload under way
            is in no record yet.
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
        sweep_every: float | None = None,
        sweep_older_than: float = DAY,
    ) -> None:
        self.audit = audit
        self.sweep_every, self.sweep_older_than = sweep_every, sweep_older_than
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
        self._sweeper: Sweeper | None = None

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
                server.ssl_adapter = DeferredTLSAdapter(*self.tls)
            server.head_timeout = self.head_timeout
            server.deadlines = Watchdog()
            # Heads that have not all arrived may hold half the threads, no more.
            server.slow_heads = threading.BoundedSemaphore(max(1, self.threads // 2))
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
        claim = getattr(store, "claim_sweep", None)
        if self.sweep_every and claim is not None:
            self._sweeper = Sweeper(
                claim,
                store.sweep_objects,  # type: ignore[attr-defined]
                every=self.sweep_every,
                older_than=self.sweep_older_than,
            )
            self._sweeper.start()
        _log.info("hub.started", url=self.url, data_dir=str(self.data_dir), server="cheroot")
        return self

    def _open_store(self) -> tuple[Store, bytes, Path | None]:
        """The store, the URL-signing secret, and where uploads are received (if anywhere)."""
        if self.database is None or self.objects is None:
            local = SqliteStore(self.data_dir)
            assert self._secret is not None
            return local, self._secret, local.data_dir / "weights" / ".staging"
        from hubfsm.hub.store_postgres import PostgresStore
        from hubfsm.hub.team import S3Objects

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
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        self._server.stop()
        if self._thread is not None:
            self._thread.join()
        self._server.deadlines.stop()
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
