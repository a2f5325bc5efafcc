"""The weights a session starts from: planned from the model record, downloaded into a cache.

:func:`plan_of` says what a session trains from (a local file with its arguments, else
the hub record's plan); :func:`download_newest_weights` fetches the weights that plan
starts from, reading the record again when newer weights replaced them; :func:`download`
puts any URL into the owner-only cache. The session's views use these
(:mod:`hubfsm.runtime.session_views`), so the session itself never knows the record's
download fields (``weights_*`` and ``resume_*``).

A download streams to a temporary file beside its destination and is renamed into
place only once complete and checked (the size and SHA-256 the caller or the hub's
``X-Checksum-Sha256`` header gives), so a reader never sees half a file. The same URL
with the same expected digest (or cache tag) is downloaded once: a second call hands
back the cached file.

The wire part (the API key only to the API root's origin and never through a redirect,
the size bound, the timeouts and the total deadline, key-free messages naming the URL
without its query) is the transport layer's: a :class:`~hubfsm.transport.Downloader`,
by default :class:`transports.downloads.HttpDownloader`.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import platformdirs

from hubfsm import env
from hubfsm.core import protocol
from hubfsm.core.answers import TrainingPlan, plan_for_file, plan_from_record
from hubfsm.core.identifier import Identifier
from hubfsm.digest import sha256_of
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger
from hubfsm.masking import show_url
from hubfsm.transport import Announced, Downloader, Transport, TransportError

if TYPE_CHECKING:
    import requests
    from tqdm import tqdm

__all__ = [
    "CACHE_ENV",
    "MAX_BYTES",
    "DownloadError",
    "cache_root",
    "download",
    "download_newest_weights",
    "plan_of",
]

log = get_logger("hubfsm")

#: The environment variable that overrides the weights cache directory.
CACHE_ENV = env.CACHE
#: The largest download accepted unless the caller says otherwise (4 GiB).
MAX_BYTES = 4 << 30
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
#: The most characters of a URL's last segment a cached file's name keeps.
_NAME_CHARS = 100


class DownloadError(HubfsmError):
    """A download failed, was too large, or did not match its expected size or digest."""


def cache_root() -> Path:
    """Where weights are cached: ``HUBFSM_CACHE``, else the user's cache directory."""
    root = env.cache_root()
    return Path(root) if root else Path(platformdirs.user_cache_dir("hubfsm")) / "weights"


