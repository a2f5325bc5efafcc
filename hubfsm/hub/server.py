"""The local hub over HTTP: a werkzeug WSGI app, a runner for it, and ``serve``.

The app turns each HTTP request into a :class:`~hubfsm.hub.domain.HubCall` and the
:class:`~hubfsm.hub.domain.HubReply` back into JSON. On top it can inject seeded faults and
enforce a per-key rate limit, and it serves a web page per model (without a key, so only
to loopback clients).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO

import platformdirs
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from hubfsm.hub import page
from hubfsm.hub.domain import ALPHABET, BadJson, Hub, HubCall, HubReply, fail, is_model_id
from hubfsm.hub.faults import NO_FAULT, Fault, FaultMix, draw
from hubfsm.hub.store import WeightsKind
from hubfsm.hub.store_sqlite import SqliteStore
from hubfsm.logs import get_logger

_log = get_logger("hubfsm.hub")

#: The largest JSON body accepted; metrics of thousands of epochs fit many times over.
MAX_JSON_BYTES = 16 << 20
_LOOPBACK = ("127.", "::1", "::ffff:127.")
_KINDS: tuple[WeightsKind, ...] = ("last", "best")


def default_data_dir() -> Path:
    """Where ``hubfsm hub serve`` keeps its data unless told otherwise."""
    return Path(platformdirs.user_data_dir("hubfsm")) / "hub"


def load_or_create_key(path: Path) -> str:
    """Read the hub's API key from ``path``, or create one there (mode 0600) first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if len(key) != 42 or not (key.isascii() and key.isalnum()):
            raise ValueError(f"{path} does not hold a 42-character API key") from None
        return key
    key = "".join(secrets.choice(ALPHABET) for _ in range(42))
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key + "\n")
    _log.info("hub.key_created", key_file=str(path))
    return key


def _secure_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(20))


