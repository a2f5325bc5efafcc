"""The local hub's web side: pages, the JSON they poll, static files, and weight downloads.

Pages and their data need no key, so they are answered to loopback clients only, and only
when the request names this machine in its ``Host``: a page of another site that its DNS
re-points at 127.0.0.1 (DNS rebinding) reaches the hub from the user's own browser, on
loopback, but names its own host. Weight files are served two ways: at
``/models/<id>/weights/<kind>.pt`` (loopback, the pages' download links) and at signed
``/files/<id>/<name>.pt`` URLs (anyone holding one, until it expires: these are the URLs
in model records, as the official client fetches them).

A run is renamed, tagged, noted or deleted from its page by a ``POST`` to
``/models/<id>/annotate`` or ``/models/<id>/delete``, under the pages' own rules and with
the hub's API key: :func:`page_actor` is the one check.
"""

from __future__ import annotations

import hmac
import urllib.parse
from importlib import resources
from typing import IO, Any

import attrs
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from hubfsm.hub import page, signin
from hubfsm.hub.calls import is_model_id
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import file_name, parse_name
from hubfsm.hub.parse import loads
from hubfsm.hub.store import WeightsKind
from hubfsm.hub.store_postgres import PostgresStore

_LOOPBACK = ("127.", "::1", "::ffff:127.")
#: The ``Host`` names the pages answer to, besides the hub's own (the port is not part
#: of the check: a rebinding page cannot choose the name, and a tunnel may change the port).
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_KINDS: tuple[WeightsKind, ...] = ("last", "best")
#: Runs on one page (and in one ``runs.json``); ``?after=<id>`` asks for the next.
PAGE_SIZE = 100
#: Seconds an object store's presigned link stays valid: it is followed at once (the
#: hub's own signed URL, checked before, is what lasts).
LINK_TTL = 300.0
_STATIC = {
    "uplot.iife.min.js": "text/javascript",
    "uplot.min.css": "text/css",
    "uplot.LICENSE": "text/plain",
    "hub.js": "text/javascript",
    "hub.css": "text/css",
}


dumps = page.dumps

#: What a run's page may do to it, by ``POST /models/<id>/<action>``.
ACTIONS = ("annotate", "delete")
#: The largest body of a page action (a name, tags and notes).
ACTION_BODY = 64 * 1024


def serve(
    hub: Hub, request: Request, environ: dict[str, Any], access: PageAccess | None = None
) -> Response:
    """Answer a request outside ``/v1``.

    Args:
        hub: The hub.
        request: The request.
        environ: Its WSGI environ.
        access: Who may see the pages; loopback browsers only, without a sign-in, when None.
    """
    parts = request.path.strip("/").split("/")
    action = request.method == "POST" and len(parts) == 3 and parts[2] in ACTIONS
    if request.method not in ("GET", "HEAD") and not (
        action or (request.method == "POST" and parts in (["signin"], ["signout"]))
    ):
        return Response(
            "only GET and HEAD here (and POST of a run's page actions)",
            status=405,
            headers={"Allow": "GET, HEAD"},
        )
    if len(parts) == 3 and parts[0] == "files":
        return _signed_file(hub, request, parts[1], parts[2])
    if access is not None and access.sign_in:
        found = _signed_in(hub, request, parts, access)
        if isinstance(found, Response):
            return found
        viewer = found
    else:
        refused = _loopback_only(hub, request, environ)
        if refused is not None:
            return refused
        if parts in (["signin"], ["signout"]):
            # Nobody signs in where the pages need no sign-in.
            return _redirect("/")
        viewer = signin.LOOPBACK_VIEWER
    if action:
        return _act(hub, request, environ, parts[1], parts[2])
    if parts == [""]:
        rows, following = runs(hub, viewer, request.args.get("after"))
        text = page.render_index(rows, hub.clock(), hub.public_root)
        return _html(text, bar=_bar(viewer, access), more=_next_link(following))
    if parts == ["favicon.ico"]:
        return Response(status=204)
    if parts == ["runs.json"]:
        rows, following = runs(hub, viewer, request.args.get("after"))
        later = None if following is None else f"/runs.json?after={following}"
        return _json({"now": hub.clock(), "runs": rows, "next": later})
    if len(parts) == 2 and parts[0] == "static" and parts[1] in _STATIC:
        return _static(parts[1])
    if len(parts) < 2 or parts[0] != "models" or not is_model_id(parts[1]):
        return _html(page.render_missing(request.path), 404)
    model_id = parts[1]
    stored = hub.store.get_model(model_id)
    # Another key's model is as missing as one that never was: its id tells nothing.
    data = model_data(hub, model_id) if stored and viewer.sees(stored.owner) else None
    if data is None:
        return _html(page.render_missing(model_id), 404)
    if len(parts) == 2:
        return _html(page.render_model(data), bar=_bar(viewer, access))
    if parts[2:] == ["data.json"]:
        return _json(data)
    if parts[2:] in (["metrics.csv"], ["metrics.json"]):
        return _metrics_file(data, parts[2])
    if len(parts) == 4 and parts[2] == "weights" and parts[3].removesuffix(".pt") in _KINDS:
        kind: WeightsKind = "last" if parts[3].startswith("last") else "best"
        return _weights(hub, request, model_id, kind, page.download_name(data["record"], kind))
    return _html(page.render_missing(request.path), 404)


