"""Tests of the identifier parser: accepted forms, rejections, totality, no key leaks."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hubfsm.core.identifier import (
    API_KEY_LENGTH,
    DEFAULT_WEB_ROOT,
    MODEL_ID_LENGTH,
    WEB_ROOT_ENV,
    Identifier,
    parse_identifier,
)
from hubfsm.errors import IdentifierError
from hubfsm.masking import mask_key

# Its own key: every letter case and digit, and a tail ("WXYZ") the masks below expect.
KEY = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abWXYZ"
MID = "Zy9876543210xwvutsrQ"
ROOT = DEFAULT_WEB_ROOT
ALNUM = string.ascii_letters + string.digits
FILE_SUFFIX = re.compile(r"\.(?:pt|ya?ml)\Z", re.IGNORECASE | re.ASCII)

assert len(KEY) == API_KEY_LENGTH
assert len(MID) == MODEL_ID_LENGTH


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the default web root the public hub whatever the environment says."""
    monkeypatch.delenv(WEB_ROOT_ENV, raising=False)


def rejection(text: str, **kwargs: str) -> str:
    with pytest.raises(IdentifierError) as info:
        parse_identifier(text, **kwargs)
    return str(info.value)


# --- mask_key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("", ""),
        ("a", "*"),
        ("abcd", "****"),
        ("abcde", "*bcde"),
        (KEY, "*" * 38 + "WXYZ"),
    ],
)
def test_mask_key(key: str, masked: str) -> None:
    assert mask_key(key) == masked


# --- local files ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "x.pt",
        "yolov8n.PT",
        "runs/exp/weights/last.pt",
        "C:\\models\\x.YAML",
        "cfg/model.yml",
        "Model.Yaml",
        "my model.pt",
        "abcdefghijklmnopq.pt",  # 20 characters, still a file
        f"{KEY}_{MID}.pt",  # the file rule comes first
        f"{ROOT}/models/{MID}.pt",
    ],
)
def test_file(text: str) -> None:
    ident = parse_identifier(text)
    assert ident == Identifier(filename=text)
    assert ident.kind == "file"
    assert ident.api_key is None and ident.model_id is None


def test_file_surrounding_whitespace_ignored() -> None:
    assert parse_identifier("  \truns/last.pt \n").filename == "runs/last.pt"


@pytest.mark.parametrize("text", [".pt", ".YAML", " .yml ", "runs/.pt", "C:\\models\\.Pt"])
def test_file_without_name_rejected(text: str) -> None:
    assert "nothing before its" in rejection(text)


# --- model URLs -------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "text",
    [
        f"{ROOT}/models/{MID}",
        f"{ROOT}/models/{MID}/",
        f"{ROOT}/models/{MID}?tab=train",
        f"{ROOT}/models/{MID}#metrics",
        f"{ROOT}/models/{MID}/?a=1&b=2#frag",
        f"{ROOT}/models/{MID}?api_key={KEY}",
        f"https://HUB.Ultralytics.COM/models/{MID}",
        f"HTTPS://hub.ultralytics.com/models/{MID}",
        f"https://hub.ultralytics.com:443/models/{MID}",
        f"  {ROOT}/models/{MID}  ",
    ],
)
def test_url(text: str) -> None:
    ident = parse_identifier(text)
    assert ident == Identifier(model_id=MID)
    assert ident.kind == "model"


@pytest.mark.parametrize("root", ["http://127.0.0.1:8080", "http://127.0.0.1:8080/"])
def test_url_custom_web_root(root: str) -> None:
    assert parse_identifier(f"http://127.0.0.1:8080/models/{MID}", web_root=root).model_id == MID


def test_url_custom_web_root_rejects_other_port() -> None:
    message = rejection(f"http://127.0.0.1:8081/models/{MID}", web_root="http://127.0.0.1:8080")
    assert "URL port is 8081, expected 8080" in message


def test_url_custom_web_root_rejects_public_hub() -> None:
    message = rejection(f"{ROOT}/models/{MID}", web_root="http://127.0.0.1:8080")
    assert "http://127.0.0.1:8080/models/<model id>" in message


def test_url_web_root_with_path() -> None:
    root = "https://example.com/hub"
    assert parse_identifier(f"{root}/models/{MID}", web_root=root).model_id == MID
    assert "not a model page" in rejection(f"https://example.com/models/{MID}", web_root=root)


