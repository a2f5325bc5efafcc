"""The local hub's web side: pages, the JSON they poll, static files, and weight downloads.

Who may see them is :mod:`hubfsm.hub.access`'s to say. Weight files are served two ways: at
``/models/<id>/weights/<kind>.pt`` (loopback, the pages' download links) and at signed
``/files/<id>/<name>.pt`` URLs (anyone holding one, until it expires: these are the URLs
in model records, as the official client fetches them), by :mod:`hubfsm.hub.downloads`.

A run is renamed, tagged, noted or deleted from its page by a ``POST`` to
``/models/<id>/annotate`` or ``/models/<id>/delete``, under the pages' own rules and with
the hub's API key: :func:`~hubfsm.hub.access.page_actor` is the one check.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from werkzeug.wrappers import Request, Response

from hubfsm.hub import downloads, page, summary
from hubfsm.hub.access import (
    COOKIE,
    LOOPBACK_VIEWER,
    PageAccess,
    Spend,
    Viewer,
    csrf_ok,
    is_https,
    loopback_refusal,
    page_actor,
    posted_here,
    set_cookie,
    text_answer,
    unlimited,
    viewer_of,
)
from hubfsm.hub.bodies import close_after, unchecked_read
from hubfsm.hub.calls import is_model_id
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import file_name
from hubfsm.hub.parse import loads
from hubfsm.hub.store import WeightsKind

_KINDS: tuple[WeightsKind, ...] = ("last", "best")
#: Runs on one page (and in one ``runs.json``); ``?after=<id>`` asks for the next.
PAGE_SIZE = 100
_STATIC = {
    "uplot.iife.min.js": "text/javascript",
    "uplot.min.css": "text/css",
    "uplot.LICENSE": "text/plain",
    "hub.js": "text/javascript",
    "hub.css": "text/css",
}


#: What a run's page may do to it, by ``POST /models/<id>/<action>``.
ACTIONS = ("annotate", "delete")
#: The largest body of a page action (a name, tags and notes).
ACTION_BODY = 64 * 1024
#: The largest sign-in form (a key of 43 characters, and room for what browsers add).
SIGNIN_BODY = 4096


def serve(
    hub: Hub,
    request: Request,
    environ: dict[str, Any],
    access: PageAccess | None = None,
    spend: Spend = unlimited,
) -> Response:
    """Answer a request outside ``/v1``.

    Args:
        hub: The hub.
        request: The request.
        environ: Its WSGI environ.
        access: Who may see the pages; loopback browsers only, without a sign-in, when None.
        spend: The rate limit a key typed into the sign-in form or sent with a page action
            spends, as an API request's key does.
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
        return downloads.signed_file(hub, request, parts[1], parts[2])
    if access is not None and access.sign_in:
        found = _signed_in(hub, request, environ, parts, access, spend)
        if isinstance(found, Response):
            return found
        viewer = found
    else:
        refused = loopback_refusal(hub, request, environ)
        if refused is not None:
            return refused
        if parts in (["signin"], ["signout"]):
            # Nobody signs in where the pages need no sign-in.
            return _redirect("/")
        viewer = LOOPBACK_VIEWER
    if action:
        return _act(hub, request, environ, parts[1], parts[2], spend)
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
        name = summary.download_name(data["record"], kind)
        return downloads.weights(hub, request, model_id, kind, name)
    return _html(page.render_missing(request.path), 404)


def _signed_in(
    hub: Hub,
    request: Request,
    environ: dict[str, Any],
    parts: list[str],
    access: PageAccess,
    spend: Spend,
) -> Viewer | Response:
    """The signed-in viewer of a request, or the answer to it (sign-in and -out, refusals).

    The ``Host`` check of the loopback pages is not needed here: a page of another site,
    even one that its DNS points at the hub, has no session cookie of the hub's.
    """
    sessions = access.sessions
    secure = is_https(request)
    if request.method == "POST" and not posted_here(request):
        return text_answer("a post must come from the hub's own pages", 403)
    if parts == ["signin"]:
        if request.method != "POST":
            return _html(page.signin_page())
        form = _signin_form(request, environ)
        if isinstance(form, Response):
            return form
        principal = hub.principal(form.get("key", "").strip())
        # A wrong key is a guess: it spends its address's bucket, as on the API.
        allowed, limits = spend(principal, request)
        if not allowed:
            wait = limits.get("Retry-After", "1")
            response = _html(page.signin_page(f"Too many tries: try again in {wait} s."), 429)
            response.headers.update(limits)
            return response
        if principal is None:
            return _html(page.signin_page("That key is not valid (or was revoked)."), 401)
        response = _redirect("/")
        set_cookie(response, sessions.issue(principal), int(sessions.ttl), secure)
        return response
    if len(parts) == 2 and parts[0] == "static" and parts[1] in _STATIC:
        return _static(parts[1])  # the sign-in page's style sheet
    cookie = request.cookies.get(COOKIE)
    viewer = viewer_of(sessions, cookie, hub.list_keys())
    if parts == ["signout"]:
        if viewer is not None and not csrf_ok(request, access, viewer):
            return text_answer("the form's CSRF token does not match the session", 403)
        response = _redirect("/signin")
        set_cookie(response, "", 0, secure)
        return response
    if viewer is None:
        if parts == ["runs.json"] or parts[-1:] == ["data.json"]:
            return text_answer("sign in first", 401)
        return _redirect("/signin")
    return viewer


