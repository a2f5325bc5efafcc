"""The hub's keys: the API keys it accepts, and the secret that signs its URLs.

A key is 42 ASCII letters and digits, like the public hub's, or ``ul_`` and 40 hex
digits, like a Platform key (the Platform API answers only those). The hub keeps a
:class:`KeyRecord` per key: its SHA-256 digest (to look the key up), a short id (to name
it on the command line and as the owner of models), a masked form to show, and when it
was revoked. Only ``hubfsm hub keys add`` ever prints a full key, once.
:class:`KeyAdmin` is the key side of :class:`~hubfsm.hub.domain.Hub`: ``hubfsm hub keys``
and the server's start-up go through it, and every request through
:meth:`KeyAdmin.principal`.

Weight URLs are signed like the public hub's object-store links: no key needed, none
guessable. A download URL names one file of one model (``/files/<model>/epoch-7.pt`` or
``.../best.pt``); an upload URL (Platform checkpoints, ``/uploads/...``) one place to PUT
a file. Either carries ``expires`` (Unix seconds) and ``signature``, an HMAC-SHA256 over
the path and the expiry under a secret only the hub knows (:class:`UrlSigner`). Anyone
holding the URL may use it until it expires; changing any part of it breaks the signature.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import string
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import attrs

from hubfsm.logs import get_logger

if TYPE_CHECKING:
    from hubfsm.hub.store import Store

_log = get_logger("hubfsm.hub")

ALPHABET = string.ascii_letters + string.digits

#: Length of an API key.
KEY_LENGTH = 42

_PLATFORM_KEY = re.compile(r"ul_[0-9a-f]{40}")


@attrs.frozen
class KeyRecord:
    """One API key as the hub stores it.

    Attributes:
        id: A short id derived from the digest; models created with the key carry it.
        digest: The key's SHA-256 hex digest.
        hint: The masked key, such as ``AbCd…wxyz``.
        label: A name given when the key was added.
        created_at: Hub clock seconds when the key was added.
        revoked_at: When it was revoked, or None while it is valid.
        admin: Signed in to the pages, the key sees every model, not only its own.
    """

    id: str
    digest: str
    hint: str
    label: str = ""
    created_at: float = 0.0
    revoked_at: float | None = None
    admin: bool = False


def new_key() -> str:
    """A fresh random API key."""
    return "".join(secrets.choice(ALPHABET) for _ in range(KEY_LENGTH))


def new_platform_key() -> str:
    """A fresh random Platform API key: ``ul_`` and 40 hex digits, as Platform issues them."""
    return "ul_" + secrets.token_hex(20)


def is_platform_key(key: str | None) -> bool:
    """True for a key shaped like a Platform key (the Platform API takes no other)."""
    return key is not None and _PLATFORM_KEY.fullmatch(key) is not None


def digest(key: str) -> str:
    """The key's SHA-256 hex digest."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id(key_digest: str) -> str:
    """The short id of a key, from its digest."""
    return key_digest[:12]


def mask(key: str) -> str:
    """The key with all but its first and last four characters hidden."""
    return f"{key[:4]}…{key[-4:]}" if len(key) > 12 else "…"


def record_for(key: str, *, label: str = "", now: float = 0.0, admin: bool = False) -> KeyRecord:
    """A fresh, valid :class:`KeyRecord` for ``key``."""
    hexdigest = digest(key)
    return KeyRecord(key_id(hexdigest), hexdigest, mask(key), label, now, admin=admin)


#: How many keys' digests the hub remembers before it starts over.
DIGESTS_KEPT = 64


