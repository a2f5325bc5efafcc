"""Fetching a file the hub handed out (weights to resume from, say): the wire part.

:class:`HttpDownloader` is the one implementation of :class:`hubfsm.transport.Downloader`.
:meth:`RequestsTransport.download <transports.http.RequestsTransport.download>` lends it
the transport's key, API root and timeouts; :func:`hubfsm.runtime.weight_cache.download`
uses it as it is for a caller that gives a key and root, or none. What to do with the
bytes (caching, checking a digest, a progress bar) is the caller's business.

Trust: the URL is untrusted. The key goes only to the API root's scheme, host and port,
only on the first request, never through a redirect (which is followed by hand); the
body is bounded; every request has connect and read timeouts and the whole download,
redirects included, a deadline that also cuts every socket read. Messages name the URL
without its query (a signed URL's query is a credential of its own) and never the key.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from http.client import HTTPException
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.exceptions import SSLError as RequestsSSLError

from hubfsm.logs import get_logger
from hubfsm.masking import redact, show_url
from hubfsm.transport import Announced, ErrorKind, Sink, TransportError, same_origin
from hubfsm.version import __version__
from transports.deadline import Deadline, SendTimeoutAdapter
from transports.outcomes import chain, os_reason, stalled
from transports.settings import check_key, positive

__all__ = ["HttpDownloader"]

log = get_logger("hubfsm.http")

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _announced(headers: requests.structures.CaseInsensitiveDict[str]) -> Announced:
    length_text = headers.get("Content-Length", "").strip()
    sha = headers.get("X-Checksum-Sha256", "").strip().lower()
    return Announced(
        length=int(length_text) if length_text.isdigit() else None,
        # Anything but a digest is dropped, so no server text reaches a message this way.
        sha256=sha if _HEX64.fullmatch(sha) else None,
    )


class HttpDownloader:
    """Downloads URLs over HTTP(S) with ``requests``, the API key only where it belongs.

    Safe to use while a :class:`~transports.http.RequestsTransport` sends from another
    thread: each download has its own deadline, and its own session unless one is
    handed in.

    Args:
        api_root: The API root; only a URL of its scheme, host and port gets the key.
        api_key: The API key, sent as ``x-api-key``; None sends no key anywhere.
        connect_timeout: Seconds to open a connection, per request.
        read_timeout: Seconds a socket operation may go without progress.
        deadline: Seconds a whole download may take unless :meth:`download` says.
        session: A session to use as it is (custom TLS or proxy settings), except that
            certificates are always verified; its reads are cut to the deadline only
            between chunks. Default a new session per download, which ignores proxy
            settings from the environment when the key may go out over plain http.
        user_agent: The ``User-Agent`` sent.

    Raises:
        SettingsError: The key holds spaces, control or non-ASCII characters, or a timeout
            is not positive.
    """

    def __init__(
        self,
        *,
        api_root: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        deadline: float = 1800.0,
        session: requests.Session | None = None,
        user_agent: str | None = None,
    ) -> None:
        # No key is fine here (public weights); a key given is checked as the transport's.
        secret = check_key(api_key) if api_key and api_key.strip() else None
        self._key = secret if api_root else None
        self._root = api_root or ""
        self._connect_timeout = positive("connect_timeout", connect_timeout)
        self._read_timeout = positive("read_timeout", read_timeout)
        self._default_deadline = float(deadline)
        self._session = session
        self._user_agent = (
            user_agent or f"hubfsm/{__version__} python-requests/{requests.__version__}"
        )

    def __repr__(self) -> str:
        return f"HttpDownloader(api_root={self._root!r}, key={'yes' if self._key else 'no'})"

    def download(
        self,
        url: str,
        dest: str | os.PathLike[str] | Sink,
        *,
        max_bytes: int,
        hops: int = 5,
        deadline: float | None = None,
        on_answer: Callable[[Announced], None] | None = None,
    ) -> int:
        """Fetch ``url`` into ``dest`` and return the number of bytes written.

        See :class:`hubfsm.transport.Downloader`.

        Raises:
            TransportError: The URL is not http(s), the answer was not a 200, the body
                was too large or cut short, the deadline passed or the network failed.
        """
        budget = self._default_deadline if deadline is None else deadline
        if not isinstance(dest, (str, os.PathLike)):
            return self._fetch(url, dest, max_bytes, hops, budget, on_answer)
        target = os.fspath(dest)
        partial = f"{target}.part-{os.getpid()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with open(fd, "wb") as out:
                size = self._fetch(url, out, max_bytes, hops, budget, on_answer)
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return size

    def _fetch(
        self,
        url: str,
        out: Sink,
        max_bytes: int,
        hops: int,
        budget: float,
        on_answer: Callable[[Announced], None] | None,
    ) -> int:
        started = time.monotonic()
        deadline = Deadline()
        deadline.start(budget)
        session = self._session or self._new_session(deadline)
        try:
            for hop in range(hops + 1):
                self._check(url, hop, deadline)
                answer = session.get(
                    url,
                    headers=self._headers(url, first=hop == 0),
                    stream=True,
                    allow_redirects=False,
                    timeout=(deadline.cap(self._connect_timeout), deadline.cap(self._read_timeout)),
                    # as for API requests: certificates are checked even if the session says not
                    verify=session.verify if isinstance(session.verify, str) else True,
                )
                with answer:
                    if answer.is_redirect:
                        url = urljoin(url, answer.headers["Location"])
                        continue
                    if answer.status_code != 200:
                        raise self._fail("protocol", url, f"failed: HTTP {answer.status_code}")
                    size = self._save(url, answer, out, max_bytes, deadline, on_answer)
                log.info(
                    "http.download",
                    url=self._redact(show_url(url)),
                    bytes=size,
                    redirects=hop,
                    seconds=round(time.monotonic() - started, 3),
                )
                return size
            raise self._fail("protocol", url, f"redirected more than {hops} times")
        except (
            requests.RequestException,
            TimeoutError,
            HTTPException,  # requests wraps these; for the odd one that gets through
            urllib3.exceptions.HTTPError,
        ) as error:
            kind, reason = self._explain(error, deadline)
            # Not chained: the library's exception may quote what the server sent.
            raise self._fail(kind, url, reason) from None
        finally:
            deadline.clear()
            if session is not self._session:
                session.close()

    def _new_session(self, deadline: Deadline) -> requests.Session:
        session = requests.Session()
        adapter = SendTimeoutAdapter(self._read_timeout, deadline)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        if self._key is not None and urlsplit(self._root).scheme == "http":
            # Environment proxies would carry a clear-text key off this machine.
            session.trust_env = False
        return session

    def _check(self, url: str, hop: int, deadline: Deadline) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            where = "is not" if hop == 0 else "redirected to a URL that is not"
            raise self._fail("url", url, f"{where} an http(s) URL")
        if deadline.expired:
            raise self._fail("timeout", url, f"passed its {deadline.budget:g} s deadline")

    def _headers(self, url: str, *, first: bool) -> dict[str, str]:
        headers = {
            "User-Agent": self._user_agent,
            "Accept": "application/octet-stream",
            # The bytes as stored: their count is then the Content-Length, and the digest
            # the hub announces is the digest of what arrives.
            "Accept-Encoding": "identity",
        }
        # The key only on the first request, and only to the API root's own origin: a
        # redirect is the server's word about where to go, not a place to trust.
        if first and self._key is not None and same_origin(url, self._root):
            headers["x-api-key"] = self._key.reveal()
        return headers

    def _save(
        self,
        url: str,
        answer: requests.Response,
        out: Sink,
        limit: int,
        deadline: Deadline,
        on_answer: Callable[[Announced], None] | None,
    ) -> int:
        announced = _announced(answer.headers)
        if announced.length is not None and announced.length > limit:
            raise self._fail(
                "protocol", url, f"announced {announced.length} bytes, over {limit} bytes"
            )
        if on_answer is not None:
            on_answer(announced)
        size = 0
        for chunk in answer.iter_content(_CHUNK):
            deadline.cap(self._read_timeout)  # a handed-in session's reads are not cut
            size += len(chunk)
            if size > limit:
                raise self._fail("protocol", url, f"the body runs over {limit} bytes")
            out.write(chunk)
        if announced.length is not None and size != announced.length:
            raise self._fail(
                "protocol", url, f"got {size} bytes, {announced.length} were announced"
            )
        return size

    def _explain(self, error: BaseException, deadline: Deadline) -> tuple[ErrorKind, str]:
        """The error kind of a network failure and a short reason without the URL."""
        if deadline.expired or (isinstance(error, TimeoutError) and "attempt's" in str(error)):
            return "timeout", f"passed its {deadline.budget:g} s deadline"
        if isinstance(error, requests.ConnectTimeout):
            return "connect", f"failed: no connection within {self._connect_timeout:g} s"
        if isinstance(error, requests.ReadTimeout) or stalled(error):
            return "timeout", f"failed: no progress for {self._read_timeout:g} s"
        if isinstance(error, RequestsSSLError):
            return "tls", f"failed: TLS ({os_reason(error)})"
        if any(isinstance(e, ConnectionRefusedError) for e in chain(error)):
            return "refused", "failed: the connection was refused"
        return "connect", f"broke off ({os_reason(error)})"

    def _fail(self, kind: ErrorKind, url: str, reason: str) -> TransportError:
        """Log a failed download and make its error; the message never holds the key."""
        message = self._redact(f"download of {show_url(url)} {reason}")
        log.info("http.error", method="GET", path="/download", kind=kind, reason=message)
        return TransportError(kind, message, url=self._root or None)

    def _redact(self, text: str) -> str:
        return redact(text, self._key.reveal() if self._key is not None else None)
