"""Describing weight files for upload: size and digest, read in chunks."""

from __future__ import annotations

import hashlib
import os

from hubfsm.transport import FilePart

CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The hex sha256 and the size of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def describe(path: str | os.PathLike[str], name: str) -> FilePart:
    """A :class:`FilePart` for ``path``, sent as the multipart part ``name``."""
    digest, size = sha256_of(path)
    return FilePart(name=name, path=os.fspath(path), size=size, sha256=digest)
