"""Signing in to the hub's pages with an API key: a cookie session, safe against forged posts.

A one-person hub served on loopback shows its pages to the browser on the same machine
without a sign-in, as it always did. A hub served to a network (or behind a proxy, with
``--sign-in``) asks for an API key once and keeps a session in a cookie:

- The cookie holds the key's id, an expiry and an HMAC over both under a secret every
  process of the hub shares (derived from the URL-signing secret), never the key itself.
  It is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends
  it) and ``Secure`` when the hub is reached over HTTPS.
- Each request looks the key up again, so a revoked key's sessions end at once.
- A post must come from the hub's own pages: its ``Origin`` (or ``Referer``) names the
  host it was sent to, and a signed-in post carries the session's CSRF token, an HMAC of
  the cookie that another site cannot read.

A signed-in key sees the models it made; an admin key (``hubfsm hub keys add --admin``,
and the hub's own ``api_key`` file) sees every model.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
import urllib.parse
from collections.abc import Callable

import attrs
from werkzeug.wrappers import Request, Response

from hubfsm.hub.keys import KeyRecord

#: The session cookie's name.
COOKIE = "hubfsm_session"
#: Seconds a sign-in lasts.
SESSION_TTL = 12 * 3600.0
#: The name of the CSRF token's form field.
CSRF_FIELD = "csrf"


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


def same_origin(request: Request) -> bool:
    """True when a post names, in ``Origin`` or else ``Referer``, the host it was sent to.

    Browsers send ``Origin`` with every form post; a post without either is not from a
    page of the hub's and is refused.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    host = request.headers.get("Host")
    if not source or not host or source == "null":
        return False
    try:
        named = urllib.parse.urlsplit(source).netloc
    except ValueError:
        return False
    return named.lower() == host.lower()


def is_https(request: Request) -> bool:
    """True when the browser reached the hub over HTTPS (directly, or through a local proxy)."""
    if request.scheme == "https":
        return True
    # Only a proxy on this machine is believed: anyone else could send the header.
    local = (request.remote_addr or "").startswith(("127.", "::1", "::ffff:127."))
    return local and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: Response, value: str, max_age: int, secure: bool) -> None:
    """Set (or, with ``max_age`` 0, clear) the session cookie, with its protections."""
    response.set_cookie(
        COOKIE, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="Strict"
    )


def signin_page(problem: str = "") -> str:
    """The sign-in page: one field for an API key."""
    note = f'<p class="problem">{html.escape(problem)}</p>' if problem else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Sign in · local hub</title>"
        '<link rel="stylesheet" href="/static/hub.css"></head><body><main>'
        "<h1>Sign in</h1>"
        "<p>Paste your API key: you will see the models it made.</p>"
        f"{note}"
        '<form method="post" action="/signin">'
        '<input type="password" name="key" autocomplete="current-password" '
        'aria-label="API key" required autofocus> '
        '<button type="submit">Sign in</button></form>'
        "</main></body></html>"
    )


def session_bar(viewer: Viewer, token: str) -> str:
    """Who is signed in, a sign-out button, and the CSRF token for the page's own forms."""
    who = html.escape(viewer.label or viewer.key_id or "")
    role = " (admin: all models)" if viewer.admin else ""
    return (
        f'<meta name="csrf-token" content="{token}">'
        '<form class="session" method="post" action="/signout">'
        f"Signed in as {who}{role} "
        f'<input type="hidden" name="{CSRF_FIELD}" value="{token}">'
        '<button type="submit">Sign out</button></form>'
    )