class KeyAdmin:
    """The hub's API keys (a part of :class:`~hubfsm.hub.domain.Hub`)."""

    store: Store
    clock: Callable[[], float]
    _lock: threading.RLock
    # Key -> digest: every request carries the key, and hashing it each time showed up
    # in simulated sessions. Bounded; the digest is what the store is asked about.
    _digests: dict[str, str]

    def add_key(self, key: str, label: str = "", *, admin: bool = False) -> KeyRecord:
        """Accept ``key`` from now on (again, if it was revoked); ``admin`` sees every model."""
        record = record_for(key, label=label, now=self.clock(), admin=admin)
        with self._lock, self.store.transaction():
            known = self.store.get_key(record.digest)
            if known is not None:
                record = attrs.evolve(known, revoked_at=None, admin=known.admin or admin)
            self.store.put_key(record)
        return record

    def ensure_key(self, key: str, label: str = "", *, admin: bool = False) -> KeyRecord:
        """Accept ``key`` unless the hub knows it already (a revoked key stays revoked).

        With ``admin``, a known key becomes an admin key (the hub's own key file's key,
        made before keys had the flag).
        """
        with self._lock:
            known = self.store.get_key(digest(key))
            if known is None:
                return self.add_key(key, label, admin=admin)
            if admin and not known.admin:
                known = attrs.evolve(known, admin=True)
                self.store.put_key(known)
            return known

    def revoke_key(self, key: str) -> None:
        """Refuse ``key`` from now on (401)."""
        known = self.store.get_key(digest(key))
        if known is not None:
            self.revoke(known.id)

    def revoke(self, key_id: str) -> KeyRecord | None:
        """Refuse the key with id ``key_id`` from now on; the revoked record, or None."""
        with self._lock, self.store.transaction():
            for known in self.store.list_keys():
                if known.id == key_id:
                    if known.revoked_at is None:
                        known = attrs.evolve(known, revoked_at=self.clock())
                        self.store.put_key(known)
                    return known
        return None

    def transfer(self, from_id: str, to_id: str) -> int:
        """Hand every model of the key ``from_id`` to the key ``to_id``; how many moved.

        Models belong to the key that made them, so after a key is revoked and another
        added, what the old key's trainers kept for ``hubfsm sync`` would find no model
        (404) with the new key; this is the way to let the new key deliver it.

        Raises:
            ValueError: ``to_id`` names no valid key.
        """
        with self._lock, self.store.transaction():
            target = [k for k in self.store.list_keys() if k.id == to_id]
            if not target or target[0].revoked_at is not None:
                raise ValueError(f"no valid key with the id {to_id}")
            moved = 0
            for listed in self.store.list_models():
                if listed.owner != from_id:
                    continue
                # Read again, row-locked where the store locks rows: a trainer's update
                # committed since the listing is kept, not overwritten by the listed copy.
                record = self.store.get_model(listed.id)
                if record is not None and record.owner == from_id:
                    self.store.put_model(attrs.evolve(record, owner=to_id))
                    moved += 1
        return moved

    def list_keys(self) -> list[KeyRecord]:
        """Every key the hub knows, revoked ones too, oldest first."""
        with self._lock:
            return self.store.list_keys()

    def principal(self, api_key: str | None) -> str | None:
        """The id of a valid ``api_key``, or None for a missing, unknown or revoked one."""
        if not api_key or len(api_key) > 200:
            return None
        digests = self._digests
        key_digest = digests.get(api_key)
        if key_digest is None:
            if len(digests) >= DIGESTS_KEPT:  # a client trying many keys gains nothing
                digests.clear()
            key_digest = digests[api_key] = digest(api_key)
        with self._lock:
            known = self.store.get_key(key_digest)
        return known.id if known is not None and known.revoked_at is None else None


def load_or_create_key(path: Path) -> str:
    """Read the hub's API key from ``path``, or create one there (mode 0600) first."""
    key, made = _kept(path, new_key)
    if made:
        _log.info("hub.key_created", key_file=str(path))
    elif len(key) != KEY_LENGTH or not (key.isascii() and key.isalnum()):
        raise ValueError(f"{path} does not hold a {KEY_LENGTH}-character API key")
    return key


def _kept(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The text kept in ``path``, and whether it was made now (by ``make``, mode 0600).

    The text is written whole under a temporary name and linked into place: a full disk
    or a crash mid-write leaves no empty file that every later start would refuse, and a
    hub starting beside another reads the other's text, never a file not yet written.

    Raises:
        OSError: The file cannot be read or written; its ``filename`` is ``path``.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read(path), False
    text = make()
    temporary: str | None = None
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="ascii") as out:  # mkstemp makes it mode 0600
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return _read(path), False  # another made it first
    except OSError as error:
        # A write's error names no file, a temporary file's the wrong one: name this one.
        raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        if temporary is not None:
            os.unlink(temporary)
    return text, True


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} holds bytes no hub wrote (not ASCII text)") from None


#: How long a signed URL stays valid by default: a day, like a long training's resume.
DEFAULT_TTL = 24 * 3600.0
#: How long a signed upload URL stays valid at most: it is used at once, by one PUT.
UPLOAD_TTL = 3600.0

_NAME = re.compile(r"^(?:epoch-(\d{1,9})|best)\.pt$")


def load_or_create_secret(path: Path) -> bytes:
    """The signing secret kept in ``path`` (mode 0600), created on first use."""
    text, made = _kept(path, lambda: secrets.token_bytes(32).hex())
    secret = bytes.fromhex(text)
    if not made and len(secret) < 16:
        raise ValueError(f"{path} does not hold a URL signing secret")
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
