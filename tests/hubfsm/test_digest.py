"""The one chunked sha256 reader the outbox, the file describer and the hub's store share."""

import hashlib
import io
from pathlib import Path

from hubfsm.digest import CHUNK, chunks, sha256_chunks, sha256_of


def test_a_file_over_several_chunks_hashes_as_a_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK // 256 * 2 + 3)  # two chunks and a bit
    path = tmp_path / "w.pt"
    path.write_bytes(data)
    assert sha256_of(path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_the_copy_is_byte_for_byte_what_was_hashed() -> None:
    data = b"abc" * 1000
    out = io.BytesIO()
    digest, size = sha256_chunks(chunks(io.BytesIO(data), size=7), copy_to=out)
    assert out.getvalue() == data
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), 3000)


def test_an_empty_stream_has_the_empty_digest() -> None:
    assert sha256_chunks(chunks(io.BytesIO(b""))) == (hashlib.sha256(b"").hexdigest(), 0)
