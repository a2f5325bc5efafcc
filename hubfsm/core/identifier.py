"""The ways a user names a model: a file, a hub URL, a key with a model id, an id, a Platform run.

The parser is pure and total: every string either parses or raises
:class:`~hubfsm.errors.IdentifierError`, and no error message or repr ever holds a whole
API key, because both end up in logs.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

import attrs

from hubfsm import env
from hubfsm.errors import IdentifierError
from hubfsm.masking import mask_key, show_untrusted

__all__ = [
    "API_KEY_LENGTH",
    "DEFAULT_WEB_ROOT",
    "MODEL_ID_LENGTH",
    "OUTBOX_ID",
    "PLATFORM_ID",
    "WEB_ROOT_ENV",
    "Identifier",
    "parse_identifier",
    "parse_platform_identifier",
    "slugify",
]

API_KEY_LENGTH = 42
MODEL_ID_LENGTH = 20
DEFAULT_WEB_ROOT = "https://hub.ultralytics.com"
WEB_ROOT_ENV = env.WEB_ROOT

# An explicit class, not str.isalnum, which also accepts non-ASCII letters and digits.
_ASCII_ALNUM = re.compile(r"[A-Za-z0-9]*")
# re.ASCII keeps IGNORECASE from matching look-alikes such as the Kelvin sign.
_FILE_SUFFIX = re.compile(r"\.(?:pt|ya?ml)\Z", re.IGNORECASE | re.ASCII)
_FILE_SUFFIXES = (".pt", ".yaml", ".yml")
# Whatever lies between these is one token; a key has none of them, so it always sits
# inside a single token at least as long as itself.
_TOKEN = re.compile(r"[^/\\?#&=@:;,_.]+")
_MAX_ECHO = 80
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: What a Platform model id must look like before it names anything here (an outbox
#: directory among others): ASCII letters and digits only, so never a path.
PLATFORM_ID = re.compile(r"[A-Za-z0-9]{8,64}")

#: The names an outbox directory may have: a model id of either dialect.
OUTBOX_ID = PLATFORM_ID


def _mask_repr(key: str | None) -> str:
    return "None" if key is None else repr(mask_key(key))


@attrs.frozen(str=True)
class Identifier:
    """A parsed model identifier: a local model file, a hub model, or a Platform project.

    Attributes:
        api_key: The API key given along with the model id, if any (masked in repr).
        model_id: The hub model id, for a hub model.
        filename: The path of the model file, for a local file.
        project: The Platform project (``owner/slug`` or ``slug``) a new run goes to.
        run_name: The name of that new run.
    """

    api_key: str | None = attrs.field(default=None, repr=_mask_repr)
    model_id: str | None = None
    filename: str | None = None
    project: str | None = None
    run_name: str | None = None

    def __attrs_post_init__(self) -> None:
        named = [v for v in (self.model_id, self.filename, self.project) if v is not None]
        if len(named) != 1:
            raise IdentifierError(
                "an identifier names exactly one of a model id, a file or a project"
            )
        if self.api_key is not None and self.model_id is None:
            raise IdentifierError("an API key only goes with a model id")
        if (self.run_name is None) != (self.project is None):
            raise IdentifierError("a run name goes with a project, and only with one")

    @property
    def kind(self) -> Literal["file", "model", "project"]:
        """``"file"`` for a local model file, ``"model"`` for a model, else ``"project"``."""
        if self.filename is not None:
            return "file"
        return "model" if self.model_id is not None else "project"

    def to_json_dict(self) -> dict[str, str | None]:
        """Return the identifier as JSON-ready values, with the API key masked."""
        if self.project is not None:
            return {"kind": "project", "project": self.project, "run_name": self.run_name}
        return {
            "kind": self.kind,
            "api_key": None if self.api_key is None else mask_key(self.api_key),
            "model_id": self.model_id,
            "filename": self.filename,
        }


class _Rejected(Exception):
    """Why the text is in none of the forms; ``shown`` overrides the default echo."""

    def __init__(self, reason: str, shown: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.shown = shown


@attrs.frozen
class _Root:
    scheme: str
    host: str
    port: int | None
    path: str


def parse_identifier(text: str, *, web_root: str | None = None) -> Identifier:
    """Parse the text a user gave to name a model.

    Accepted forms, tried in this order: a local model file (ending in ``.pt``,
    ``.yaml`` or ``.yml``, any case), a model URL ``{web_root}/models/{model_id}``,
    ``{api_key}_{model_id}``, and a bare model id. An API key is 42 and a model id 20
    ASCII letters and digits.

    Args:
        text: The identifier; surrounding whitespace is ignored.
        web_root: The hub web address model URLs must start with; defaults to the
            ``ULTRALYTICS_HUB_WEB`` environment variable, else the public hub.

    Returns:
        The parsed identifier.

    Raises:
        IdentifierError: If the text is in none of the accepted forms; the message says
            what was wrong and never holds a whole API key.
    """
    root = (web_root or env.web_root() or DEFAULT_WEB_ROOT).strip().rstrip("/")
    stripped = text.strip()
    try:
        return _parse(stripped, root)
    except _Rejected as rejected:
        shown = rejected.shown if rejected.shown is not None else _show(stripped)
        raise IdentifierError(
            f"invalid model identifier {shown}: {rejected.reason}. {_accepted(root)}"
        ) from None


def _parse(text: str, root: str) -> Identifier:
    if not text:
        raise _Rejected("it is empty")
    if _FILE_SUFFIX.search(text):
        name = re.split(r"[/\\]", text)[-1]
        if name.lower() in _FILE_SUFFIXES:
            raise _Rejected(f"the file name has nothing before its {name} suffix")
        return Identifier(filename=text)
    if "://" in text:
        return Identifier(model_id=_parse_url(text, root))
    if "/" in text or "\\" in text:
        raise _Rejected(
            "it looks like a path, but model files end in .pt, .yaml or .yml"
            " and model URLs start with a scheme such as https://"
        )
    if "_" in text:
        return _parse_key_and_model(text)
    problems = _problems(text, "model id", MODEL_ID_LENGTH)
    if problems:
        if len(text) == API_KEY_LENGTH and not problems[1:]:
            problems.append("it has the length of an API key, which needs _<model id> after it")
        raise _Rejected("; ".join(problems))
    return Identifier(model_id=text)


def _parse_key_and_model(text: str) -> Identifier:
    api_key, _, model_id = text.partition("_")
    # The part before the first underscore is where a key would be, so it is masked
    # whole even when it is too short or holds characters a key cannot.
    shown = _show(f"{mask_key(api_key)}_{_redact(model_id)}")
    underscores = text.count("_")
    if underscores > 1:
        raise _Rejected(
            f"expected one '_' between the API key and the model id, found {underscores}",
            shown,
        )
    problems = _problems(api_key, "API key", API_KEY_LENGTH)
    problems += _problems(model_id, "model id", MODEL_ID_LENGTH)
    if problems:
        raise _Rejected("; ".join(problems), shown)
    return Identifier(api_key=api_key, model_id=model_id)


def _parse_url(text: str, root_text: str) -> str:
    root = _split_root(root_text)
    # urllib raises ValueError on bad IPv6 brackets, bad ports and the like; its message
    # may quote the input, so only say which part failed.
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise _Rejected("the URL cannot be parsed") from exc
    try:
        port = parts.port
    except ValueError as exc:
        raise _Rejected("the URL port is not a number from 0 to 65535") from exc
    if not parts.scheme:
        raise _Rejected("the URL has no valid scheme")
    if parts.scheme != root.scheme:
        raise _Rejected(f"URL scheme is {_quote(_redact(parts.scheme))}, expected {root.scheme}")
    if "@" in parts.netloc:
        raise _Rejected("the URL must not hold a user name or password")
    host = parts.hostname or ""
    if not host:
        raise _Rejected("the URL has no host")
    if host != root.host:
        raise _Rejected(f"URL host is {_quote(_redact(host))}, expected {root.host}")
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    if port != root.port:
        raise _Rejected(
            f"URL port is {port if port is not None else 'missing'}, expected {root.port}"
        )
    path = parts.path.rstrip("/")
    models = f"{root.path}/models"
    if path == models:
        raise _Rejected(f"the URL has no model id after {models}/")
    model_id = path[len(models) + 1 :]
    if not path.startswith(f"{models}/") or "/" in model_id:
        raise _Rejected(
            f"URL path {_quote(_redact(parts.path or '/'))} is not a model page,"
            f" expected {root_text}/models/<model id>"
        )
    problems = _problems(model_id, "model id", MODEL_ID_LENGTH)
    if problems:
        raise _Rejected("; ".join(problems))
    return model_id


def _split_root(root_text: str) -> _Root:
    try:
        parts = urlsplit(root_text)
        port = parts.port
    except ValueError as exc:
        raise _Rejected(f"the hub web root {root_text!r} is not a valid URL") from exc
    if (
        not parts.scheme
        or not parts.hostname
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
    ):
        raise _Rejected(f"the hub web root {root_text!r} is not a URL like https://host[:port]")
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    return _Root(scheme=parts.scheme, host=parts.hostname, port=port, path=parts.path.rstrip("/"))


def _problems(value: str, what: str, length: int) -> list[str]:
    problems = []
    if len(value) != length:
        problems.append(f"{what} has {_count(len(value))}, expected {length}")
    if not _ASCII_ALNUM.fullmatch(value):
        problems.append(f"{what} contains characters other than ASCII letters and digits")
    return problems


def _count(n: int) -> str:
    return f"{n} character" if n == 1 else f"{n} characters"


def _redact(text: str) -> str:
    # Model ids (20 characters) stay readable; anything longer might be a key.
    return _TOKEN.sub(
        lambda m: mask_key(m[0]) if len(m[0]) > MODEL_ID_LENGTH else m[0],
        text,
    )


def _show(text: str) -> str:
    shown = _redact(text)
    if len(shown) > _MAX_ECHO:
        return f"{shown[: _MAX_ECHO - 3] + '...'!r} ({_count(len(text))})"
    return repr(shown)


def _quote(text: str) -> str:
    return text if text.isascii() and text.isprintable() else repr(text)


def _accepted(root: str) -> str:
    return (
        "Accepted forms: a model file path ending in .pt, .yaml or .yml;"
        f" a model URL {root}/models/<model id>; <API key>_<model id>; or a bare <model id>"
        f" (an API key is {API_KEY_LENGTH} and a model id {MODEL_ID_LENGTH}"
        " ASCII letters and digits)"
    )


def slugify(text: str) -> str:
    """A URL-safe slug, as the official client makes project and run names."""
    lowered = re.sub(r"[^a-z0-9\s-]", "", str(text).lower()).replace(" ", "-")
    return re.sub(r"-+", "-", lowered).strip("-")[:128]


def parse_platform_identifier(text: str, *, name: str | None = None) -> Identifier:
    """Parse how a Platform run is named.

    Forms: a model id (8 to 64 ASCII letters and digits, at least 16 for a bare one) to
    continue that model; ``owner/project`` or ``project`` for a new run named ``name``
    (default ``train``); ``owner/project/name`` or ``ul://owner/project/name`` for a new
    run with that name. Project and run names are slugified as the official client does.

    Raises:
        IdentifierError: The text is empty, or slugifies to nothing.
    """
    stripped = text.strip()
    if stripped.startswith("ul://"):
        stripped = stripped[len("ul://") :]
    if "/" not in stripped and len(stripped) >= 16 and PLATFORM_ID.fullmatch(stripped):
        return Identifier(model_id=stripped)
    parts = [p for p in stripped.split("/") if p]
    if len(parts) == 3:
        parts, name = parts[:2], parts[2]
    if not parts or len(parts) > 2:
        raise IdentifierError(
            f"invalid Platform identifier {show_untrusted(text, limit=40)}: use "
            "owner/project, owner/project/run, ul://owner/project/run or a model id"
        )
    project = f"{parts[0]}/{slugify(parts[1])}" if len(parts) == 2 else slugify(parts[0])
    run = slugify(name or "train")
    if not project.strip("/") or project.endswith("/") or not run:
        raise IdentifierError(
            f"invalid Platform identifier {show_untrusted(text, limit=40)}: the project "
            "and run names need letters or digits"
        )
    return Identifier(project=project, run_name=run)
