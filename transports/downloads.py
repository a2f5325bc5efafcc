"""Fetching a file the hub handed out (weights to resume from, say) into place.

The API key goes only to the API root's origin; redirects are followed by hand so that
the key is decided afresh at every hop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import requests

from transports.answers import BadAnswer
from transports.deadline import Deadline

__all__ = ["fetch", "same_origin"]


def same_origin(root: str, url: str) -> bool:
    """True when ``url`` has ``root``'s scheme, host and port."""
    ours, theirs = urlsplit(root), urlsplit(url)
    try:
        return (ours.scheme, ours.hostname, ours.port) == (
            theirs.scheme,
            theirs.hostname,
            theirs.port,
        )
    except ValueError:  # an unreadable port
        return False


def fetch(
    session: requests.Session,
    url: str,
    target: str,
    *,
    max_bytes: int,
    hops: int,
    headers_for: Callable[[str], dict[str, str]],
    deadline: Deadline,
    budget: float,
    timeouts: tuple[float, float],
) -> int:
    """Fetch ``url`` into ``target`` (owner-only), following ``hops`` redirects at most.

    Each hop starts ``deadline`` afresh with ``budget``; the caller clears it, after it
    has explained a failure (an expired deadline makes it a timeout).

    Args:
        session: The session to fetch with.
        url: An ``http(s)`` URL.
        target: Where the file goes; written to a temporary name, then renamed.
        max_bytes: The most bytes accepted.
        hops: The most redirects followed.
        headers_for: The headers to send to a URL (the key only to the API's origin).
        deadline: The attempt's deadline.
        budget: Seconds each hop may take.
        timeouts: The connect and read timeouts.

    Returns:
        The number of bytes written.

    Raises:
        BadAnswer: The URL is not http(s), the answer is not a 200, the file is too
            large, or it redirected too often.
        requests.RequestException: The network failed.
        TimeoutError: The deadline passed.
    """
    partial = f"{target}.part-{os.getpid()}"
    for _ in range(hops + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadAnswer("the download URL is not http(s)")
        deadline.start(budget)
        answer = session.get(
            url,
            headers=headers_for(url),
            stream=True,
            allow_redirects=False,
            timeout=timeouts,
            # as in sending: certificates are checked even if the session says not
            verify=session.verify if isinstance(session.verify, str) else True,
        )
        try:
            if 300 <= answer.status_code < 400 and answer.headers.get("Location"):
                url = urljoin(url, answer.headers["Location"])
                continue
            if answer.status_code != 200:
                raise BadAnswer(f"download answered {answer.status_code}")
            return _save(answer, partial, target, max_bytes, deadline, timeouts[1])
        finally:
            answer.close()
    raise BadAnswer(f"the download redirected more than {hops} times")


def _save(
    answer: requests.Response,
    partial: str,
    target: str,
    limit: int,
    deadline: Deadline,
    read_timeout: float,
) -> int:
    size = 0
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(fd, "wb") as out:
            for chunk in answer.iter_content(1 << 20):
                deadline.cap(read_timeout)
                size += len(chunk)
                if size > limit:
                    raise BadAnswer(f"download over {limit} bytes")
                out.write(chunk)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return size
