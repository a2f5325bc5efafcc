"""SHA-256 digests of weight files, read a chunk at a time and copied on the way.

A ground module: it imports nothing from hubfsm, so the client's outbox and the local
hub's store, which must not import each other, both take their digests from here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import IO

__all__ = ["CHUNK", "chunks", "sha256_chunks", "sha256_of"]

#: How much is read at a time: large enough to keep the overhead per read small, small
#: enough that a multi-gigabyte checkpoint never sits in memory whole.
CHUNK = 1 << 20


def chunks(stream: IO[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """The rest of ``stream``, ``size`` bytes at a time."""
    while chunk := stream.read(size):
        yield chunk


def sha256_chunks(parts: Iterable[bytes], copy_to: IO[bytes] | None = None) -> tuple[str, int]:
    """The hex sha256 and the byte count of ``parts``, each also written to ``copy_to``."""
    digest = hashlib.sha256()
    size = 0
    for part in parts:
        digest.update(part)
        size += len(part)
        if copy_to is not None:
            copy_to.write(part)
    return digest.hexdigest(), size


def sha256_of(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The hex sha256 and the size of a file, read :data:`CHUNK` bytes at a time."""
    with open(path, "rb") as f:
        return sha256_chunks(chunks(f))
