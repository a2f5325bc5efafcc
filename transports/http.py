"""The HTTP transport: the hub's REST API over a pooled ``requests`` session.

It sends what the core asks for and reports what came back, nothing more: no retries
(the retry policy decides those), no redirects (the API key must not follow one to another
host), and no exception but :class:`~hubfsm.transport.TransportError` for anything that
goes wrong on the network.

The parts live beside it: the attempt deadline and its socket plumbing in
:mod:`transports.deadline`, reading answers and naming network errors (both without the
key) in :mod:`transports.outcomes`, downloads in :mod:`transports.downloads`, checking
settings in :mod:`transports.settings`, and an upload's streamed body, bytes sent,
progress bar and speed in :mod:`transports.uploads`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from http.client import HTTPException
from typing import Any, TextIO
from urllib.parse import urlsplit

import requests
import urllib3
from tqdm import tqdm

from hubfsm.logs import get_logger
from hubfsm.transport import Announced, Request, Response, Sink, Transport
from hubfsm.version import __version__
from transports.deadline import Deadline, SendTimeoutAdapter
from transports.downloads import HttpDownloader
from transports.outcomes import (
    BadAnswer,
    Reporter,
    decode,
    parse_retry_after,
    rate_limit,
    read_body,
)
from transports.settings import check_key, check_root, positive
from transports.uploads import (
    FileChangedError,
    FileReadError,
    MultipartBody,
    UploadMeter,
    log_upload,
    progress_bar,
)

__all__ = ["MIN_UPLOAD_RATE", "RequestsTransport"]

#: The slowest upload rate (bytes per second) an attempt's deadline allows for: about
#: 2 Mbit/s, so that a slow but working uplink still gets large checkpoints through.
MIN_UPLOAD_RATE = 250_000

log = get_logger("hubfsm.http")


class RequestsTransport(Transport):
    """Sends hub API requests over HTTP(S) with ``requests``.

    One session (so one connection pool) serves every request. Every request carries the
    API key in ``x-api-key``, a ``User-Agent`` naming hubfsm, and the request's
    ``Idempotency-Key`` when it has one. Uploads are streamed from disk as
    ``multipart/form-data`` with a ``Content-Length``, a read buffer at a time; final
    uploads show a progress bar of the bytes sent.

    Timeouts: ``connect_timeout`` (default 10 s) bounds opening a connection; a healthy
    hub accepts in well under a second, and a dead route should fail fast so the retry
    policy can take over. ``read_timeout`` (default 60 s) bounds every later socket
    operation without progress, sending the request body included; it is generous because
    the hub may store a large checkpoint before it answers, yet a stalled connection
    still fails within a minute instead of hanging training forever. A server can make a
    little progress now and then (a byte every few seconds) and never trip it, so every
    attempt also has a total deadline: ``total_timeout`` (default 120 s), plus, for an
    upload, its size at ``min_upload_rate`` (default 250 kB/s). Past it the attempt
    fails as a ``timeout``, which the retry policy retries.

    Trust: nothing in an answer is believed beyond the protocol. Redirects are not
    followed (the key would go with them): a 3xx comes back as a refusal naming where it
    pointed. Bodies over :data:`MAX_RESPONSE_BYTES` are a protocol error. The key, and
    any run of 8 or more of its characters, is blotted out of every text taken from an
    answer (the JSON body, headers quoted in messages) before it reaches an exception,
    a log line or the caller.

    Not safe for concurrent use from several threads: a runner sends from one worker.

    Args:
        api_key: The hub API key. Surrounding whitespace is dropped.
        api_root: The API root URL; default ``$ULTRALYTICS_HUB_API``, else
            :data:`DEFAULT_API_ROOT`.
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds any later socket operation may go without progress.
        total_timeout: Seconds an attempt may take in all (an upload gets more, see
            ``min_upload_rate``).
        min_upload_rate: Bytes per second an upload's deadline allows for.
        allow_insecure: Allow plain ``http://`` to a host other than this machine.
        progress: Progress bar for final uploads: True on, False off, None (default) on
            when standard error is a terminal.
        session: A session to use instead of a new one, for custom TLS or proxy settings.
            It is used as it is (its body sends then keep requests' own timeout, the
            connect timeout, and the attempt's deadline is checked only between the
            chunks of an answer), except that certificates are always verified, and
            :meth:`close` leaves it open: its owner closes it. A session made here for a
            plain ``http://`` root ignores proxy settings from the environment, so a
            clear-text key does not leave through a proxy.
        progress_file: Where the progress bar goes; default standard error.

    Raises:
        ValueError: The key is empty or malformed, the root is not an http(s) URL, a
            timeout is not positive, or the root is plain ``http://`` to another machine
            without ``allow_insecure``.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_root: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        total_timeout: float = 120.0,
        min_upload_rate: float = MIN_UPLOAD_RATE,
        allow_insecure: bool = False,
        progress: bool | None = None,
        session: requests.Session | None = None,
        progress_file: TextIO | None = None,
    ) -> None:
        self._key = check_key(api_key)
        self._root, parts = check_root(api_root, allow_insecure=allow_insecure, key=self._key)
        self._connect_timeout = positive("connect_timeout", connect_timeout)
        self._read_timeout = positive("read_timeout", read_timeout)
        self._total_timeout = positive("total_timeout", total_timeout)
        self._min_upload_rate = positive("min_upload_rate", min_upload_rate)
        self._deadline = Deadline()
        self._progress = progress
        self._progress_file = progress_file
        self._user_agent = f"hubfsm/{__version__} python-requests/{requests.__version__}"
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = SendTimeoutAdapter(self._read_timeout, self._deadline)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            if parts.scheme == "http":
                # Environment proxies would carry a clear-text key off this machine.
                session.trust_env = False
        self._session = session
        self._report = Reporter(
            self._root,
            self._key,
            self._deadline,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
        )

    @property
    def api_root(self) -> str:
        """The API root every request path is appended to."""
        return self._root

    def __repr__(self) -> str:
        return (
            f"RequestsTransport(api_root={self._root!r}, connect_timeout="
            f"{self._connect_timeout}, read_timeout={self._read_timeout})"
        )

    def close(self) -> None:
        """Close the session's connections, if this transport made the session."""
        if self._owns_session:
            self._session.close()

    def send(self, request: Request) -> Response:
        """Send ``request`` and return the hub's answer, whatever its status.

        Raises:
            TransportError: ``connect`` when the hub cannot be reached, ``timeout`` when
                it stops answering (or reading) for ``read_timeout``, ``protocol`` when a
                2xx answer is not a JSON object, the body is garbled, or the upload's
                file changed size since it was handed over.
            FileNotFoundError: The upload's file is gone (and any other :class:`OSError`
                reading it): the caller's problem, not the network's.
            ValueError: The request is malformed (a relative path; JSON and form fields).
        """
        if not request.path.startswith("/"):
            raise ValueError(f"request path {request.path!r} must start with '/'")
        if request.fields is None and request.file is None:
            return self._exchange(request, None)
        if request.json is not None:
            raise ValueError("a request carries either JSON or form fields, not both")
        meter = UploadMeter()
        try:
            body = MultipartBody(request.fields or {}, request.file, on_sent=meter)
        except FileChangedError as error:
            raise self._report.fail(request, "protocol", str(error)) from None
        with body:
            # tqdm is looked up here, at call time, so that it can be swapped for a fake.
            meter.bar = progress_bar(
                request, len(body), enabled=self._progress, file=self._progress_file, make=tqdm
            )
            started = time.monotonic()
            try:
                response = self._exchange(request, body)
            finally:
                meter.close()
            log_upload(request, meter.bytes, time.monotonic() - started, response.status)
        return response

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
        """Fetch a URL the hub handed out (weights, resume) into ``dest``.

        The API key goes only to the API root's origin (scheme, host and port), on the
        first request only; redirects are followed by hand, ``hops`` at most, never with
        the key. This is :class:`hubfsm.transport.Downloader`, done by
        :class:`transports.downloads.HttpDownloader` with this transport's key, root and
        timeouts, on a session of its own (unless one was handed in), so it may run while
        the transport sends from another thread.

        Args:
            url: An ``http(s)`` URL.
            dest: A path (written owner-only to a temporary name, then renamed into
                place), or a binary file (any :class:`~hubfsm.transport.Sink`) to write into.
            max_bytes: The most bytes accepted (the size the record states, say).
            hops: The most redirects followed.
            deadline: Seconds the whole download may take; default ``total_timeout``
                plus ``max_bytes`` at ``min_upload_rate``.
            on_answer: Called with what the answer announces, before the body is read.

        Returns:
            The number of bytes written.

        Raises:
            TransportError: The download failed, was too large, or redirected too often.
        """
        downloader = HttpDownloader(
            api_root=self._root,
            api_key=self._key.reveal(),
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            deadline=self._total_timeout + max_bytes / self._min_upload_rate,
            session=None if self._owns_session else self._session,
            user_agent=self._user_agent,
        )
        return downloader.download(
            url, dest, max_bytes=max_bytes, hops=hops, deadline=deadline, on_answer=on_answer
        )

    def _headers(self, request: Request, body: MultipartBody | None) -> dict[str, str]:
        headers = {
            "x-api-key": self._key.reveal(),
            "User-Agent": self._user_agent,
            "Accept": "application/json",
        }
        if request.idempotency_key is not None:
            headers["Idempotency-Key"] = request.idempotency_key
        if body is not None:
            headers["Content-Type"] = body.content_type
        return headers

    def _exchange(
        self,
        request: Request,
        body: MultipartBody | None,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send the request, read the whole answer, and map it to a Response.

        ``url`` and ``headers`` replace the API root's URL and headers (the key's among
        them) for a request elsewhere; ``request`` then only names it in messages, and a
        2xx answer need not be JSON.
        """
        session = self._session
        # A failure elsewhere (a signed URL's storage) names that host, not the API's.
        host = urlsplit(url).netloc if url is not None else None
        # Preparing can fail only on a malformed request (say, JSON that cannot be
        # encoded): a bug to surface as is, outside the network error mapping below.
        prepared = session.prepare_request(
            requests.Request(
                request.method,
                self._root + request.path if url is None else url,
                headers=self._headers(request, body) if headers is None else headers,
                json=dict(request.json) if request.json is not None else None,
                data=body,
            )
        )
        # Certificate checks stay on even if a handed-in session switched them off; a
        # custom CA bundle (a path) is kept.
        verify: bool | str = session.verify if isinstance(session.verify, str) else True
        settings = session.merge_environment_settings(prepared.url or "", {}, True, verify, None)
        started = time.monotonic()
        budget = self._total_timeout + (len(body) / self._min_upload_rate if body else 0.0)
        self._deadline.start(budget)
        try:
            answer = session.send(
                prepared,
                timeout=(self._connect_timeout, self._read_timeout),
                allow_redirects=False,
                **settings,
            )
            try:
                if answer.status_code < 200:
                    # Taken for the whole answer, an informational one leaves the hub's
                    # real answer on the connection: the next request sent on it would
                    # read that answer as its own. The connection is closed before the
                    # (empty) body is read, which would hand it back to the pool.
                    answer.raw.close()
                    content = b""
                else:
                    content = read_body(
                        answer, deadline=self._deadline, read_timeout=self._read_timeout
                    )
            finally:
                answer.close()
        except BadAnswer as error:
            raise self._report.fail(request, "protocol", str(error)) from None
        except FileChangedError as error:
            raise self._report.fail(request, "protocol", str(error)) from None
        except FileReadError as error:
            raise error.error from None
        except requests.RequestException as error:
            kind, reason = self._report.explain(error, host)
            # Not chained: the library's exception may quote what the server sent.
            raise self._report.fail(request, kind, reason) from None
        except (OSError, HTTPException, urllib3.exceptions.HTTPError) as error:
            # requests wraps these; this is for the odd one a future version lets through.
            kind, reason = self._report.explain(error, host)
            raise self._report.fail(request, kind, reason) from None
        finally:
            self._deadline.clear()
        status = answer.status_code
        if status < 200:
            # Python's HTTP client takes any informational answer but 100 (a proxy's 103
            # Early Hints) for the final one: the hub's real answer was never read.
            # Not the hub's word on the request, so not a refusal: sent again, its key
            # makes that safe.
            reason = f"an informational answer ({status}) came where the final one belongs"
            raise self._report.fail(request, "protocol", reason)
        if 300 <= status < 400:
            envelope: Mapping[str, Any] = self._report.redirected(request, status, answer.headers)
        elif url is not None:
            envelope = {}  # storage answers in its own terms; the status says it all
        else:
            try:
                envelope = decode(
                    status, answer.headers.get("Content-Type"), content, secret=self._report.secret
                )
            except BadAnswer as error:
                raise self._report.fail(request, "protocol", str(error)) from None
        response = Response(
            status=status,
            body=envelope,
            retry_after=parse_retry_after(answer.headers.get("Retry-After"), now=time.time()),
            rate_limit=rate_limit(answer.headers),
            origin=self._root,
        )
        log.debug(
            "http.response",
            method=request.method,
            path=request.path,
            status=status,
            bytes=len(content),
            ms=round((time.monotonic() - started) * 1000, 1),
            retry_after=response.retry_after,
        )
        return response
