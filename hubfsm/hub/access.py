"""Who may see and change the hub's pages: loopback browsers, or browsers signed in with a key.

A one-person hub served on loopback shows its pages to the browser on the same machine
without a sign-in. Pages and their data need no key there, so they are answered to
loopback clients only, and only when the request names this machine in its ``Host``: a
page of another site that its DNS re-points at 127.0.0.1 (DNS rebinding) reaches the hub
from the user's own browser, on loopback, but names its own host.

A hub served to a network (or behind a proxy, with ``--sign-in``) asks for an API key once
and keeps a session in a cookie:

- The cookie holds the key's id, an expiry and an HMAC over both under a secret every
  process of the hub shares (derived from the URL-signing secret), never the key itself.
  It is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends
  it) and ``Secure`` when the hub is reached over HTTPS.
- Each request looks the key up again, so a revoked key's sessions end at once.
- A post must come from the hub's own pages: its ``Origin`` (or ``Referer``) names the
  host it was sent to, and a signed-in post carries the session's CSRF token, an HMAC of
  the cookie that another site cannot read.

A signed-in key sees the models it made; an admin key (``hubfsm hub keys add --admin``,
and the hub's own ``api_key`` file) sees every model. Changing a run from its page needs
the hub's API key besides: :func:`page_actor` is the one check.

A key typed into the sign-in form or sent with a page action spends the API's rate limit
(a :data:`Spend`): a bucket per key the hub knows, and one per client address for every
other key, so guessing keys on the pages is held to the rate it is held to on the API.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import attrs
from werkzeug.wrappers import Request, Response

from hubfsm.hub.domain import Hub
from hubfsm.hub.keys import KeyRecord

#: Spends a token of the API's rate limit for a request that names a key (by the key's id,
#: or None for a key the hub does not know, or none): (allowed, the ``Retry-After`` and
#: ``X-RateLimit-*`` headers of the answer).
Spend = Callable[[str | None, Request], tuple[bool, dict[str, str]]]

#: Sent with every answer of the hub's. No other site may show the pages in a frame
#: (clickjacking: its page lays the hub's, invisible, under a button of its own, and the
#: user's click lands on the hub's): ``X-Frame-Options`` for old browsers,
#: ``frame-ancestors`` for the rest. The rest of the policy lets the pages do what they do
#: and no more: scripts, styles and requests of their own origin (``style`` attributes
#: draw the progress bars), no plugins, no ``<base>``, forms posted only here. ``nosniff``
#: keeps a browser from reading a download or a JSON answer as a page or a script.
GUARD_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}

#: The session cookie's name.
COOKIE = "hubfsm_session"
#: Seconds a sign-in lasts.
SESSION_TTL = 12 * 3600.0
#: The name of the CSRF token's form field.
CSRF_FIELD = "csrf"
#: How a loopback client's address starts (IPv4, IPv6, IPv4 mapped into IPv6).
_LOOPBACK = ("127.", "::1", "::ffff:127.")
#: The ``Host`` names the pages answer to, besides the hub's own (the port is not part
#: of the check: a rebinding page cannot choose the name, and a tunnel may change the port).
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@attrs.frozen
class Viewer:
    """Who looks at the pages.

    Attributes:
        key_id: The signed-in key's id; None for the loopback user of a one-person hub.
        admin: Sees every model.
        label: The key's label, to show.
        cookie: The session cookie's value ("" without a session).
    """

    key_id: str | None
    admin: bool
    label: str = ""
    cookie: str = ""

    def sees(self, owner: str | None) -> bool:
        """True when a model owned by ``owner`` is shown to this viewer."""
        # Models made before keys had owners are shown to admins only.
        return self.admin or (owner is not None and owner == self.key_id)


#: The browser on the hub's own machine, when the pages need no sign-in.
LOOPBACK_VIEWER = Viewer(None, True)


class Sessions:
    """Issues and checks session cookies and CSRF tokens.

    Args:
        secret: The hub's shared secret (the URL-signing one); a key for sessions is
            derived from it, so a session cookie is never a valid signed URL.
        clock: Seconds now.
        ttl: Seconds a session lasts.
    """

    def __init__(
        self, secret: bytes, clock: Callable[[], float] = time.time, ttl: float = SESSION_TTL
    ) -> None:
        self._key = hmac.new(secret, b"hubfsm pages session", hashlib.sha256).digest()
        self._clock = clock
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"Sessions(ttl={self.ttl:g})"

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str) -> str:
        """A cookie value for a session of the key ``key_id``."""
        payload = f"{key_id}.{int(self._clock() + self.ttl)}"
        return f"{payload}.{self._mac(payload)}"

    def check(self, cookie: str | None) -> str | None:
        """The key id of a valid, unexpired session cookie, or None."""
        if not cookie or len(cookie) > 200:
            return None
        payload, _, mac = cookie.rpartition(".")
        key_id, _, expires = payload.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        if not expires.isdigit() or int(expires) < self._clock():
            return None
        return key_id

    def csrf(self, cookie: str) -> str:
        """The CSRF token of a session (of the loopback user's pages for ``""``)."""
        return self._mac(f"csrf\x1f{cookie}")[:32]


def viewer_of(sessions: Sessions, cookie: str | None, keys: list[KeyRecord]) -> Viewer | None:
    """The viewer a session cookie signs in, or None (no session, expired, key revoked)."""
    key_id = sessions.check(cookie)
    if key_id is None or cookie is None:
        return None
    for record in keys:
        if record.id == key_id and record.revoked_at is None:
            return Viewer(record.id, record.admin, record.label, cookie)
    return None


@attrs.frozen
class PageAccess:
    """Who may see the pages.

    Attributes:
        sessions: Issues and checks the sign-in cookies.
        sign_in: Every browser signs in with an API key (a hub served to a network, or
            behind a proxy); False keeps the pages to loopback browsers, without a sign-in.
    """

    sessions: Sessions
    sign_in: bool


def is_loopback(host: str) -> bool:
    """True for an address (or ``localhost``) that only this machine can reach."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_refusal(hub: Hub, request: Request, environ: dict[str, Any]) -> Response | None:
    """Why a page request is refused on a hub whose pages need no sign-in, or None."""
    if not (request.remote_addr or "").startswith(_LOOPBACK):
        return text_answer("the hub's pages are for loopback clients only", 403)
    if not host_allowed(environ.get("HTTP_HOST"), hub.public_root):
        return text_answer(
            "the hub's pages answer only to the Host localhost, 127.0.0.1, [::1] or its own "
            "address; open them through one of those",
            403,
        )
    return None


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


def same_origin(source: str | None, host: str | None) -> bool:
    """True when ``source`` (an ``Origin`` or ``Referer``) names ``host``, where a request went.

    Browsers send ``Origin`` with every post and with every script's request that changes
    something; a request without one (or with ``null``) is not from a page of the hub's.
    """
    if not source or not host or source == "null":
        return False
    try:
        parts = urllib.parse.urlsplit(source)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def posted_here(request: Request) -> bool:
    """True when a post names, in ``Origin`` or else ``Referer``, the host it was sent to."""
    headers = request.headers
    return same_origin(headers.get("Origin") or headers.get("Referer"), headers.get("Host"))


def is_https(request: Request) -> bool:
    """True when the browser reached the hub over HTTPS (directly, or through a local proxy)."""
    if request.scheme == "https":
        return True
    # Only a proxy on this machine is believed: anyone else could send the header.
    local = (request.remote_addr or "").startswith(_LOOPBACK)
    return local and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: Response, value: str, max_age: int, secure: bool) -> None:
    """Set (or, with ``max_age`` 0, clear) the session cookie, with its protections."""
    response.set_cookie(
        COOKIE, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="Strict"
    )


def csrf_ok(request: Request, access: PageAccess, viewer: Viewer) -> bool:
    """True when a signed-in post carries its session's CSRF token."""
    given = request.form.get(CSRF_FIELD, "")
    expected = access.sessions.csrf(viewer.cookie)
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def unlimited(who: str | None, request: Request) -> tuple[bool, dict[str, str]]:
    """The :data:`Spend` of a hub without a rate limit: every request is allowed."""
    return True, {}


def too_many(headers: dict[str, str]) -> Response:
    """The 429 of a page request over the rate limit, with its ``Retry-After``."""
    wait = headers.get("Retry-After", "1")
    response = text_answer(f"too many requests: retry in {wait} s", 429)
    response.headers.update(headers)
    return response


def page_actor(
    hub: Hub, request: Request, environ: dict[str, Any], spend: Spend = unlimited
) -> str | Response:
    """Who changes a run from a page (a key's id), or the answer that refuses the change.

    The one check of every page action (the pages' own loopback and ``Host`` rules have
    passed already):

    - A browser's request must come from this hub's pages: its ``Origin`` names the host
      it was sent to, and ``Sec-Fetch-Site``, when sent, says ``same-origin``. Another site
      open in the same browser cannot act (and its script cannot set the key header on a
      request here without a preflight the hub never answers).
    - The hub's API key in ``x-api-key`` says who acts: the run page sends the one its
      user typed, a script sends its own. Reading needs no key; changing does, since any
      local account reaches loopback. The key spends the rate limit (``spend``) as an API
      request's does, so a wrong one is a guess held to the rate.
    """
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, environ.get("HTTP_HOST")):
        return text_answer("a run is changed from this hub's own pages only", 403)
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin"):
        return text_answer("a run is changed from this hub's own pages only", 403)
    who = hub.principal(request.headers.get("x-api-key"))
    allowed, limits = spend(who, request)
    if not allowed:
        return too_many(limits)
    if who is None:
        return text_answer("changing a run needs the hub's API key (x-api-key), a valid one", 401)
    return who


def text_answer(message: str, status: int) -> Response:
    """A plain-text answer to a page request the hub does not serve as asked."""
    return Response(message, status=status, mimetype="text/plain")
