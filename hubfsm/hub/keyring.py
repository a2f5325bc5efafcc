"""Which API keys the hub accepts: adding, revoking, handing models on, whose key a request bears.

:class:`KeyAdmin` is the key side of :class:`~hubfsm.hub.domain.Hub`. The store keeps a
digest of each key (see :mod:`hubfsm.hub.keys`), never the key itself; ``hubfsm hub keys``
and the server's start-up go through these methods, and every request through
:meth:`KeyAdmin.principal`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import attrs

from hubfsm.hub import keys
from hubfsm.hub.keys import KeyRecord
from hubfsm.hub.store import Store

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
        record = keys.record_for(key, label=label, now=self.clock(), admin=admin)
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
            known = self.store.get_key(keys.digest(key))
            if known is None:
                return self.add_key(key, label, admin=admin)
            if admin and not known.admin:
                known = attrs.evolve(known, admin=True)
                self.store.put_key(known)
            return known

    def revoke_key(self, key: str) -> None:
        """Refuse ``key`` from now on (401)."""
        known = self.store.get_key(keys.digest(key))
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
            key_digest = digests[api_key] = keys.digest(api_key)
        with self._lock:
            known = self.store.get_key(key_digest)
        return known.id if known is not None and known.revoked_at is None else None
