"""Describing weight files for upload: size and digest, read in chunks."""

from __future__ import annotations

import os

from hubfsm.digest import sha256_of
from hubfsm.transport import FilePart

__all__ = ["describe", "sha256_of"]


def describe(path: str | os.PathLike[str], name: str) -> FilePart:
    """A :class:`FilePart` for ``path``, sent as the multipart part ``name``."""
    digest, size = sha256_of(path)
    return FilePart(name=name, path=os.fspath(path), size=size, sha256=digest)