def _digest(key: str | None) -> str:
    # Rate-limit buckets are keyed by a digest, so the server holds no extra copy of a key.
    return "-" if key is None else hashlib.sha256(key.encode()).hexdigest()[:24]


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, bursts up to ``max(1, rate)``."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate limit must be positive")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, who: str) -> tuple[bool, dict[str, str]]:
        """Spend one token of ``who``: (allowed, the ``X-RateLimit-*``/``Retry-After`` headers)."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(who, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[who] = (tokens, now)
        headers = {
            "X-RateLimit-Limit": str(int(self.capacity)),
            "X-RateLimit-Remaining": str(int(tokens)),
            "X-RateLimit-Reset": str(math.ceil((self.capacity - tokens) / self.rate)),
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil((1.0 - tokens) / self.rate)))
        return allowed, headers


class HubApp:
    """The WSGI application of the local hub.

    Args:
        hub: Answers the API.
        faults: Faults to inject into API requests, or None.
        seed: Seeds the fault draws.
        rate_limit: Requests per second per API key, or None for no limit.
        hang: Seconds an injected timeout stalls before the connection is dropped.
        sleep: Waits (latency and hangs).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        faults: FaultMix | None = None,
        seed: int = 0,
        rate_limit: float | None = None,
        hang: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.hub = hub
        self.faults = faults
        self.limiter = RateLimiter(rate_limit) if rate_limit else None
        self.hang = hang
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Serve one WSGI request."""
        request = Request(environ)
        started = time.perf_counter()
        fault = NO_FAULT
        try:
            if request.path == "/v1" or request.path.startswith("/v1/"):
                fault = self._draw()
                response = self._api(request, environ, fault)
            else:
                response = self._page(request, environ)
        except HTTPException as error:
            response = _json(fail(error.code or 400, error.description or error.name))
        except Exception as error:  # noqa: BLE001 - the server must answer, whatever broke
            kind = type(error).__name__
            _log.error("hub.error", path=request.path, error=kind, detail=str(error))
            response = _json(fail(500, "internal error in the local hub"))
        finally:
            request.close()
        _log.info(
            "hub.request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 1),
            fault=fault.kind,
        )
        return response(environ, start_response)

    def _draw(self) -> Fault:
        if self.faults is None:
            return NO_FAULT
        with self._rng_lock:
            return draw(self.faults, self._rng)

    def _api(self, request: Request, environ: dict[str, Any], fault: Fault) -> Response:
        limit_headers: dict[str, str] = {}
        if self.limiter is not None:
            allowed, limit_headers = self.limiter.take(_digest(request.headers.get("x-api-key")))
            if not allowed:
                _log.info("hub.rate_limited", path=request.path)
                return _json(fail(429, "rate limit exceeded; retry later", limit_headers))
        if fault.latency > 0.0:
            self._sleep(fault.latency)
        if fault.kind == "server_error":
            return _json(fail(fault.status or 500, "injected server error"), limit_headers)
        if fault.kind == "rate_limited":
            retry = {"Retry-After": str(math.ceil(fault.retry_after or 1.0))}
            return _json(fail(429, "injected rate limit", retry), limit_headers)
        if fault.kind == "connection_error":
            return _drop(environ)
        if fault.kind == "timeout":
            self._sleep(self.hang)
            return _drop(environ)
        call = _call(request)
        if isinstance(call, HubReply):
            return _json(call, limit_headers)
        reply = self.hub.handle(call)
        if fault.kind == "lost_response":
            if reply.content is not None and not isinstance(reply.content, bytes):
                reply.content.close()
            return _drop(environ)
        return _json(reply, limit_headers) if reply.content is None else _file(reply, environ)

    def _page(self, request: Request, environ: dict[str, Any]) -> Response:
        if request.method != "GET":
            return Response("only GET here", status=405, headers={"Allow": "GET"})
        if not (request.remote_addr or "").startswith(_LOOPBACK):
            return Response("model pages are for loopback clients only", status=403)
        parts = request.path.strip("/").split("/")
        if parts == [""]:
            return _html(page.render_index(self.hub.models()))
        if len(parts) < 2 or parts[0] != "models" or not is_model_id(parts[1]):
            return _html(page.render_missing(request.path), 404)
        model_id = parts[1]
        record = self.hub.record(model_id)
        if record is None:
            return _html(page.render_missing(model_id), 404)
        if len(parts) == 2:
            weights: dict[str, tuple[str, int] | None] = {}
            for each in _KINDS:
                info = self.hub.weights_info(model_id, each)
                weights[each] = None if info is None else (info.sha256, info.size)
            return _html(page.render_model(record, self.hub.metrics(model_id), weights))
        if len(parts) == 4 and parts[2] == "weights" and parts[3] in ("last", "best"):
            kind: WeightsKind = "last" if parts[3] == "last" else "best"
            found = self.hub.weights(model_id, kind)
            if found is None:
                return _html(page.render_missing(f"{model_id} {kind}.pt"), 404)
            info, content = found
            data = {"id": model_id, "kind": kind, "sha256": info.sha256, "size": info.size}
            reply = HubReply(200, {"success": True, "message": "", "data": data}, content=content)
            return _file(reply, environ)
        return _html(page.render_missing(request.path), 404)


def _call(request: Request) -> HubCall | HubReply:
    """The request as a hub call, or a reply when the body is too large to be one."""
    headers = request.headers
    body: object = None
    fields: dict[str, str] | None = None
    file_name: str | None = None
    file: IO[bytes] | None = None
    if request.mimetype == "multipart/form-data":
        fields = request.form.to_dict()
        for name, storage in request.files.items(multi=True):
            file_name, file = name, storage.stream  # one file part; any further ones are ignored
            break
    else:
        raw = request.stream.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            return fail(413, f"JSON body larger than {MAX_JSON_BYTES} bytes")
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as error:
                body = BadJson(str(error))
    return HubCall(
        request.method,
        request.path,
        headers.get("x-api-key"),
        body,
        fields,
        file_name,
        file,
        headers.get("Idempotency-Key"),
    )


def _json(reply: HubReply, extra: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(reply.body), status=reply.status, mimetype="application/json")
    response.headers.update(extra or {})
    response.headers.update(reply.headers)
    return response


def _file(reply: HubReply, environ: dict[str, Any]) -> Response:
    data = reply.body["data"]
    content = reply.content
    assert content is not None
    body = content if isinstance(content, bytes) else wrap_file(environ, content, 1 << 20)
    response = Response(body, mimetype="application/octet-stream", direct_passthrough=True)
    response.content_length = int(data["size"])
    response.headers["Content-Disposition"] = f'attachment; filename="{data["kind"]}.pt"'
    response.headers["X-Checksum-Sha256"] = str(data["sha256"])
    response.headers.update(reply.headers)
    return response


def _html(text: str, status: int = 200) -> Response:
    return Response(text, status=status, mimetype="text/html")


def _drop(environ: dict[str, Any]) -> Response:
    """Cut the connection so the client gets no answer; a 504 where that is impossible."""
    sock = environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        return _json(fail(504, "injected lost response"))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    # Writing this fails on the closed socket; werkzeug takes that as a dropped connection.
    return Response(b"", status=504)


class _QuietHandler(WSGIRequestHandler):
    """Routes werkzeug's own messages to the hub's log; requests are logged by the app."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Say nothing: :class:`HubApp` logs each request itself."""

    def log(self, type: str, message: str, *args: Any) -> None:
        """Log a server message (bind errors, broken requests)."""
        _log.info("hub.server_message", level=type, text=(message % args).strip())


