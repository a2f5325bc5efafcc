"""Signed weight URLs, like the public hub's object-store links: no key needed, none guessable.

A download URL names one file of one model (``/files/<model>/epoch-7.pt`` or
``.../best.pt``); an upload URL (Platform checkpoints, ``/uploads/...``) one place to PUT
a file. Either carries ``expires`` (Unix seconds) and ``signature``, an HMAC-SHA256 over
the path and the expiry under a secret only the hub knows. Anyone holding the URL may use
it until it expires; changing any part of it breaks the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlencode

#: How long a signed URL stays valid by default: a day, like a long training's resume.
DEFAULT_TTL = 24 * 3600.0
#: How long a signed upload URL stays valid at most: it is used at once, by one PUT.
UPLOAD_TTL = 3600.0

_NAME = re.compile(r"^(?:epoch-(\d{1,9})|best)\.pt$")


def load_or_create_secret(path: Path) -> bytes:
    """The signing secret kept in ``path`` (mode 0600), created on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
        if len(secret) < 16:
            raise ValueError(f"{path} does not hold a URL signing secret") from None
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret.hex() + "\n")
    return secret


def file_name(kind: str, epoch: int | None) -> str:
    """The name a weight file is served under: ``epoch-<k>.pt`` or ``best.pt``."""
    return "best.pt" if kind == "best" else f"epoch-{epoch if epoch is not None else 0}.pt"


def parse_name(name: str) -> tuple[str, int | None] | None:
    """``(kind, epoch)`` of a served file name, or None if it names no weight file."""
    found = _NAME.match(name)
    if found is None:
        return None
    return ("last", int(found.group(1))) if found.group(1) is not None else ("best", None)


class UrlSigner:
    """Makes and checks signed weight URLs.

    Args:
        secret: The HMAC key.
        clock: Seconds now.
        ttl: How long a URL stays valid.
    """

    def __init__(self, secret: bytes, clock: Callable[[], float], ttl: float = DEFAULT_TTL):
        self._secret = secret
        self._clock = clock
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"UrlSigner(ttl={self.ttl:g})"

    def _signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, root: str, model_id: str, name: str) -> str:
        """A signed URL of file ``name`` of ``model_id`` under ``root``."""
        # Rounded up to the next hour, so a record read twice within an hour shows one URL.
        expires = int(math.ceil((self._clock() + self.ttl) / 3600.0) * 3600)
        return self.sign(root, f"/files/{model_id}/{name}", expires)

    def upload_url(self, root: str, path: str) -> str:
        """A signed URL to PUT one file at ``path``, valid for at most an hour."""
        return self.sign(root, path, int(math.ceil(self._clock() + min(self.ttl, UPLOAD_TTL))))

    def sign(self, root: str, path: str, expires: int) -> str:
        """``root + path`` with ``expires`` (Unix seconds) and its signature as the query."""
        query = urlencode({"expires": expires, "signature": self._signature(path, expires)})
        return f"{root}{path}?{query}"

    def check(self, path: str, query: Mapping[str, str]) -> str | None:
        """None if the URL is valid now, else why not."""
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            return "the URL is not signed"
        given = query.get("signature", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._signature(path, expires).encode()):
            return "the URL's signature does not match"
        if expires < self._clock():
            return "the URL has expired"
        return None
