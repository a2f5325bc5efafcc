"""A connection's first bytes under one deadline each: the TLS handshake, every request head.

A socket timeout bounds each read, not their sum: a client that sends a request head a
byte every few seconds (slowloris) never trips it, and holds one of the server's worker
threads for as long as it likes; a few dozen such clients hold them all. So the handshake
and each request head get a deadline in all, :attr:`head_timeout` seconds, kept by one
:class:`Watchdog` thread that cuts the connection's socket once it passes.

Cheroot also does a TLS handshake in the thread that accepts connections, under the long
idle timeout: one client that connects and sends nothing stops the whole hub from
accepting anyone else for that long. :class:`DeferredTLSAdapter` leaves the handshake to
the worker thread that takes the connection, where the deadline above bounds it.

The deadline still lets each head being read hold a thread for its length: a client that
opens as many connections as there are threads every 10 s, each sending a byte, held
them all. A plain connection whose head has not all arrived when a worker takes it now
needs one of the server's ``slow_heads`` places (half the threads); when none is free it
is answered 503 and closed at once. A whole head, as every ordinary client sends it,
needs no place.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot.ssl.builtin import BuiltinSSLAdapter

__all__ = ["Connection", "DeferredTLSAdapter", "Watchdog", "read_deadline"]

#: What a slow head finds when the threads it may hold are all taken.
_BUSY_TEXT = b"The hub is busy with slow requests; retry in a moment.\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT)
)
#: The most bytes of a head looked at to find its end; a longer head counts as slow.
_HEAD_PEEK = 64 * 1024

#: What a plain HTTP request on the TLS port is answered (as cheroot's adapter would).
_NO_TLS_TEXT = b"The client sent plain HTTP, but this port speaks only HTTPS.\n"
_NO_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_NO_TLS_TEXT), _NO_TLS_TEXT)
)


class Watchdog:
    """One thread that cuts the sockets whose deadline passed (shuts their reading down).

    A blocked read then sees the end of the stream at once, whatever its own timeout.

    Args:
        tick: Seconds between two looks at the deadlines: how late a cut may come.
    """

    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, socket.socket, int]] = {}
        self._cut: set[int] = set()
        self._tokens = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, seconds: float, how: int = socket.SHUT_RD) -> int:
        """Cut ``sock`` (``shutdown(how)``) unless released within ``seconds``; a token."""
        with self._lock:
            token = next(self._tokens)
            self._due[token] = (time.monotonic() + seconds, sock, how)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="hub-deadlines")
                self._thread.daemon = True
                self._thread.start()
        return token

    def was_cut(self, token: int) -> bool:
        """True when the deadline of ``token`` passed and its socket was cut."""
        with self._lock:
            return token in self._cut

    def release(self, token: int) -> bool:
        """Stop watching; True when the socket was cut meanwhile."""
        with self._lock:
            self._due.pop(token, None)
            if token in self._cut:
                self._cut.discard(token)
                return True
            return False

    def stop(self) -> None:
        """Stop the thread (sockets still watched are left as they are)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            with self._lock:
                late = [token for token, (due, _, _) in self._due.items() if due <= now]
                cuts = [self._due.pop(token) for token in late]
                self._cut.update(late)
            for _, sock, how in cuts:
                # The plain socket's own shutdown: an SSL socket's would unwrap it, and a
                # later answer would go out in clear text.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, how)


@contextlib.contextmanager
def read_deadline(
    watchdog: Watchdog, sock: socket.socket, seconds: float
) -> Iterator[Callable[[], bool]]:
    """Cut ``sock``'s reading unless the block ends within ``seconds``; yields "was it cut".

    For a body read before its key is known (a refused request's body drained, the pages'
    sign-in form): each read waits the idle timeout, so a body trickled a byte at a time
    would otherwise hold a worker thread as long as the client liked, without a key.
    """
    token = watchdog.watch(sock, seconds)
    # Released at the block's end, the token no longer says; its last word is kept.
    cut = [False]
    try:
        yield lambda: cut[0] or watchdog.was_cut(token)
    finally:
        cut[0] = watchdog.release(token)