def test_web_root_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEB_ROOT_ENV, "http://localhost:3000")
    assert parse_identifier(f"http://localhost:3000/models/{MID}").model_id == MID
    message = rejection(f"{ROOT}/models/{MID}")
    assert "http://localhost:3000/models/<model id>" in message


def test_web_root_argument_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEB_ROOT_ENV, "http://localhost:3000")
    assert parse_identifier(f"{ROOT}/models/{MID}", web_root=ROOT).model_id == MID


@pytest.mark.usefixtures("clean_env")
def test_url_other_host_rejected() -> None:
    message = rejection(f"https://evil.example.com/models/{MID}")
    assert "URL host is evil.example.com, expected hub.ultralytics.com" in message
    assert f"{ROOT}/models/<model id>" in message


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"http://hub.ultralytics.com/models/{MID}", "URL scheme is http, expected https"),
        (f"https://hub.ultralytics.com:8443/models/{MID}", "URL port is 8443, expected 443"),
        (f"{ROOT}/datasets/{MID}", "URL path /datasets/" + MID + " is not a model page"),
        (f"{ROOT}/models/{MID}/train", "is not a model page"),
        (f"{ROOT}//models/{MID}", "is not a model page"),
        (f"{ROOT}", "URL path / is not a model page"),
        (f"{ROOT}/models/", "no model id after /models/"),
        (f"{ROOT}/models/{MID[:-1]}", "model id has 19 characters, expected 20"),
        (f"{ROOT}/models/{MID[:-1]}-", "model id contains characters other than ASCII"),
        (f"https://user:pw@hub.ultralytics.com/models/{MID}", "user name or password"),
        ("https:///models/x", "the URL has no host"),
        ("://hub.ultralytics.com/models/x", "no valid scheme"),
        ("http://[::1", "cannot be parsed"),
        ("https://hub.ultralytics.com:99999/models/x", "port is not a number"),
        ("https://hub.ultralytics.com:abc/models/x", "port is not a number"),
        (f"hub.ultralytics.com/models/{MID}", "looks like a path"),
    ],
)
def test_url_rejected(text: str, expected: str) -> None:
    assert expected in rejection(text)


def test_invalid_web_root_is_an_identifier_error() -> None:
    assert "web root" in rejection(f"{ROOT}/models/{MID}", web_root="not a url")


# --- key_model and bare model ids ------------------------------------------


def test_key_and_model() -> None:
    ident = parse_identifier(f" {KEY}_{MID}\n")
    assert ident == Identifier(api_key=KEY, model_id=MID)
    assert ident.kind == "model"


def test_bare_model() -> None:
    assert parse_identifier(MID) == Identifier(model_id=MID)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "it is empty"),
        (" \t\n", "it is empty"),
        (MID[:-1], "model id has 19 characters, expected 20"),
        (MID + "x", "model id has 21 characters, expected 20"),
        ("é" * 20, "model id contains characters other than ASCII letters and digits"),
        ("\u0663" * 20, "model id contains characters other than ASCII letters and digits"),
        (MID[:-1] + "\uff11", "model id contains characters other than ASCII letters and digits"),
        (KEY, "length of an API key"),
        (f"{KEY[:-1]}_{MID}", "API key has 41 characters, expected 42"),
        (f"{KEY}x_{MID}", "API key has 43 characters, expected 42"),
        (f"{KEY}_{MID[:-1]}", "model id has 19 characters, expected 20"),
        (f"{KEY[:-1]}é_{MID}", "API key contains characters other than ASCII letters and digits"),
        (f"{KEY}_{MID[:-1]}\u0661", "model id contains characters other than ASCII"),
        (f"{KEY}_{MID}_x", "found 2"),
        (f"{KEY}__{MID}", "found 2"),
        (f"_{MID}", "API key has 0 characters, expected 42"),
        (f"{KEY}_", "model id has 0 characters, expected 20"),
    ],
)
def test_rejected(text: str, expected: str) -> None:
    message = rejection(text)
    assert expected in message
    assert "Accepted forms" in message


