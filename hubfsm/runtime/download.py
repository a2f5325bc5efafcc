"""Downloading the weights a model record names, into an owner-only cache.

A download streams to a temporary file beside its destination and is renamed into
place only once complete and checked (the size and SHA-256 the caller or the hub's
``X-Checksum-Sha256`` header gives), so a reader never sees half a file. The same URL
with the same expected digest (or cache tag) is downloaded once: a second call hands
back the cached file.

The URL comes from the hub and is untrusted: the API key goes only to the API root's
own scheme, host and port, never to another host and never through a redirect; the
body is bounded in size; every attempt has connect and read timeouts and the whole
download a total deadline. Messages name a URL without its query (a signed URL's
query is a credential of its own).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import platformdirs
import requests
from tqdm import tqdm

from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger

__all__ = [
    "CACHE_ENV",
    "MAX_BYTES",
    "DownloadError",
    "cache_root",
    "download",
    "same_origin",
]

log = get_logger("hubfsm")

#: The environment variable that overrides the weights cache directory.
CACHE_ENV = "HUBFSM_CACHE"
#: The largest download accepted unless the caller says otherwise (4 GiB).
MAX_BYTES = 4 << 30
_CHUNK = 1 << 20
_MAX_REDIRECTS = 5
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class DownloadError(HubfsmError):
    """A download failed, was too large, or did not match its expected size or digest."""


def cache_root() -> Path:
    """Where weights are cached: ``HUBFSM_CACHE``, else the user's cache directory."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(platformdirs.user_cache_dir("hubfsm")) / "weights"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def same_origin(url: str, root: str) -> bool:
    """True when ``url`` has the scheme, host and port of ``root``."""
    return _origin(url) == _origin(root) and bool(_origin(root)[1])


def _shown(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _file_name(url: str) -> str:
    # ultralytics names a download after the URL's last path segment and loads it
    # only as .pt; the name never leaves the cache directory.
    last = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    name = _SAFE_NAME.sub("_", last).lstrip(".") or "weights"
    return name if name.endswith(".pt") else f"{name}.pt"


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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

    Returns:
        The cached file (mode 0600, in a directory of mode 0700).

    Raises:
        DownloadError: The URL is not http(s), the server refused or broke off, the body
            was too large, or the file did not match the expected size or digest.
    """
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise DownloadError(f"refusing to download {_shown(url)!r}: not an http(s) URL")
    want_sha = expected_sha256.lower() if expected_sha256 else None
    parts = urlsplit(url)
    key_text = f"{parts.scheme}://{parts.netloc}{parts.path}\n{tag}\n{want_sha or ''}"
    slot = Path(cache_dir) if cache_dir is not None else cache_root()
    slot = slot / hashlib.sha256(key_text.encode()).hexdigest()[:24]
    target = slot / _file_name(url)
    if target.is_file():
        size = target.stat().st_size
        if (expected_size is None or size == expected_size) and (
            want_sha is None or _sha256(target) == want_sha
        ):
            log.info("download.cached", url=_shown(url), path=str(target), size=size)
            return target
        target.unlink()  # a damaged copy: fetch it again
    _mkdir_private(slot)
    started = time.monotonic()
    http = session or requests.Session()
    try:
        response = _get(
            http, url, api_root, api_key, started, deadline, (connect_timeout, read_timeout)
        )
        with response:
            size, digest = _stream(
                response,
                slot,
                target,
                url,
                started,
                deadline,
                max_bytes,
                expected_size,
                want_sha,
                progress,
            )
    finally:
        if session is None:
            http.close()
    log.info("download.done", url=_shown(url), path=str(target), size=size, sha256=digest)
    return target


def _get(
    http: requests.Session,
    url: str,
    api_root: str | None,
    api_key: str | None,
    started: float,
    deadline: float,
    timeout: tuple[float, float],
) -> requests.Response:
    current = url
    for hop in range(_MAX_REDIRECTS + 1):
        headers = {"Accept": "application/octet-stream"}
        # The key only on the first request, and only to the API root's own origin:
        # a redirect is the server's word about where to go, not a place to trust.
        if hop == 0 and api_key and api_root and same_origin(current, api_root):
            headers["x-api-key"] = api_key
        left = deadline - (time.monotonic() - started)
        if left <= 0:
            raise DownloadError(f"download of {_shown(url)} passed its {deadline:g}s deadline")
        try:
            response = http.get(
                current,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(min(timeout[0], left), min(timeout[1], left)),
            )
        except requests.RequestException as exc:
            raise DownloadError(
                f"download of {_shown(current)} failed: {type(exc).__name__}"
            ) from None
        if response.is_redirect:
            location = response.headers.get("Location", "")
            response.close()
            current = urljoin(current, location)
            if urlsplit(current).scheme.lower() not in ("http", "https"):
                raise DownloadError(f"download of {_shown(url)} redirected to a non-http URL")
            continue
        if response.status_code != 200:
            response.close()
            raise DownloadError(
                f"download of {_shown(current)} failed: HTTP {response.status_code}"
            )
        return response
    raise DownloadError(f"download of {_shown(url)}: more than {_MAX_REDIRECTS} redirects")


def _stream(
    response: requests.Response,
    slot: Path,
    target: Path,
    url: str,
    started: float,
    deadline: float,
    max_bytes: int,
    expected_size: int | None,
    want_sha: str | None,
    progress: bool,
) -> tuple[int, str]:
    length_text = response.headers.get("Content-Length")
    length = int(length_text) if length_text and length_text.isdigit() else None
    if expected_size is not None and length is not None and length != expected_size:
        raise DownloadError(
            f"download of {_shown(url)}: the server sends {length} bytes, "
            f"{expected_size} were expected"
        )
    if length is not None and length > max_bytes:
        raise DownloadError(f"download of {_shown(url)}: {length} bytes is over {max_bytes}")
    header_sha = response.headers.get("X-Checksum-Sha256", "").strip().lower() or None
    limit = min(max_bytes, expected_size if expected_size is not None else max_bytes)
    temp = slot / f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out, _bar(length or expected_size, progress, target) as bar:
            for chunk in response.iter_content(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise DownloadError(
                        f"download of {_shown(url)}: more than the {limit} bytes allowed"
                    )
                if time.monotonic() - started > deadline:
                    raise DownloadError(
                        f"download of {_shown(url)} passed its {deadline:g}s deadline"
                    )
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        _check(url, size, digest.hexdigest(), expected_size, length, want_sha, header_sha)
        os.replace(temp, target)
    except requests.RequestException as exc:
        temp.unlink(missing_ok=True)
        raise DownloadError(f"download of {_shown(url)} broke off: {type(exc).__name__}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def _check(
    url: str,
    size: int,
    sha: str,
    expected_size: int | None,
    length: int | None,
    want_sha: str | None,
    header_sha: str | None,
) -> None:
    for what, want in (("expected", expected_size), ("announced", length)):
        if want is not None and size != want:
            raise DownloadError(f"download of {_shown(url)}: got {size} bytes, {want} were {what}")
    for what, want_digest in (("expected", want_sha), ("announced", header_sha)):
        if want_digest is not None and sha != want_digest:
            raise DownloadError(
                f"download of {_shown(url)}: SHA-256 {sha[:12]}... is not the "
                f"{what} {want_digest[:12]}..."
            )


def _bar(total: int | None, progress: bool, target: Path) -> tqdm[Any]:
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