@attrs.frozen
class PageAccess:
    """Who may see the pages.

    Attributes:
        sessions: Issues and checks the sign-in cookies.
        sign_in: Every browser signs in with an API key (a hub served to a network, or
            behind a proxy); False keeps the pages to loopback browsers, without a sign-in.
    """

    sessions: signin.Sessions
    sign_in: bool


def _loopback_only(hub: Hub, request: Request, environ: dict[str, Any]) -> Response | None:
    """Why a page request is refused on a hub whose pages need no sign-in, or None."""
    if not (request.remote_addr or "").startswith(_LOOPBACK):
        return Response("the hub's pages are for loopback clients only", status=403)
    if not host_allowed(environ.get("HTTP_HOST"), hub.public_root):
        return Response(
            "the hub's pages answer only to the Host localhost, 127.0.0.1, [::1] or its own "
            "address; open them through one of those",
            status=403,
            mimetype="text/plain",
        )
    return None


def _signed_in(
    hub: Hub, request: Request, parts: list[str], access: PageAccess
) -> signin.Viewer | Response:
    """The signed-in viewer of a request, or the answer to it (sign-in and -out, refusals).

    The ``Host`` check of the loopback pages is not needed here: a page of another site,
    even one that its DNS points at the hub, has no session cookie of the hub's.
    """
    sessions = access.sessions
    secure = signin.is_https(request)
    if request.method == "POST" and not signin.same_origin(request):
        return Response("a post must come from the hub's own pages", status=403)
    if parts == ["signin"]:
        if request.method != "POST":
            return _html(signin.signin_page())
        key = request.form.get("key", "").strip()
        principal = hub.principal(key)
        if principal is None:
            return _html(signin.signin_page("That key is not valid (or was revoked)."), 401)
        response = _redirect("/")
        signin.set_cookie(response, sessions.issue(principal), int(sessions.ttl), secure)
        return response
    if len(parts) == 2 and parts[0] == "static" and parts[1] in _STATIC:
        return _static(parts[1])  # the sign-in page's style sheet
    cookie = request.cookies.get(signin.COOKIE)
    viewer = signin.viewer_of(sessions, cookie, hub.list_keys())
    if parts == ["signout"]:
        if viewer is not None and not _csrf_ok(request, access, viewer):
            return Response("the form's CSRF token does not match the session", status=403)
        response = _redirect("/signin")
        signin.set_cookie(response, "", 0, secure)
        return response
    if viewer is None:
        if parts == ["runs.json"] or parts[-1:] == ["data.json"]:
            return Response("sign in first", status=401, mimetype="text/plain")
        return _redirect("/signin")
    return viewer


def _csrf_ok(request: Request, access: PageAccess, viewer: signin.Viewer) -> bool:
    given = request.form.get(signin.CSRF_FIELD, "")
    expected = access.sessions.csrf(viewer.cookie)
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _bar(viewer: signin.Viewer, access: PageAccess | None) -> str:
    if access is None or viewer.key_id is None:
        return ""
    return signin.session_bar(viewer, access.sessions.csrf(viewer.cookie))


def _redirect(where: str) -> Response:
    response = Response(status=303, headers={"Location": where})
    response.headers["Cache-Control"] = "no-store"
    return response


def page_actor(hub: Hub, request: Request, environ: dict[str, Any]) -> str | Response:
    """Who changes a run from a page (a key's id), or the answer that refuses the change.

    The one check of every page action (the pages' own loopback and ``Host`` rules have
    passed already):

    - A browser's request must come from this hub's pages: its ``Origin`` names the host
      it was sent to, and ``Sec-Fetch-Site``, when sent, says ``same-origin``. Another site
      open in the same browser cannot act (and its script cannot set the key header on a
      request here without a preflight the hub never answers).
    - The hub's API key in ``x-api-key`` says who acts: the run page sends the one its
      user typed, a script sends its own. Reading needs no key; changing does, since any
      local account reaches loopback.
    """
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, environ.get("HTTP_HOST")):
        return _text("a run is changed from this hub's own pages only", 403)
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin"):
        return _text("a run is changed from this hub's own pages only", 403)
    who = hub.principal(request.headers.get("x-api-key"))
    if who is None:
        return _text("changing a run needs the hub's API key (x-api-key), a valid one", 401)
    return who