def _signin_form(request: Request, environ: dict[str, Any]) -> dict[str, str] | Response:
    """The sign-in form's fields: small, and read under the request head's deadline.

    Nothing vouches for its sender yet, so it may not hold a worker thread any longer
    than a request head may.
    """
    length = request.content_length
    if length is None or length > SIGNIN_BODY:
        close_after(environ)
        return text_answer(f"a sign-in form has a Content-Length of at most {SIGNIN_BODY}", 413)
    with unchecked_read(environ) as cut:
        form = dict(request.form)
    if cut():
        close_after(environ)
        return text_answer("the sign-in form did not arrive in time", 408)
    return form


def _bar(viewer: Viewer, access: PageAccess | None) -> str:
    if access is None or viewer.key_id is None:
        return ""
    return page.session_bar(viewer, access.sessions.csrf(viewer.cookie))


def _redirect(where: str) -> Response:
    response = Response(status=303, headers={"Location": where})
    response.headers["Cache-Control"] = "no-store"
    return response


def _act(
    hub: Hub, request: Request, environ: dict[str, Any], model_id: str, action: str, spend: Spend
) -> Response:
    """A page action on a run: rename, tag and note it (``annotate``), or ``delete`` it."""
    who = page_actor(hub, request, environ, spend)
    if isinstance(who, Response):
        return who
    if not is_model_id(model_id):
        return text_answer(f"no model {model_id[:40]}", 404)
    if action == "delete":
        if not hub.remove(model_id, who):
            return text_answer(f"no model {model_id}", 404)
        return _json({"deleted": model_id})
    length = request.content_length
    if length is None or length > ACTION_BODY:
        return text_answer(f"send a JSON object of at most {ACTION_BODY} bytes", 413)
    if request.mimetype != "application/json":
        return text_answer("send the changes as application/json", 415)
    try:
        changes = loads(request.get_data(cache=False))
        if not isinstance(changes, dict):
            raise ValueError("send a JSON object of name, tags and notes")
        record = hub.annotate(model_id, who, changes)
    except ValueError as error:
        return text_answer(str(error), 400)
    if record is None:
        return text_answer(f"no model {model_id}", 404)
    return _json(record)


def runs(
    hub: Hub,
    viewer: Viewer = LOOPBACK_VIEWER,
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
        shown = summary.summarize(record, hub.metrics(record["id"]), hub.clock(), _stall(hub))
        out.append({"record": record, "summary": shown})
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
                    "download": summary.download_name(record, kind),
                }
            )
    return {
        "record": record,
        "metrics": metrics,
        "since_start": summary.since_start(record, metrics, hub.metric_times(model_id)),
        "weights": weights,
        "summary": summary.summarize(record, metrics, hub.clock(), _stall(hub)),
        "console": hub.console(model_id),
    }


def _stall(hub: Hub) -> float:
    return summary.STALL_BEATS * hub.heartbeat_interval


def _metrics_file(data: dict[str, Any], name: str) -> Response:
    """A run's metrics as a download named after the run: CSV (a row per epoch) or JSON."""
    stem = f"{summary.run_stem(data['record'])}-metrics"
    if name.endswith(".csv"):
        response = Response(summary.metrics_csv(data["metrics"]), mimetype="text/csv")
    else:
        response = _json(data["metrics"])
    response.headers["Content-Disposition"] = f'attachment; filename="{stem}.{name[8:]}"'
    response.headers["Cache-Control"] = "no-store"
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
    data = summary.dumps(value).encode("utf-8", "backslashreplace")
    response = Response(data, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response
