"""Whole sessions over real loopback sockets: a served hub, faults, restarts, silence, garbage.

Each test starts its own hub on 127.0.0.1 (a free port, a temporary data directory) and
stops it; limits and retries are scaled down so a session takes about a second.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request

import hubfsm
from hubfsm.hub.app import HubApp
from hubfsm.hub.domain import Hub
from hubfsm.hub.server import LocalHub
from hubfsm.hub.store import MemoryStore
from tests.support import KEY
from transports.faults import FaultMix
from transports.http import RequestsTransport

pytestmark = pytest.mark.slow  # real servers end to end


def test_a_session_against_a_served_hub_subprocess(
    serve_hub: Callable[..., Any], kit: Any, tmp_path: Path
) -> None:
    served = serve_hub(tmp_path / "data")
    assert f"Local hub serving at {served.url}" in served.banner

    run = kit.train(served.url, served.key, tmp_path / "work", epochs=6)

    kit.check_on_hub(served.url, served.key, run)
    assert run.session.stats()["epochs_acknowledged"] == 6
    code, _ = served.spawned.stop(signal.SIGINT)  # raises if it had to be killed
    assert code == 0
    assert "Stopping." in served.spawned.stdout


def test_a_session_against_an_in_process_hub(hub: LocalHub, kit: Any, tmp_path: Path) -> None:
    def checkpoint_landed(epoch: int, session: hubfsm.Session) -> None:
        # On a busy machine the final weights could supersede every checkpoint still
        # queued; the last epoch waits for one to land instead of hoping it did.
        if epoch == 7:
            kit.eventually(
                lambda: any(u.type == "epoch" for u in hub.hub.audit().uploads),
                10.0,
                "a checkpoint on the hub",
            )

    run = kit.train(hub.url, hub.api_key, tmp_path / "work", epochs=8, during=checkpoint_landed)

    kit.check_on_hub(hub.url, hub.api_key, run)
    audit = hub.hub.audit()
    kit.check_applied_once([audit], run)
    assert any(u.type == "epoch" for u in audit.uploads), "no checkpoint went up"
    assert audit.heartbeats.get(run.model_id), "no heartbeat arrived"
    stats = run.session.stats()
    assert stats["epochs_acknowledged"] == 8 and stats["retries"] == 0
    assert run.session.pending() == {"metrics": 0, "checkpoint": 0, "final": 0}
    assert audit.replayed == {}, "a clean session sends nothing twice"


# Seed 88 draws, for the first four requests: a lost answer (the model is created but the
# client never hears it), a 429 with Retry-After, then two clean answers. Later draws
# land on whichever request comes next, so they vary with timing; the checks allow that.
FAULTS = FaultMix(
    server_error=0.15,
    rate_limited=0.05,
    connection_error=0.05,
    lost_response=0.15,
    retry_after=(1.0, 1.0),
)
FAULT_SEED = 88


def test_everything_arrives_once_through_server_faults(
    hubs: Callable[..., LocalHub], kit: Any, tmp_path: Path, leaks: Any
) -> None:
    local = hubs(tmp_path / "hub", faults=FAULTS, seed=FAULT_SEED)

    run = kit.train(local.url, local.api_key, tmp_path / "work", epochs=10)
    # What the session sent; the reads below retry a 429 at once (they are the test's).
    by_session = len(leaks.of("hub.request"))

    kit.check_on_hub(local.url, local.api_key, run)
    audit = local.hub.audit()
    kit.check_applied_once([audit], run)

    served = leaks.of("hub.request")
    faults = Counter(e["fault"] for e in served)
    assert faults["lost_response"] >= 1 and faults["rate_limited"] >= 1, faults
    # The create request's answer was lost (seed 88), so its retry must be a replay.
    assert audit.replayed.get("create_model", 0) >= 1
    assert len(local.hub.models()) == 1
    # Every keyed request whose answer was lost is retried under its key, so the hub
    # replays it rather than applying it again. (A lost epoch checkpoint may instead be
    # superseded by the final weights, so uploads are not counted here.)
    lost = Counter(
        _endpoint(e) for e in served if e["fault"] == "lost_response" and e["method"] == "POST"
    )
    for endpoint in ("create_model", "upload_metrics"):
        assert audit.replayed.get(endpoint, 0) >= lost[endpoint], (endpoint, lost, audit)

    # A 429 says "Retry-After: 1": the same request does not come back any sooner.
    # (Uploads are left out: epoch and final weights share a path, and the final upload
    # may follow a refused checkpoint that it superseded.)
    for i, event in enumerate(served[:by_session]):
        if event["status"] != 429 or event["path"].endswith("/upload"):
            continue
        later = [
            e
            for e in served[i + 1 : by_session]
            if (e["method"], e["path"]) == (event["method"], event["path"])
        ]
        if later:
            assert later[0]["t"] - event["t"] >= 0.95, (event, later[0])
    refused = [e for e in leaks.of("request.failed") if e.get("status") == 429]
    assert refused and all(e["retry_after"] == 1.0 for e in refused)
    dropped = [e for e in leaks.of("request.failed") if e.get("kind") == "connect"]
    assert dropped, "a lost answer should look like a dropped connection to the client"
    assert run.session.stats()["retries"] >= 2


def _endpoint(event: dict[str, Any]) -> str:
    path = event["path"]
    if path == "/v1/models":
        return "create_model"
    if path.endswith("/upload"):
        return "upload_weights"
    if "/heartbeat/" in path:
        return "heartbeat"
    return "upload_metrics" if event["method"] == "POST" else "get_model"


def test_a_hub_restarted_mid_training_gets_everything(
    hubs: Callable[..., LocalHub], kit: Any, tmp_path: Path, leaks: Any
) -> None:
    data_dir = tmp_path / "hub"
    first = hubs(data_dir)
    port = first.port
    audits = []
    marks: dict[str, int] = {}

    def failures() -> list[dict[str, Any]]:
        return [e for e in leaks.of("request.failed") if e.get("kind") == "refused"]

    def disturb(epoch: int, session: hubfsm.Session) -> None:
        if epoch == 3:
            kit.eventually(
                lambda: (
                    len(first.hub.metrics(session.model_id)) == 3
                    and session.pending()["metrics"] == 0
                ),
                5.0,
                "epochs 0-2 acknowledged",
            )
            audits.append(first.hub.audit())
            first.stop()
            marks["down"] = len(failures())
        elif epoch == 6:
            # Training went on while the hub was down; the session kept failing to connect.
            kit.eventually(lambda: len(failures()) >= marks["down"] + 3, 5.0, "connection failures")
            assert session.pending()["metrics"] >= 1
            marks["restarted"] = 1
            second = hubs(data_dir, port=port)
            assert second.url == first.url and second.api_key == first.api_key
            audits.append(second)

    run = kit.train(first.url, first.api_key, tmp_path / "work", epochs=9, during=disturb)

    assert marks.get("restarted") == 1
    second = audits.pop()
    audits.append(second.hub.audit())
    kit.check_on_hub(second.url, second.api_key, run)
    kit.check_applied_once(audits, run)


@pytest.fixture
def silent_port() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, name="silent-server", daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    done.set()
    thread.join(2)
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_hub_that_never_answers_fails_the_open_in_time(
    silent_port: tuple[int, list[socket.socket]], kit: Any, leaks: Any
) -> None:
    port, accepted = silent_port
    key = leaks.watch(KEY)
    transport = RequestsTransport(
        key, api_root=f"http://127.0.0.1:{port}", connect_timeout=0.5, read_timeout=0.5
    )
    leaks.check(repr(transport), "transport repr")
    before = kit.worker_threads()
    open_timeout = 1.5
    started = time.monotonic()
    with pytest.raises(hubfsm.HubUnavailableError) as caught:
        hubfsm.Session(
            f"{key}_{'m' * 20}", transport=transport, config=kit.FAST, open_timeout=open_timeout
        )
    took = time.monotonic() - started
    leaks.check(caught.value, "exception")

    # It waited out open_timeout (and says so), retrying meanwhile.
    assert took >= open_timeout
    assert "1.5s" in str(caught.value) and "timeout" in str(caught.value)
    assert len(accepted) >= 2, "the open was retried"
    # The worker is gone once its last request's read timeout has passed.
    kit.eventually(
        lambda: not (kit.worker_threads() - before), 0.5 + 0.5, "the session's worker to end"
    )
    transport.close()


class GarblingProxy:
    """WSGI middleware that applies requests on a real hub but mangles some 200 answers.

    The first three metrics posts get a 200 with an HTML page, an empty body and a
    truncated JSON object; every weights upload's first answer (per idempotency key) is
    an HTML page. The hub has applied each of them, so the retries must be replays.
    """

    GARBAGE = [
        ("text/html; charset=utf-8", b"<html><body><h1>Welcome to nginx!</h1></body></html>"),
        ("application/json", b""),
        ("application/json", b'{"success": true, "message": "metrics sa'),
    ]

    def __init__(self, app: HubApp) -> None:
        self.app = app
        self.metrics_left = list(self.GARBAGE)
        self.uploads_seen: set[str] = set()
        self.garbled: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        garbage = None
        with self.lock:
            parts = request.path.strip("/").split("/")
            if request.method == "POST" and len(parts) == 3 and parts[1] == "models":
                if self.metrics_left:
                    garbage = self.metrics_left.pop(0)
            elif request.method == "POST" and request.path.endswith("/upload"):
                key = request.headers.get("Idempotency-Key", "")
                if key not in self.uploads_seen:
                    self.uploads_seen.add(key)
                    garbage = self.GARBAGE[0]
        if garbage is None:
            return self.app(environ, start_response)
        # Let the hub apply the request, then throw its answer away.
        statuses: list[str] = []
        answer = self.app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(answer)
        close = getattr(answer, "close", None)
        if close is not None:
            close()
        assert statuses and statuses[0].startswith("200"), statuses
        self.garbled.append(request.path)
        content_type, body = garbage
        start_response(
            "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        )
        return [body]


@pytest.fixture
def garbling_hub(leaks: Any) -> Iterator[tuple[str, Hub, GarblingProxy]]:
    hub = Hub(MemoryStore(), keys=[leaks.watch(KEY)])
    proxy = GarblingProxy(HubApp(hub))
    server = make_server("127.0.0.1", 0, proxy, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hub, proxy
    server.shutdown()
    thread.join(5)
    server.server_close()


def test_malformed_answers_are_retried_and_everything_arrives(
    garbling_hub: tuple[str, Hub, GarblingProxy], kit: Any, tmp_path: Path, leaks: Any
) -> None:
    url, hub, proxy = garbling_hub

    run = kit.train(url, KEY, tmp_path / "work", epochs=6, parts=True)

    assert run.parts is not None and not run.parts.driver.errors
    kit.check_on_hub(url, KEY, run)
    audit = hub.audit()
    kit.check_applied_once([audit], run)
    assert proxy.metrics_left == [], "every kind of garbage was served"
    # Three garbled answers to one metrics post: the hub applied it once and replayed it
    # to each of the three retries.
    assert audit.replayed.get("upload_metrics") == 3
    assert audit.replayed.get("upload_weights", 0) >= 1  # at least the final upload's
    protocol = [e for e in leaks.of("request.failed") if e.get("kind") == "protocol"]
    assert len(protocol) >= 4
    reasons = " | ".join(e["error"] for e in protocol)
    for what in ("an empty body", "invalid JSON", "text/html"):
        assert what in reasons
    assert not leaks.of("session.event_failed")


def test_the_served_hub_records_survive_its_restart(
    serve_hub: Callable[..., Any], kit: Any, tmp_path: Path
) -> None:
    """What a session sent to a served hub is still there after the hub process restarts."""
    data_dir = tmp_path / "data"
    served = serve_hub(data_dir)
    run = kit.train(served.url, served.key, tmp_path / "work", epochs=3)
    code, _ = served.spawned.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM)

    again = serve_hub(data_dir)
    assert again.key == served.key
    kit.check_on_hub(again.url, again.key, run)
    again.spawned.stop(signal.SIGINT)


def test_nothing_in_a_session_shows_the_key(
    hub: LocalHub, kit: Any, tmp_path: Path, leaks: Any
) -> None:
    run = kit.train(hub.url, hub.api_key, tmp_path / "work", epochs=2, parts=True)
    session, parts = run.session, run.parts
    assert parts is not None
    for text in (
        repr(session),
        str(session),
        repr(parts.core),
        repr(parts.driver.transport),
        json.dumps(session.stats()),
        repr(vars(parts.driver.transport)),
    ):
        leaks.check(text, "repr")


def test_a_hub_down_at_finish_gets_the_final_weights_when_it_returns(
    hubs: Callable[..., LocalHub], kit: Any, tmp_path: Path, leaks: Any
) -> None:
    data_dir = tmp_path / "hub"
    first = hubs(data_dir)
    restarters: list[threading.Thread] = []
    restarted: list[LocalHub] = []

    down_at: list[int] = []

    def finishing_on_a_hub_down() -> bool:
        """finish() was called after the hub went down, and a request failed since."""
        since = list(leaks.events)[down_at[0] :]
        names = [e.get("event") for e in since]
        finishing = [
            i for i, e in enumerate(since)
            if e.get("event") == "session.transition" and e.get("dest") == "final_uploading"
        ]
        return bool(finishing) and "request.failed" in names[finishing[0] :]

    def restart_once_finishing() -> None:
        kit.eventually(finishing_on_a_hub_down, 20.0, "finish() met the hub down")
        restarted.append(hubs(data_dir, port=first.port))

    def down_before_finish(epoch: int, session: hubfsm.Session) -> None:
        if epoch == 3:
            down_at.append(len(leaks.events))
            first.stop()
            # finish() is called while the hub is down; it comes back once that is seen.
            restarter = threading.Thread(target=restart_once_finishing, daemon=True)
            restarters.append(restarter)
            restarter.start()

    try:
        run = kit.train(
            first.url, first.api_key, tmp_path / "work", epochs=4, during=down_before_finish
        )
    finally:
        for restarter in restarters:
            restarter.join(25)
    assert restarted and finishing_on_a_hub_down()
    kit.check_on_hub(restarted[0].url, restarted[0].api_key, run)


def test_finish_against_a_hub_gone_silent_gives_up_in_time(
    hub: LocalHub, kit: Any, tmp_path: Path, leaks: Any
) -> None:
    """The hub stops answering (but keeps accepting) just before finish: bounded waits."""
    key = hub.api_key
    transport = RequestsTransport(key, api_root=hub.url, connect_timeout=0.5, read_timeout=0.5)
    arch = tmp_path / "tiny-net.yaml"
    arch.write_text("nc: 1\n")
    best = tmp_path / "best.pt"
    best.write_bytes(b"final weights" * 1000)
    before = kit.worker_threads()
    session = hubfsm.Session(str(arch), transport=transport, config=kit.FAST, open_timeout=10)
    session.start()
    session.log_metrics({"loss": 1.0})
    kit.eventually(
        lambda: len(hub.hub.metrics(session.model_id)) == 1 and not session.pending()["metrics"],
        5.0,
        "epoch 0 acknowledged",
    )

    port = hub.port
    hub.stop()
    silent = socket.create_server(("127.0.0.1", port))  # accepts into the backlog, never answers
    try:
        session.log_metrics({"loss": 0.5})
        started = time.monotonic()
        with pytest.raises(hubfsm.DeliveryIncomplete) as caught:
            session.finish(best, map50_95=0.5, timeout=1.5)
        took = time.monotonic() - started
        leaks.check(caught.value, "exception")
        assert took >= 1.5, "finish gave up before its timeout"
        assert session.state == "resumable"
        assert session.pending()["final"] == 1 and session.pending()["metrics"] == 1
        session.close(timeout=0.5)
        kit.eventually(lambda: not (kit.worker_threads() - before), 1.0, "the worker to end")
    finally:
        session.close(timeout=0.0)
        silent.close()
        transport.close()


@pytest.mark.parametrize("problem", ["wrong key", "no such model", "already trained"])
def test_refusals_over_http_are_clear_and_keyless(
    problem: str, hub: LocalHub, kit: Any, tmp_path: Path, leaks: Any
) -> None:
    wrong = leaks.watch("W0" * 21)
    key = hub.api_key
    model = "N" * 20
    expected: type[Exception] = hubfsm.ModelNotFoundError
    if problem == "wrong key":
        key, expected = wrong, hubfsm.AuthError
    elif problem == "already trained":
        model = kit.train(hub.url, hub.api_key, tmp_path / "work", epochs=1).model_id
        expected = hubfsm.ModelTrainedError
    before = Counter(hub.hub.audit().requests)
    with pytest.raises(expected) as caught:
        hubfsm.Session(model, api_key=key, api_root=hub.url, config=kit.FAST, open_timeout=10)
    sent = Counter(hub.hub.audit().requests) - before
    assert sent and max(sent.values()) == 1, f"a refusal is not retried: {sent}"
    leaks.check(caught.value, "exception")
    assert model in str(caught.value) or problem == "wrong key"


def test_pending_counts_an_epoch_the_moment_it_is_logged(
    hub: LocalHub, kit: Any, tmp_path: Path, leaks: Any
) -> None:
    """``pending()`` is what the hub has not acknowledged: a just-logged epoch is in it,
    even while the worker is busy with a request to a hub that does not answer."""
    transport = RequestsTransport(
        hub.api_key, api_root=hub.url, connect_timeout=0.5, read_timeout=1.0
    )
    arch = tmp_path / "tiny-net.yaml"
    arch.write_text("nc: 1\n")
    session = hubfsm.Session(str(arch), transport=transport, config=kit.FAST, open_timeout=10)
    port = hub.port
    silent = waiting = None
    try:
        session.start()
        hub.stop()
        silent = socket.create_server(("127.0.0.1", port))  # never answers
        silent.settimeout(10.0)
        # A heartbeat is due every 0.3 s: once its connection comes in, the worker is
        # waiting on an answer that will not come.
        waiting, _ = silent.accept()
        session.log_metrics({"loss": 1.0}, epoch=0)
        assert session.pending()["metrics"] == 1
    finally:
        session.close(timeout=0.0)
        if waiting is not None:
            waiting.close()
        if silent is not None:
            silent.close()
        transport.close()


class RateLimitedHeartbeats:
    """WSGI middleware: heartbeats get a 429 with ``Retry-After: 2``; the rest goes through."""

    def __init__(self, app: HubApp) -> None:
        self.app = app
        self.heartbeats: list[float] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if "/v1/agent/heartbeat/" not in environ.get("PATH_INFO", ""):
            return self.app(environ, start_response)
        self.heartbeats.append(time.monotonic())
        body = b'{"success": false, "message": "slow down", "data": {}}'
        start_response(
            "429 Too Many Requests",
            [("Content-Type", "application/json"), ("Retry-After", "2")],
        )
        return [body]


def test_a_heartbeat_given_up_on_a_429_waits_out_its_retry_after(
    leaks: Any, kit: Any, tmp_path: Path
) -> None:
    """Retry-After is the floor of the next wait, also when the policy gives up at once.

    The heartbeat policy here honours at most 1 s of Retry-After (as the default one
    honours at most 300 s), so a "Retry-After: 2" counts as 1 s, which is past the
    policy's 0.5 s deadline: it gives up. The next heartbeat must still not come within
    that 1 s, as the data channels' parked operations don't.
    """
    hub = Hub(MemoryStore(), keys=[leaks.watch(KEY)])
    limited = RateLimitedHeartbeats(HubApp(hub))
    server = make_server("127.0.0.1", 0, limited, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    heartbeat_policy = hubfsm.core.config.RetryPolicy(
        base=0.02, cap=0.1, max_attempts=3, deadline=0.5, max_retry_after=1.0
    )
    config = hubfsm.core.config.CoreConfig(
        limits=kit.FAST.limits,
        policies=hubfsm.core.config.ChannelPolicies(
            control=kit.FAST_POLICY,
            metrics=kit.FAST_POLICY,
            heartbeat=heartbeat_policy,
            checkpoint=kit.FAST_POLICY,
            final=kit.FAST_POLICY,
        ),
    )
    arch = tmp_path / "tiny-net.yaml"
    arch.write_text("nc: 1\n")
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        session = hubfsm.Session(
            str(arch), api_key=KEY, api_root=url, config=config, open_timeout=10
        )
        try:
            session.start()
            # Two heartbeats make one gap to check: the second comes after the 429's 1 s.
            kit.eventually(lambda: len(limited.heartbeats) >= 2, 10.0, "a second heartbeat")
        finally:
            session.close(timeout=0.5)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
    beats = limited.heartbeats
    assert len(beats) >= 2
    gaps = [round(b - a, 2) for a, b in zip(beats, beats[1:], strict=False)]
    assert all(gap >= 0.95 for gap in gaps), f"heartbeats {gaps} s apart after 'Retry-After: 2'"
