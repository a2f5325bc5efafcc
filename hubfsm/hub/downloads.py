"""Weight files as downloads: the pages' links and the signed URLs in model records.

A page's link (``/models/<id>/weights/<kind>.pt``) is served after the pages' own access
rules; a signed URL (``/files/<id>/<name>.pt``) to anyone holding it, until it expires.
With an object store the answer is a redirect to a short-lived presigned URL of the
store: the file's bytes never pass the hub.
"""

from __future__ import annotations

from typing import IO

from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from hubfsm.hub.access import text_answer
from hubfsm.hub.calls import is_model_id
from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import parse_name
from hubfsm.hub.store import WeightsKind
from hubfsm.hub.store_postgres import PostgresStore

#: Seconds an object store's presigned link stays valid: it is followed at once (the
#: hub's own signed URL, checked before, is what lasts).
LINK_TTL = 300.0


def signed_file(hub: Hub, request: Request, model_id: str, name: str) -> Response:
    """A weight file at a signed URL (``/files/<id>/<name>.pt``), once its signature holds."""
    parsed = parse_name(name)
    if not is_model_id(model_id) or parsed is None:
        return text_answer("no such file", 404)
    problem = hub.signer.check(request.path, request.args) if hub.signer is not None else None
    if problem is not None:
        return text_answer(problem, 403)
    kind, epoch = parsed
    record = hub.record(model_id)
    if record is None:
        return text_answer("no such file", 404)
    if kind == "last" and epoch != record["checkpoint_epoch"]:
        # The checkpoint of that epoch was replaced by a later one; the record names it.
        return text_answer("a later checkpoint replaced this one", 404)
    return weights(hub, request, model_id, "last" if kind == "last" else "best", name)


def weights(hub: Hub, request: Request, model_id: str, kind: WeightsKind, name: str) -> Response:
    """A model's ``kind`` weights, downloaded as ``name``: the file, or a link to the store."""
    if isinstance(hub.store, PostgresStore):
        return _linked(hub.store, request, model_id, kind, name)
    found = hub.weights(model_id, kind)
    if found is None:
        return text_answer(f"{model_id} has no {kind}.pt", 404)
    info, content = found
    return file_response(content, info.size, info.sha256, name, request)


def _linked(
    store: PostgresStore, request: Request, model_id: str, kind: WeightsKind, name: str
) -> Response:
    """Send the client to the object store itself: the file's bytes never pass the hub."""
    if request.method == "HEAD":
        info = store.weights_info(model_id, kind)
        if info is None:
            return text_answer(f"{model_id} has no {kind}.pt", 404)
        return file_response(b"", info.size, info.sha256, name, request)
    found = store.weights_link(model_id, kind, LINK_TTL, name)
    if found is None:
        return text_answer(f"{model_id} has no {kind}.pt", 404)
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