def same_origin(origin: str, host: str | None) -> bool:
    """True when an ``Origin`` header is the origin of the ``Host`` a request was sent to."""
    try:
        parts = urllib.parse.urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and parts.netloc == host


def _act(
    hub: Hub, request: Request, environ: dict[str, Any], model_id: str, action: str
) -> Response:
    """A page action on a run: rename, tag and note it (``annotate``), or ``delete`` it."""
    who = page_actor(hub, request, environ)
    if isinstance(who, Response):
        return who
    if not is_model_id(model_id):
        return _text(f"no model {model_id[:40]}", 404)
    if action == "delete":
        if not hub.remove(model_id, who):
            return _text(f"no model {model_id}", 404)
        return _json({"deleted": model_id})
    length = request.content_length
    if length is None or length > ACTION_BODY:
        return _text(f"send a JSON object of at most {ACTION_BODY} bytes", 413)
    if request.mimetype != "application/json":
        return _text("send the changes as application/json", 415)
    try:
        changes = loads(request.get_data(cache=False))
        if not isinstance(changes, dict):
            raise ValueError("send a JSON object of name, tags and notes")
        record = hub.annotate(model_id, who, changes)
    except ValueError as error:
        return _text(str(error), 400)
    if record is None:
        return _text(f"no model {model_id}", 404)
    return _json(record)


def _text(message: str, status: int) -> Response:
    return Response(message, status=status, mimetype="text/plain")


def host_allowed(host: str | None, public_root: str) -> bool:
    """True when a ``Host`` header names this machine: a loopback name or the hub's own.

    Args:
        host: The header's value (``name`` or ``name:port``), or None without one: a
            browser always sends one, so only other clients omit it.
        public_root: The hub's own address, such as ``http://127.0.0.1:8000``.
    """
    if host is None:
        return True
    try:
        name = urllib.parse.urlsplit(f"//{host}").hostname
    except ValueError:  # an unclosed IPv6 bracket, say
        return False
    if not name:
        return False
    name = name.rstrip(".")
    if name in _LOOPBACK_NAMES:
        return True
    own = urllib.parse.urlsplit(public_root).hostname
    return own is not None and name == own.rstrip(".")