class HeadRequest(cheroot_server.HTTPRequest):
    """A request whose head (request line and headers) must arrive within ``head_timeout``.

    Each read waits at most that long, and the whole head may take no longer either: a
    head cut at its deadline is answered 408. The body (a large upload on a slow link)
    keeps the server's longer idle timeout per read.
    """

    _token: int | None = None

    def parse_request(self) -> None:
        """Read the request head under its deadline."""
        sock = self.conn.socket
        server: Any = self.server
        limit = float(getattr(server, "head_timeout", server.timeout))
        watchdog: Watchdog | None = getattr(server, "deadlines", None)
        sock.settimeout(limit)
        self._token = None if watchdog is None else watchdog.watch(sock, limit)
        try:
            super().parse_request()
        finally:
            if watchdog is not None and self._token is not None:
                watchdog.release(self._token)
            self._token = None
            with contextlib.suppress(OSError):
                sock.settimeout(server.timeout)

    def simple_response(self, status: Any, msg: Any = "") -> None:
        """Answer at once; a head cut at its deadline is a 408, not a malformed request."""
        watchdog: Watchdog | None = getattr(self.server, "deadlines", None)
        if watchdog is not None and self._token is not None and watchdog.was_cut(self._token):
            status, msg = "408 Request Timeout", "the request head did not arrive in time"
        super().simple_response(status, msg)


class Connection(cheroot_server.HTTPConnection):
    """A connection whose TLS handshake, if any, is done by the worker, under a deadline.

    A plain one whose request head is not all there when a worker takes it needs one of
    the server's ``slow_heads`` places, or is answered 503 and closed.
    """

    RequestHandlerClass = HeadRequest

    def __init__(self, server: Any, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, sock, *args, **kwargs)
        self._handshake_due = isinstance(sock, ssl.SSLSocket)

    def communicate(self) -> bool:
        """Finish the TLS handshake (the first time), then read and answer a request."""
        if self._handshake_due:
            if not self._handshake():
                return False
            self._handshake_due = False
        places: threading.BoundedSemaphore | None = getattr(self.server, "slow_heads", None)
        # A TLS head cannot be looked at before it is decrypted: it keeps the deadline only.
        plain = places is not None and not isinstance(self.socket, ssl.SSLSocket)
        head = self._head() if plain else "whole"
        if head == "none":
            # A new connection comes straight to a worker, maybe before its first byte:
            # it waits in the selector, as an idle one does, until it sends something.
            return True
        if places is None or head == "whole":
            return bool(super().communicate())  # type: ignore[no-untyped-call]
        if not places.acquire(blocking=False):
            with contextlib.suppress(OSError):
                self.socket.settimeout(1)
                self.socket.sendall(_BUSY)
            return False
        try:
            return bool(super().communicate())  # type: ignore[no-untyped-call]
        finally:
            places.release()

    def _head(self) -> str:
        """How much of a request head has arrived: ``none``, ``part`` or ``whole``.

        Looked at, not read: what cheroot read ahead, and what waits in the socket. The
        end of the stream, or a broken connection, counts as whole: cheroot's own reading
        finds it at once.
        """
        rfile: Any = self.rfile
        ahead = bytes(rfile.peek(0)) if rfile.has_data() else b""
        sock = self.socket
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0)  # a look, no wait
            waiting = sock.recv(_HEAD_PEEK, socket.MSG_PEEK)
            if not waiting:
                return "whole"
        except (BlockingIOError, InterruptedError):
            waiting = b""
        except OSError:
            return "whole"
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        if b"\r\n\r\n" in ahead + waiting:
            return "whole"
        return "part" if ahead or waiting else "none"

    def _handshake(self) -> bool:
        sock = self.socket
        server: Any = self.server
        limit = float(getattr(server, "head_timeout", server.timeout))
        watchdog: Watchdog | None = getattr(server, "deadlines", None)
        token = None if watchdog is None else watchdog.watch(sock, limit, socket.SHUT_RDWR)
        try:
            sock.settimeout(limit)
            sock.do_handshake()
        except (ssl.SSLError, OSError) as error:
            if "http request" in str(error).lower():
                with contextlib.suppress(OSError):
                    socket.socket.sendall(sock, _NO_TLS)
            server.error_log(f"TLS handshake with {self.remote_addr} failed: {error}", level=10)
            return False
        finally:
            if watchdog is not None and token is not None:
                watchdog.release(token)
            with contextlib.suppress(OSError):
                sock.settimeout(server.timeout)
        self.ssl_env = server.ssl_adapter.get_environ(sock)
        return True


class DeferredTLSAdapter(BuiltinSSLAdapter):
    """Cheroot's TLS adapter, except that wrapping a socket does not do the handshake.

    :class:`Connection` does it in the worker thread that takes the connection.
    """

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        """The socket wrapped for TLS (no handshake yet), and the environ it starts with."""
        try:
            wrapped = self.context.wrap_socket(
                sock, do_handshake_on_connect=False, server_side=True
            )
        except OSError as error:
            raise cheroot_errors.FatalSSLAlert(*error.args) from error
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}
