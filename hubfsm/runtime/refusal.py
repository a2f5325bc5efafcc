"""What a session says when the hub refuses the key or the model: where the data is kept.

Sending stops and recording goes on (the ``refused`` state); the trainer hears of it
once on stderr, and once as the error :meth:`~hubfsm.runtime.session.Session.finish` or
:meth:`~hubfsm.runtime.session.Session.close` raises.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import urlsplit

from hubfsm.core.engine import Core
from hubfsm.core.values import describe_pending
from hubfsm.errors import AuthError, HubError, HubfsmError, ModelNotFoundError, ModelTrainedError


def same_hub(one: str, other: str) -> bool:
    """True when two API roots name the same hub: scheme, host and port."""
    a, b = urlsplit(one.strip()), urlsplit(other.strip())
    try:
        return (a.scheme.lower(), a.hostname, a.port) == (b.scheme.lower(), b.hostname, b.port)
    except ValueError:  # a port that is not a number: compare the text
        return one.strip().rstrip("/") == other.strip().rstrip("/")


def sync_command(where: Path, api_root: str | None) -> str:
    """The ``hubfsm sync`` command that sends what ``where`` keeps, as it works printed.

    It names the hub unless it is the public one, and takes the key from the
    environment (``--key`` would show it to other users in ``ps``).
    """
    from transports.settings import DEFAULT_API_ROOT

    words = ["hubfsm", "sync"]
    if api_root and not same_hub(api_root, DEFAULT_API_ROOT):
        words += ["--hub", api_root]
    words.append(str(where))
    return f"HUB_API_KEY=... {shlex.join(words)}"


def advice(error: HubfsmError | None, where: Path, api_root: str | None = None) -> str:
    """What to do about a refusal so that ``hubfsm sync`` can deliver what is kept."""
    command = sync_command(where, api_root)
    if isinstance(error, AuthError):
        return f"fix the key and run `{command}` with the new key"
    if isinstance(error, ModelNotFoundError | ModelTrainedError):
        return (
            f"the hub takes no more data for this model; `hubfsm status {where}` lists what is kept"
        )
    if isinstance(error, HubError) and 300 <= error.status < 400:
        return f"check the API root and run `HUB_API_KEY=... hubfsm sync --hub API_ROOT {where}`"
    if isinstance(error, HubError) and error.channel == "final":
        return f"`hubfsm status {where}` shows the record the hub refused"
    return f"run `{command}` once the cause is fixed"


def notice(core: Core, directory: Path | None, api_root: str | None = None) -> str:
    """The line a trainer reads on stderr when sending stops."""
    error = core.error
    if directory is None:
        where = "in memory only (no outbox): it is lost when the process exits"
    else:
        where = f"in {directory}; {advice(error, directory, api_root)}"
    return (
        f"hubfsm: model {core.model_id}: {error}. Nothing more is sent; every "
        f"epoch, checkpoint and the final weights are still kept, {where}"
    )


def refusal_error(core: Core, directory: Path | None, api_root: str | None = None) -> HubfsmError:
    """The refusal, as the error to raise: the hub's answer, what is kept, and where."""
    error = core.error
    parts = [describe_pending(core.pending())] if core.drained is False else []
    rejected = len(core.rejected)
    if rejected:
        parts.append(f"{rejected} rejected record{'s' if rejected > 1 else ''}")
    kept = " and ".join(parts) or "nothing more"
    if directory is None:
        where = "in memory only (no outbox), so it is lost when the process exits"
    else:
        where = f"in {directory}; {advice(error, directory, api_root)}"
    message = f"{error}; {kept} kept {where}"
    if isinstance(error, HubError):
        return type(error)(message, status=error.status, channel=error.channel)
    return HubfsmError(message)