def _file_name(url: str) -> str:
    # ultralytics names a download after the URL's last path segment and loads it
    # only as .pt; the name never leaves the cache directory.
    # Cut short, since a file system takes 255 bytes a name and the temporary file's name
    # is longer still; the slot is named by the whole URL, so nothing else shares it.
    last = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    name = _SAFE_NAME.sub("_", last).lstrip(".").removesuffix(".pt")[:_NAME_CHARS]
    return f"{name or 'weights'}.pt"


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def download(
    url: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    api_root: str | None = None,
    api_key: str | None = None,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    tag: str = "",
    max_bytes: int = MAX_BYTES,
    deadline: float = 1800.0,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    progress: bool = True,
    session: requests.Session | None = None,
    downloader: Downloader | None = None,
    offline: bool = False,
) -> Path:
    """Download ``url`` into the cache (or reuse the cached copy) and return its path.

    Args:
        url: An http(s) URL, e.g. the record's ``resume`` or ``weights``.
        cache_dir: The cache root (else :func:`cache_root`).
        api_root: The API root: only a URL of its scheme, host and port gets the key.
        api_key: The API key, sent as ``x-api-key`` to the API root only.
        expected_size: The size in bytes the file must have, when known.
        expected_sha256: The SHA-256 (hex) the file must have, when known.
        tag: Tells apart versions of a file behind one URL (e.g. the epoch of the
            last weights); part of the cache key.
        max_bytes: The largest body accepted.
        deadline: Seconds the whole download may take, redirects included.
        connect_timeout: Seconds to connect, per request.
        read_timeout: Seconds between two reads, per request.
        progress: Show a progress bar on stderr.
        session: The requests session to use (default a new one).
        downloader: What fetches the URL (a transport that knows the key, say); when
            given, ``api_root``, ``api_key``, the timeouts and ``session`` are its own.
        offline: Only reuse the cached copy; a file not in the cache is an error.

    Returns:
        The cached file (mode 0600, in a directory of mode 0700).

    Raises:
        DownloadError: The URL is not http(s), the server refused or broke off, the body
            was too large, or the file did not match the expected size or digest.
        SettingsError: Without ``downloader``: the key holds spaces, control or non-ASCII
            characters, or a timeout is not positive.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise DownloadError(f"refusing to download {show_url(url)!r}: not an http(s) URL")
    want_sha = expected_sha256.lower() if expected_sha256 else None
    key_text = f"{parts.scheme}://{parts.netloc}{parts.path}\n{tag}\n{want_sha or ''}"
    slot = Path(cache_dir) if cache_dir is not None else cache_root()
    slot = slot / hashlib.sha256(key_text.encode()).hexdigest()[:24]
    target = slot / _file_name(url)
    if target.is_file():
        size = target.stat().st_size
        if (expected_size is None or size == expected_size) and (
            want_sha is None or sha256_of(target)[0] == want_sha
        ):
            log.info("download.cached", url=show_url(url), path=str(target), size=size)
            return target
        target.unlink()  # a damaged copy: fetch it again
    if offline:
        raise DownloadError(
            f"offline, and {show_url(url)} is not in the cache {slot.parent}: weights are "
            "downloaded once online (an online start of the model does it), then reused"
        )
    _mkdir_private(slot)
    if downloader is None:
        # Imported here: the HTTP stack is needed only when something is downloaded.
        from transports.downloads import HttpDownloader

        downloader = HttpDownloader(
            api_root=api_root,
            api_key=api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            session=session,
        )
    temp = slot / f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, _bar(expected_size, progress, target) as bar:
            sink = _Sink(url, out, bar, expected_size)
            try:
                downloader.download(
                    url, sink, max_bytes=max_bytes, deadline=deadline, on_answer=sink.announce
                )
            except TransportError as error:
                raise DownloadError(str(error)) from None
            out.flush()
            os.fsync(out.fileno())
        digest = sink.digest.hexdigest()
        _check(url, sink.size, digest, expected_size, want_sha, sink.announced.sha256)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    log.info("download.done", url=show_url(url), path=str(target), size=sink.size, sha256=digest)
    return target


class _Sink:
    """Where the downloader writes: the temporary file, a running digest and the bar."""

    def __init__(self, url: str, out: BinaryIO, bar: tqdm[Any], expected_size: int | None) -> None:
        self.url = url
        self.out = out
        self.bar = bar
        self.expected_size = expected_size
        self.digest = hashlib.sha256()
        self.size = 0
        self.announced = Announced()

    def announce(self, announced: Announced) -> None:
        """Refuse a body of the wrong announced size before it comes; size the bar."""
        self.announced = announced
        length, expected = announced.length, self.expected_size
        if expected is not None and length is not None and length != expected:
            raise DownloadError(
                f"download of {show_url(self.url)}: the server sends {length} bytes, "
                f"{expected} were expected"
            )
        if length is not None and self.bar.total is None:
            self.bar.total = length
            self.bar.refresh()

    def write(self, chunk: bytes) -> int:
        """Write, hash and count ``chunk``; past the expected size, refuse it."""
        self.size += len(chunk)
        if self.expected_size is not None and self.size > self.expected_size:
            raise DownloadError(
                f"download of {show_url(self.url)}: more than the {self.expected_size} "
                "bytes expected"
            )
        self.digest.update(chunk)
        self.out.write(chunk)
        self.bar.update(len(chunk))
        return len(chunk)


def _check(
    url: str,
    size: int,
    sha: str,
    expected_size: int | None,
    want_sha: str | None,
    header_sha: str | None,
) -> None:
    # The downloader has held the body to its announced length already.
    if expected_size is not None and size != expected_size:
        raise DownloadError(
            f"download of {show_url(url)}: got {size} bytes, {expected_size} were expected"
        )
    for what, want_digest in (("expected", want_sha), ("announced", header_sha)):
        if want_digest is not None and sha != want_digest:
            raise DownloadError(
                f"download of {show_url(url)}: SHA-256 {sha[:12]}... is not the "
                f"{what} {want_digest[:12]}..."
            )


def _bar(total: int | None, progress: bool, target: Path) -> tqdm[Any]:
    # Imported here: opening a session needs no progress bar, only a download does.
    from tqdm import tqdm

    stream: IO[str] = sys.stderr
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"hubfsm: downloading {target.name}",
        file=stream,
        disable=not progress,
        leave=False,
    )


# -- the weights a plan starts from ----------------------------------------------------


def plan_of(
    identifier: Identifier, create_args: Mapping[str, Any], record: Mapping[str, Any]
) -> TrainingPlan:
    """The plan of a session: a local file's with its arguments, else the record's."""
    filename = identifier.filename
    if filename is not None:
        return plan_for_file(filename, dict(create_args))
    return plan_from_record(record)


def _download(
    plan: TrainingPlan,
    record: Mapping[str, Any],
    transport: Transport,
    *,
    model_id: str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    deadline: float,
    offline: bool = False,
) -> Path | None:
    """Download (or reuse from the cache) the weights ``plan`` starts from, if any.

    The size and digest the record gives are checked; the transport fetches the file
    when it is a :class:`~hubfsm.transport.Downloader`, else it goes without a key.
    """
    if plan.weights_url is None:
        return None
    prefix = "resume" if plan.kind == "resume" else "weights"
    size = record.get(f"{prefix}_size")
    sha = record.get(f"{prefix}_sha256")
    return download(
        plan.weights_url,
        cache_dir=cache_dir,
        downloader=transport if isinstance(transport, Downloader) else None,
        expected_size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        expected_sha256=sha if isinstance(sha, str) else None,
        # The last weights change behind one URL as training goes on.
        tag=f"{model_id}:{plan.kind}:{plan.resume_epoch}",
        progress=progress,
        deadline=deadline,
        offline=offline,
    )


def download_newest_weights(
    identifier: Identifier,
    create_args: Mapping[str, Any],
    record: Mapping[str, Any],
    transport: Transport,
    *,
    model_id: str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    deadline: float,
    offline: bool = False,
    reread: bool = False,
) -> tuple[Path | None, Mapping[str, Any]]:
    """Download the weights the plan from ``record`` names, or newer ones that replaced them.

    A resumed session delivers what the last run left in its outbox, a pending checkpoint
    too, possibly before the trainer asks for the weights: the hub then keeps newer last
    weights than the record read at opening names, and the old ones may be gone. So when
    last weights fail to download, the record is read again, and if it names other
    weights, those are downloaded: training resumes from the newest checkpoint.
    With ``reread`` (the session delivered such a checkpoint), the record is read again
    first: the old weights may still be in the cache, where no download fails.

    Returns:
        The weights file (None when the plan needs none) and the record it planned from.

    Offline, only the cache is looked at, and the hub is not asked again.

    Raises:
        DownloadError: The download failed, and the hub names no other weights.
    """
    plan = plan_of(identifier, create_args, record)
    if reread and plan.kind == "resume" and model_id is not None and not offline:
        fresh = _read_record(transport, model_id)
        fresh_plan = None if fresh is None else _resume_plan(identifier, create_args, fresh)
        if fresh is not None and fresh_plan is not None:
            record, plan = fresh, fresh_plan
    options: dict[str, Any] = {
        "model_id": model_id,
        "cache_dir": cache_dir,
        "progress": progress,
        "deadline": deadline,
        "offline": offline,
    }
    try:
        return _download(plan, record, transport, **options), record
    except DownloadError:
        if plan.kind != "resume" or model_id is None or offline:
            raise
        fresh = _read_record(transport, model_id)
        if fresh is None:
            raise
        fresh_plan = plan_of(identifier, create_args, fresh)
        names = (fresh_plan.weights_url, fresh.get("resume_sha256"))
        if fresh_plan.kind != "resume" or names == (plan.weights_url, record.get("resume_sha256")):
            raise
    log.info("weights.replaced", model_id=model_id, resume_epoch=fresh_plan.resume_epoch)
    return _download(fresh_plan, fresh, transport, **options), fresh


def _resume_plan(
    identifier: Identifier, create_args: Mapping[str, Any], record: Mapping[str, Any]
) -> TrainingPlan | None:
    """The record's plan when it resumes from last weights, else None (it says otherwise)."""
    try:
        plan = plan_of(identifier, create_args, record)
    except HubfsmError:
        return None
    return plan if plan.kind == "resume" else None


def _read_record(transport: Transport, model_id: str) -> dict[str, Any] | None:
    """The model record as the hub has it now, or None when it does not give it."""
    try:
        response = transport.send(protocol.get_model(model_id))
    except TransportError:
        return None
    if not response.ok or not isinstance(response.data, Mapping):
        return None
    try:
        protocol.check_record(response.data, model_id, response=response)
    except protocol.HubProtocolError:
        return None
    return dict(response.data)