def test_both_parts_wrong_reports_both() -> None:
    message = rejection(f"{KEY[:-1]}_{MID[:-1]}")
    assert "API key has 41 characters" in message
    assert "model id has 19 characters" in message


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_identifier("nope")


def test_long_input_is_truncated_in_message() -> None:
    message = rejection("x" * 10_000)
    assert len(message) < 1000
    assert "10000 characters" in message


# --- the Identifier value ---------------------------------------------------


def test_repr_and_str_mask_key() -> None:
    ident = parse_identifier(f"{KEY}_{MID}")
    for text in (repr(ident), str(ident), f"{ident}", f"{ident!r}"):
        assert KEY not in text
        assert mask_key(KEY) in text
        assert MID in text


def test_to_json_dict() -> None:
    assert parse_identifier(f"{KEY}_{MID}").to_json_dict() == {
        "kind": "model",
        "api_key": mask_key(KEY),
        "model_id": MID,
        "filename": None,
    }
    assert parse_identifier("a/b.pt").to_json_dict() == {
        "kind": "file",
        "api_key": None,
        "model_id": None,
        "filename": "a/b.pt",
    }


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"model_id": MID, "filename": "x.pt"}, {"api_key": KEY, "filename": "x.pt"}],
)
def test_identifier_must_be_consistent(kwargs: dict[str, str]) -> None:
    with pytest.raises(IdentifierError) as info:
        Identifier(**kwargs)
    assert KEY not in str(info.value)


# --- properties -------------------------------------------------------------


def alnum(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=ALNUM, min_size=size, max_size=size)


keys = alnum(API_KEY_LENGTH)
model_ids = alnum(MODEL_ID_LENGTH)
blanks = st.text(alphabet=" \t\n\r", max_size=3)
roots = st.sampled_from([DEFAULT_WEB_ROOT, "http://127.0.0.1:8080", "https://example.com/hub"])


@st.composite
def random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))


@given(key=keys, model_id=model_ids, before=blanks, after=blanks)
def test_key_and_model_round_trip(key: str, model_id: str, before: str, after: str) -> None:
    ident = parse_identifier(f"{before}{key}_{model_id}{after}", web_root=ROOT)
    assert ident == Identifier(api_key=key, model_id=model_id)
    assert key not in repr(ident) and key not in str(ident)
    assert key not in str(ident.to_json_dict())


@given(model_id=model_ids, before=blanks, after=blanks)
def test_bare_model_round_trip(model_id: str, before: str, after: str) -> None:
    assert parse_identifier(f"{before}{model_id}{after}", web_root=ROOT) == Identifier(
        model_id=model_id
    )


@given(
    stem=st.text(min_size=1).filter(lambda s: s == s.lstrip() and s[-1] not in "/\\"),
    suffix=st.sampled_from(["pt", "yaml", "yml"]).flatmap(random_case),
    before=blanks,
    after=blanks,
)
def test_file_round_trip(stem: str, suffix: str, before: str, after: str) -> None:
    filename = f"{stem}.{suffix}"
    assert parse_identifier(f"{before}{filename}{after}", web_root=ROOT) == Identifier(
        filename=filename
    )


@given(
    root=roots,
    model_id=model_ids,
    slash=st.booleans(),
    query=st.none() | st.text().filter(lambda s: "#" not in s),
    fragment=st.none() | st.text(),
    data=st.data(),
)
def test_url_round_trip(
    root: str,
    model_id: str,
    slash: bool,
    query: str | None,
    fragment: str | None,
    data: st.DataObject,
) -> None:
    # Scheme and host are case-insensitive; the path is not.
    origin, _, path = root.partition("://")
    host, _, root_path = path.partition("/")
    origin = data.draw(random_case(f"{origin}://{host}"))
    text = f"{origin}/{root_path}" if root_path else origin
    text += f"/models/{model_id}" + ("/" if slash else "")
    if query is not None:
        text += f"?{query}"
    if fragment is not None:
        text += f"#{fragment}"
    # A URL ending in a model file suffix is a file, by the first rule.
    assume(not FILE_SUFFIX.search(text.strip()))
    assert parse_identifier(text, web_root=root) == Identifier(model_id=model_id)


