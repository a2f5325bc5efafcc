"""What a team hub runs on: a PostgreSQL database and an S3 object store, shared.

The team's store (:class:`~hubfsm.hub.store_postgres.PostgresStore`) keeps records in
the database and weight files in the object store; any number of hub processes share
both.

The database's connections (:class:`Database`): a pool, one transaction per thread, and
objects deleted after the commit that stopped pointing at them. The team's store and its
uploads waiting for promotion (:class:`~hubfsm.hub.stored.UploadsInDatabase`) run their
statements through one :class:`Database`, so that a statement made inside a transaction
joins it, whichever of them makes it.

The weight files (:class:`S3Objects`: AWS S3, MinIO, SeaweedFS or any S3 API). Every
upload goes to a new, never reused key (``{prefix}weights/{random}``): a model record
points at the key of its current file, and replacing a file is a pointer swap in the
database, so a reader sees the old file or the new one, never half of one. Uploads are
streamed to the store in parts of :data:`PART_SIZE` and hashed on the way (no copy of the
file in memory or on disk); downloads go straight from the store by presigned URL. The
endpoint, region and credentials come from the usual ``AWS_*`` variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
or a profile), as for any AWS tool.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, cast

from hubfsm import env
from hubfsm.hub.store import Source
from hubfsm.logs import get_logger

_log = get_logger("hubfsm.hub")

# -- the database ---------------------------------------------------------------------


class Database:
    """A pool of connections to the database at ``url``.

    Args:
        url: A libpq connection string or ``postgresql://`` URL.
        pool_size: Connections kept open (one per concurrent request is plenty).
        delete: Deletes an object of the object store, once the transaction that stopped
            pointing at it has committed (see :meth:`delete_after_commit`).
    """

    def __init__(self, url: str, *, pool_size: int, delete: Callable[[str], None]) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            # A connection is checked as it leaves the pool: after a restart of the
            # database, each one the pool held would otherwise fail one request with a 500.
            check=ConnectionPool.check_connection,
            open=True,
            name="hub",
        )
        self._local = threading.local()
        self._delete = delete

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one database transaction on one connection of this thread."""
        if getattr(self._local, "conn", None) is not None:
            yield  # nested: part of the outer transaction
            return
        after: list[str] = []
        with self._pool.connection() as conn:
            self._local.conn, self._local.after = conn, after
            try:
                with conn.transaction():
                    yield
            finally:
                self._local.conn = self._local.after = None
        # Objects no record points at any more, deleted once the swap is durable.
        for key in after:
            self._delete(key)

    def in_transaction(self) -> bool:
        """Whether this thread is inside :meth:`transaction`."""
        return getattr(self._local, "conn", None) is not None

    def delete_after_commit(self, keys: Iterable[str]) -> None:
        """Delete these objects once this thread's transaction commits (not if it rolls back)."""
        self._local.after.extend(keys)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """This thread's transaction's connection, or one of the pool's for one statement."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._pool.connection() as own:
            yield own

    def rows(
        self, sql: str, params: tuple[object, ...] | Mapping[str, object] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns (none for a statement without)."""
        with self.connection() as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def count(self, sql: str, params: tuple[object, ...]) -> int:
        """Run one statement; how many rows it changed."""
        with self.connection() as conn:
            return int(conn.execute(sql, params).rowcount)

    def claim(self, name: str) -> None:
        """Hold ``name`` until this transaction ends, once no other process's holds it."""
        self.rows("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()


# -- the object store -------------------------------------------------------------

#: Bytes per uploaded part (S3 takes 5 MiB to 5 GiB per part, up to 10,000 parts).
PART_SIZE = 8 << 20


def _read_full(source: IO[bytes], size: int) -> bytes:
    # A stream may return less than asked; a part must be full except the last.
    parts: list[bytes] = []
    left = size
    while left > 0:
        chunk = source.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class S3Objects:
    """A bucket and key prefix of an S3 object store, named by ``s3://bucket/prefix``.

    Args:
        url: ``s3://bucket`` or ``s3://bucket/prefix``.
        client: A boto3 S3 client; one made from the ``AWS_*`` variables when None.
    """

    def __init__(self, url: str, client: Any = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError("an object store URL looks like s3://bucket/prefix")
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._client = client if client is not None else _client()

    def __repr__(self) -> str:
        return f"S3Objects('s3://{self.bucket}/{self.prefix}')"

    def check(self) -> None:
        """Ask the store for one weight object: raises the store's error if it cannot answer.

        A wrong endpoint, credentials, bucket or permission shows here, once, not as a
        failed upload of every trainer.
        """
        self._client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}weights/", MaxKeys=1)

    def new_key(self) -> str:
        """A fresh object key, never used before (128 random bits)."""
        return f"{self.prefix}weights/{secrets.token_hex(16)}"

    def put(self, source: Source) -> tuple[str, str, int]:
        """Stream ``source`` to a new object: its ``(key, sha256, size)``."""
        key = self.new_key()
        if isinstance(source, bytes):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=source)
            return key, hashlib.sha256(source).hexdigest(), len(source)
        sha = hashlib.sha256()
        first = _read_full(source, PART_SIZE)
        sha.update(first)
        if len(first) < PART_SIZE:
            # Small files in one request: a multipart upload costs three.
            self._client.put_object(Bucket=self.bucket, Key=key, Body=first)
            return key, sha.hexdigest(), len(first)
        upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        done: list[dict[str, Any]] = []
        size = 0
        try:
            part = first
            while part:
                size += len(part)
                answer = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=len(done) + 1,
                    Body=part,
                )
                done.append({"PartNumber": len(done) + 1, "ETag": answer["ETag"]})
                part = _read_full(source, PART_SIZE)
                sha.update(part)
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
            )
        except BaseException:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise
        return key, sha.hexdigest(), size

    def open(self, key: str) -> IO[bytes] | None:
        """A stream of the object (the caller closes it), or None if it is gone."""
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key)
        except self._client.exceptions.NoSuchKey:
            return None
        return cast("IO[bytes]", answer["Body"])

    def delete(self, key: str) -> None:
        """Delete the object (nothing happens if it is gone already)."""
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def listing(self) -> list[tuple[str, float]]:
        """Every weight object under the prefix: ``(key, last modified in epoch seconds)``."""
        found: list[tuple[str, float]] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}weights/"
        )
        for page in pages:
            found.extend(
                (str(item["Key"]), item["LastModified"].timestamp())
                for item in page.get("Contents", ())
            )
        return found

    def sweep(self, known: set[str], cutoff: float) -> int:
        """Delete the weight objects not in ``known`` last changed before ``cutoff``; how many.

        Multipart uploads begun before ``cutoff`` and never completed are aborted too (and
        counted): their process died between two parts, and the store keeps the parts
        received until the upload is aborted.
        """
        swept = 0
        for key, modified in self.listing():
            if key not in known and modified < cutoff:
                self.delete(key)
                swept += 1
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}weights/"
        )
        for page in pages:
            for upload in page.get("Uploads", ()):
                if upload["Initiated"].timestamp() < cutoff:
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    swept += 1
        return swept

    def presign(self, key: str, ttl: float, name: str) -> str:
        """A URL that fetches the object without credentials for ``ttl`` seconds, as ``name``."""
        return str(
            self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{name}"',
                },
                ExpiresIn=max(1, int(ttl)),
            )
        )