class LocalHub:
    """The local hub server, run in a background thread.

    At the first start in ``data_dir`` it creates an API key in ``data_dir/api_key``
    (mode 0600) and reuses it afterwards; records, metrics and weights persist there.

    Args:
        data_dir: Where the hub keeps its state.
        host: The address to listen on.
        port: The port; 0 picks a free one.
        faults: Faults to inject into API requests, or None.
        seed: Seeds the fault draws.
        rate_limit: Requests per second per API key, or None.
        hang: Seconds an injected timeout stalls.
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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.key_file = self.data_dir / "api_key"
        self._api_key = load_or_create_key(self.key_file)
        self.host = host
        self.port = port
        self.faults = faults
        self.seed = seed
        self.rate_limit = rate_limit
        self.hang = hang
        self._hub: Hub | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"LocalHub({str(self.data_dir)!r}, url={self.url!r})"

    @property
    def api_key(self) -> str:
        """The API key the hub accepts."""
        return self._api_key

    @property
    def url(self) -> str:
        """The API root, such as ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
        store = SqliteStore(self.data_dir)
        hub = Hub(store, clock=time.time, new_id=_secure_id, keys=[self._api_key])
        app = HubApp(
            hub, faults=self.faults, seed=self.seed, rate_limit=self.rate_limit, hang=self.hang
        )
        try:
            server = make_server(
                self.host, self.port, app, threaded=True, request_handler=_QuietHandler
            )
        except BaseException:
            store.close()
            raise
        self.port = server.server_port
        hub.public_root = self.url
        self._hub, self._server = hub, server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub"
        )
        self._thread.daemon = True
        self._thread.start()
        _log.info("hub.started", url=self.url, data_dir=str(self.data_dir))
        return self

    def stop(self) -> None:
        """Stop serving and close the data directory (a later start() reopens it)."""
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._server.server_close()
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


def serve(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    fault_rate: float = 0.0,
    rate_limit: float | None = None,
    latency: float = 0.0,
    seed: int = 0,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
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
        out: Where to print the instructions; stdout by default.
        stop: Set it to stop the server (for tests and embedding).

    Returns:
        The process exit status, 0.
    """
    out = out if out is not None else sys.stdout
    faults = FaultMix.from_rate(fault_rate, latency=latency) if fault_rate or latency else None
    local = LocalHub(
        data_dir if data_dir is not None else default_data_dir(),
        host=host,
        port=port,
        faults=faults,
        seed=seed,
        rate_limit=rate_limit,
    )
    stop = stop if stop is not None else threading.Event()
    with local:
        key_file = shlex.quote(str(local.key_file))
        print(f"Local hub serving at {local.url}", file=out)
        print(f"  data:     {local.data_dir}", file=out)
        print(f"  API key:  in {local.key_file} (mode 0600)", file=out)
        print(f"  models:   {local.url}/ (web pages, from this machine only)", file=out)
        if faults is not None:
            print(f"  faults:   {fault_rate:g} of requests, latency up to {latency:g} s", file=out)
        if rate_limit:
            print(f"  limit:    {rate_limit:g} requests per second per key", file=out)
        print("Point a client at it with:", file=out)
        print(f"  export ULTRALYTICS_HUB_API={local.url}", file=out)
        print(f"  export ULTRALYTICS_HUB_WEB={local.url}", file=out)
        print(f"  export HUB_API_KEY=$(cat {key_file})", file=out)
        print("Press Ctrl-C to stop.", file=out, flush=True)
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
        print("Stopping.", file=out, flush=True)
    return 0