PIECES = [
    "http://",
    "https://",
    "://",
    "hub.ultralytics.com",
    "HUB.ULTRALYTICS.COM",
    "[",
    "]",
    "::1",
    ":",
    ":99999",
    ":-1",
    "@",
    "/",
    "\\",
    "/models/",
    "_",
    "?",
    "#",
    "%",
    ".pt",
    ".YAML",
    " ",
    "\x00",
    "\n",
    "\u212a",  # Kelvin sign, which IGNORECASE would match against k
    "\uff10",  # fullwidth digit, which str.isalnum accepts
    "é",
    KEY,
    MID,
]
nasty = st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=8).map("".join)


@given(text=st.text() | nasty, root=st.none() | roots | st.text(max_size=20))
def test_total(text: str, root: str | None) -> None:
    try:
        ident = parse_identifier(text, web_root=root)
    except IdentifierError as exc:
        assert str(exc)
    else:
        assert isinstance(ident, Identifier)
        assert ident.kind in ("file", "model")


@st.composite
def malformed_with_key(draw: st.DrawFn) -> tuple[str, str]:
    """Draw (secret, text): text is not a valid identifier yet holds a key-like secret."""
    key = draw(keys)
    model_id = draw(model_ids)
    wrong = draw(st.integers(0, 40).filter(lambda n: n != MODEL_ID_LENGTH).flatmap(alnum))
    extra = draw(alnum(1))
    short = key[:-1]
    long = key + extra
    accented = key[:-1] + "é"
    host = "hub.ultralytics.com"
    cases = [
        (key, key),
        (key, f"{key}_{wrong}"),
        (key, f"{key}{model_id}"),
        (key, f"{model_id}{key}"),
        (key, f"{key}_{model_id}_{extra}"),
        (key, f"{extra}_{key}_{model_id}"),
        (key, f"{key}__{model_id}"),
        (key, f"{key}_{model_id[:-1]}é"),
        (key, f"{key}/{model_id}"),
        (key, f"{key} {model_id}"),
        (short, f"{short}_{model_id}"),
        (long, f"{long}_{model_id}"),
        (accented, f"{accented}_{model_id}"),
        (key, f"https://evil.example.com/models/{model_id}?api_key={key}"),
        (key, f"http://{host}/models/{model_id}?api_key={key}"),
        (key, f"https://{host}:99999/models/{model_id}?api_key={key}"),
        (key, f"https://{host}/datasets/{key}"),
        (key, f"https://{host}/models/{key}"),
        (key, f"https://{host}/models/{model_id}/{key}"),
        (key, f"https://{host}/models/{key}_{model_id}"),
        (key, f"https://{key}.example.com/models/{model_id}"),
        (key, f"{key}://{host}/models/{model_id}"),
        (key, f"https://{key}@{host}/models/{model_id}"),
        (key, f"https://user:{key}@{host}/models/{model_id}"),
        (key, f"http://[::1/models/{key}"),
        (key, f"{host}/models/{model_id}?api_key={key}"),
    ]
    return draw(st.sampled_from(cases))


@given(case=malformed_with_key())
def test_error_never_holds_key(case: tuple[str, str]) -> None:
    secret, text = case
    with pytest.raises(IdentifierError) as info:
        parse_identifier(text, web_root=ROOT)
    message = str(info.value)
    assert secret.lower() not in message.lower()
    assert secret.lower() not in repr(info.value).lower()


@given(key=keys, junk_before=st.text(max_size=5), junk_after=st.text(max_size=5))
def test_key_in_junk_never_leaks(key: str, junk_before: str, junk_after: str) -> None:
    try:
        ident = parse_identifier(f"{junk_before}{key}{junk_after}", web_root=ROOT)
    except IdentifierError as exc:
        assert key.lower() not in str(exc).lower()
    else:
        # A path that happens to hold a key is a file name, not a key: nothing to mask.
        assume(ident.kind != "file")
        assert key not in repr(ident) and key not in str(ident.to_json_dict())


@given(key=keys, model_id=model_ids, root=roots)
def test_valid_url_with_key_in_query_or_fragment_never_leaks(
    key: str, model_id: str, root: str
) -> None:
    for text in (f"{root}/models/{model_id}?api_key={key}", f"{root}/models/{model_id}#{key}"):
        ident = parse_identifier(text, web_root=root)
        assert ident == Identifier(model_id=model_id)
        assert key not in repr(ident) and key not in str(ident.to_json_dict())
