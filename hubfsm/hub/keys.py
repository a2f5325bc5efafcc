"""API keys of the local hub: made, digested, masked; the hub stores digests, never keys.

A key is 42 ASCII letters and digits, like the public hub's, or ``ul_`` and 40 hex
digits, like a Platform key (the Platform API answers only those). The hub keeps a
:class:`KeyRecord` per key: its SHA-256 digest (to look the key up), a short id (to name
it on the command line and as the owner of models), a masked form to show, and when it
was revoked. Only ``hubfsm hub keys add`` ever prints a full key, once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string

import attrs

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