def _client() -> Any:
    import boto3
    from botocore.config import Config

    # Path-style addressing for self-hosted stores (an address, not a bucket's DNS name).
    style = "path" if env.s3_endpoint() else "auto"
    region = env.s3_region()
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": style},
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", region_name=region, config=config)


# -- the sweep, on a schedule -----------------------------------------------------


class Sweeper:
    """Sweeps a team's object store on a schedule, one process of the team per round.

    Every process of a team hub runs one; the database gives each round to one of them
    (``claim``), so the team sweeps once per ``every`` seconds however many processes
    serve it. A look that cannot reach the database is logged and made again at the next;
    a sweep that fails once claimed is logged, and the team's next round comes ``every``
    seconds later.

    Args:
        claim: Claims a round, given ``every`` (``PostgresStore.claim_sweep``).
        sweep: Sweeps what is older than the seconds given; how many objects went
            (``PostgresStore.sweep_objects``).
        every: Seconds between the team's sweeps.
        older_than: What is younger is left: an upload under way is in no record yet.
    """

    def __init__(
        self,
        claim: Callable[[float], bool],
        sweep: Callable[[float], int],
        *,
        every: float,
        older_than: float,
    ) -> None:
        self.claim, self.sweep = claim, sweep
        self.every, self.older_than = every, older_than
        # How often a process looks whether a round is due: a process that starts or
        # stops does not shift the team's rounds by more than this.
        self.look = min(every, 600.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-sweeper", daemon=True)

    def start(self) -> None:
        """Look now, then every :attr:`look` seconds, until :meth:`stop`."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop looking; a round under way gets ``timeout`` seconds to end."""
        self._stop.set()
        if self._thread.is_alive():
            # A sweep of a large bucket may take long: the hub's stop does not wait for
            # it (objects it had not reached yet are deleted by the next round).
            self._thread.join(timeout)

    def round(self) -> int | None:
        """Sweep if this process has the team's round; how many objects went, else None."""
        try:
            if not self.claim(self.every):
                return None
            gone = self.sweep(self.older_than)
        except Exception as exc:  # the database or the store is away: the next look retries
            _log.warning("hub.sweep_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        _log.info("hub.swept", objects=gone, older_than_hours=round(self.older_than / 3600, 2))
        return gone

    def _run(self) -> None:
        while True:
            self.round()
            if self._stop.wait(self.look):
                return
