"""Checking what a transport is configured with: the API key, the API root, the timeouts.

Each check refuses a bad setting with a message that never quotes the key.
"""

from __future__ import annotations

import ipaddress
import math
from urllib.parse import SplitResult, urlsplit

from hubfsm import env
from hubfsm.errors import SettingsError
from hubfsm.masking import redact

__all__ = ["API_ROOT_ENV", "DEFAULT_API_ROOT", "Secret", "check_key", "check_root", "positive"]

#: Where the hub's API lives unless told otherwise.
DEFAULT_API_ROOT = "https://api.ultralytics.com"

#: The environment variable that overrides :data:`DEFAULT_API_ROOT`.
API_ROOT_ENV = env.API_ROOT


class Secret:
    """A string that never shows itself in a repr or str, so not in ``vars()`` dumps either."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The string itself, for the one header that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def check_key(api_key: str) -> Secret:
    """The key without surrounding whitespace, kept secret.

    Raises:
        SettingsError: It is empty, or holds spaces, control or non-ASCII characters.
    """
    key = api_key.strip()
    # A header value with a line break or a space would be rejected by requests with
    # the value, i.e. the key, in the message; refuse it here without it.
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise SettingsError("the API key is empty or holds spaces, control or non-ASCII chars")
    return Secret(key)


def _is_loopback(host: str) -> bool:
    """True when ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_root(
    api_root: str | None, *, allow_insecure: bool, key: Secret
) -> tuple[str, SplitResult]:
    """The API root to use (given, else from the environment, else the default), split.

    Raises:
        SettingsError: It is not an http(s) URL, has credentials, a query or a fragment, or
            is plain ``http://`` to another machine without ``allow_insecure``.
    """
    root = api_root if api_root is not None else env.api_root() or ""
    root = (root.strip() or DEFAULT_API_ROOT).rstrip("/")
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact(root, key.reveal())
        raise SettingsError(f"API root {shown!r} is not an http:// or https:// URL")
    try:
        port_ok = parts.port != 0  # reading the port checks it
    except ValueError:
        port_ok = False
    if not port_ok:
        shown = redact(root, key.reveal())
        raise SettingsError(f"API root {shown!r} has an invalid port (a number from 1 to 65535)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SettingsError(
            f"the API root for {parts.hostname} must not have credentials, a query or a fragment"
        )
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname):
        raise SettingsError(
            f"refusing plain http:// to {parts.hostname}: the API key would travel in "
            "clear text; use https:// (`hubfsm hub serve --tls-cert FILE --tls-key FILE` "
            "serves it), or give the session a RequestsTransport made with "
            "allow_insecure=True if you trust every network between here and there"
        )
    return root, parts


def positive(name: str, value: float) -> float:
    """``value`` as a float, if it is positive and finite.

    Raises:
        SettingsError: It is not.
    """
    if not (value > 0 and math.isfinite(value)):
        raise SettingsError(f"{name} must be a positive finite number, not {value!r}")
    return float(value)