def runs(
    hub: Hub,
    viewer: signin.Viewer = signin.LOOPBACK_VIEWER,
    after: str | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the models the viewer sees, newest first, with progress and best metric.

    Args:
        hub: The hub.
        viewer: Whose models; an admin (or the loopback user) sees all.
        after: The id of the last model of the page before (``?after=``); the first page
            when None, unknown or not the viewer's.
        limit: Models per page; :data:`PAGE_SIZE` when None.

    Returns:
        The page's rows and the id to ask the next page after (None on the last page).
    """
    limit = limit if limit is not None else PAGE_SIZE
    owner = None if viewer.admin else viewer.key_id or ""
    before = None
    if after is not None and is_model_id(after):
        last = hub.store.get_model(after)
        if last is not None and viewer.sees(last.owner):
            before = (last.created_at, last.id)
    # One more than shown: whether a next page exists costs no second query.
    found = hub.store.page_models(limit + 1, before, owner)
    out = []
    for record in (hub.view(each) for each in found[:limit]):
        summary = page.summarize(record, hub.metrics(record["id"]), hub.clock(), _stall(hub))
        out.append({"record": record, "summary": summary})
    return out, found[limit - 1].id if len(found) > limit else None


def model_data(hub: Hub, model_id: str) -> dict[str, Any] | None:
    """What a model's page shows: record, metrics, weight files and a summary."""
    record = hub.record(model_id)
    if record is None:
        return None
    metrics = hub.metrics(model_id)
    weights = []
    for kind in _KINDS:
        info = hub.weights_info(model_id, kind)
        if info is not None:
            epoch = record["checkpoint_epoch"] if kind == "last" else record["final_epoch"]
            weights.append(
                {
                    "kind": kind,
                    "file": file_name(kind, epoch),
                    "epoch": epoch,
                    "size": info.size,
                    "sha256": info.sha256,
                    "href": f"/models/{model_id}/weights/{kind}.pt",
                    "download": page.download_name(record, kind),
                }
            )
    return {
        "record": record,
        "metrics": metrics,
        "since_start": since_start(record, metrics, hub.metric_times(model_id)),
        "weights": weights,
        "summary": page.summarize(record, metrics, hub.clock(), _stall(hub)),
        "console": hub.console(model_id),
    }


def since_start(
    record: dict[str, Any], metrics: list[dict[str, Any]], times: dict[int, float]
) -> list[float | None]:
    """Seconds from the run's start to each epoch's arrival (None where not noted).

    The start is the run's first sign (metrics, checkpoint or heartbeat), else its first
    epoch's arrival; epochs kept before the hub noted times have none.
    """
    start = page.seconds_of(record.get("started_at"))
    if start is None and times:
        start = min(times.values())
    out: list[float | None] = []
    for row in metrics:
        at = times.get(row["epoch"])
        out.append(None if at is None or start is None else round(max(0.0, at - start), 3))
    return out


def _stall(hub: Hub) -> float:
    return page.STALL_BEATS * hub.heartbeat_interval


def _metrics_file(data: dict[str, Any], name: str) -> Response:
    """A run's metrics as a download named after the run: CSV (a row per epoch) or JSON."""
    stem = f"{page.run_stem(data['record'])}-metrics"
    if name.endswith(".csv"):
        response = Response(page.metrics_csv(data["metrics"]), mimetype="text/csv")
    else:
        response = _json(data["metrics"])
    response.headers["Content-Disposition"] = f'attachment; filename="{stem}.{name[8:]}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _signed_file(hub: Hub, request: Request, model_id: str, name: str) -> Response:
    parsed = parse_name(name)
    if not is_model_id(model_id) or parsed is None:
        return Response("no such file", status=404, mimetype="text/plain")
    problem = hub.signer.check(request.path, request.args) if hub.signer is not None else None
    if problem is not None:
        return Response(problem, status=403, mimetype="text/plain")
    kind, epoch = parsed
    record = hub.record(model_id)
    if record is None:
        return Response("no such file", status=404, mimetype="text/plain")
    if kind == "last" and epoch != record["checkpoint_epoch"]:
        # The checkpoint of that epoch was replaced by a later one; the record names it.
        return Response("a later checkpoint replaced this one", status=404, mimetype="text/plain")
    return _weights(hub, request, model_id, "last" if kind == "last" else "best", name)


def _weights(hub: Hub, request: Request, model_id: str, kind: WeightsKind, name: str) -> Response:
    if isinstance(hub.store, PostgresStore):
        return _linked(hub.store, request, model_id, kind, name)
    found = hub.weights(model_id, kind)
    if found is None:
        return Response(f"{model_id} has no {kind}.pt", status=404, mimetype="text/plain")
    info, content = found
    return file_response(content, info.size, info.sha256, name, request)


def _linked(
    store: PostgresStore, request: Request, model_id: str, kind: WeightsKind, name: str
) -> Response:
    """Send the client to the object store itself: the file's bytes never pass the hub."""
    if request.method == "HEAD":
        info = store.weights_info(model_id, kind)
        if info is None:
            return Response(f"{model_id} has no {kind}.pt", status=404, mimetype="text/plain")
        return file_response(b"", info.size, info.sha256, name, request)
    found = store.weights_link(model_id, kind, LINK_TTL, name)
    if found is None:
        return Response(f"{model_id} has no {kind}.pt", status=404, mimetype="text/plain")
    info, url = found
    response = Response(status=302, headers={"Location": url})
    # The digest comes from the record, so a client can check what the store sends.
    response.headers["X-Checksum-Sha256"] = info.sha256
    response.headers["ETag"] = f'"{info.sha256}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def file_response(
    content: bytes | IO[bytes], size: int, sha256: str, name: str, request: Request
) -> Response:
    """A weight file as a download; HEAD gets the headers only."""
    if request.method == "HEAD":
        if not isinstance(content, bytes):
            content.close()
        response = Response(b"", mimetype="application/octet-stream")
    else:
        body = content if isinstance(content, bytes) else wrap_file(request.environ, content)
        response = Response(body, mimetype="application/octet-stream", direct_passthrough=True)
    response.content_length = size
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["X-Checksum-Sha256"] = sha256
    response.headers["ETag"] = f'"{sha256}"'
    return response


def _static(name: str) -> Response:
    data = resources.files("hubfsm.hub").joinpath("static").joinpath(name).read_bytes()
    response = Response(data, mimetype=_STATIC[name])
    response.headers["Cache-Control"] = "max-age=3600"
    return response


def _next_link(following: str | None) -> str:
    if following is None:
        return ""
    return f'<nav class="more"><a rel="next" href="/?after={following}">Older runs</a></nav>'


def _html(text: str, status: int = 200, bar: str = "", more: str = "") -> Response:
    # The session bar and the next page's link belong to the request, not to the page:
    # added after rendering.
    if bar:
        text = text.replace("<body>", f"<body>{bar}", 1)
    if more:
        text = text.replace("</main>", f"{more}</main>", 1)
    # Text from old data may hold lone surrogates: shown escaped, never a 500.
    data = text.encode("utf-8", "backslashreplace")
    return Response(data, status=status, mimetype="text/html")


def _json(value: object) -> Response:
    data = dumps(value).encode("utf-8", "backslashreplace")
    response = Response(data, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response
