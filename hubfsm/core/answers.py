"""What the hub's answers say: the model an opening names, the error a refusal carries.

Pure functions of the answer and the request it was about. What an answer *does* (retry,
set a record aside, stop heartbeats, stop sending) is the machine's table
(:data:`hubfsm.core.machine.ANSWERS`); this module only reads and words it.
"""

from __future__ import annotations

from hubfsm.core import protocol
from hubfsm.core.platform import PLATFORM
from hubfsm.core.protocol import Dialect, Opened
from hubfsm.core.values import Create, Load, Op
from hubfsm.errors import (
    AuthError,
    HubError,
    HubUnavailableError,
    ModelNotFoundError,
    ModelTrainedError,
)
from hubfsm.transport import Outcome, Response, TransportError


def opened(
    dialect: Dialect,
    purpose: Load | Create,
    response: Response,
    *,
    model_id: str | None,
    ours: bool,
) -> Opened:
    """What a successful answer to the opening request names.

    Args:
        dialect: The dialect spoken.
        purpose: What the opening asked: load ``model_id``, or create a model.
        response: The answer.
        model_id: The model a load named.
        ours: The final weights of this model are ours to send: an earlier session of
            ours may have trained it (its final upload landed before a crash).

    Raises:
        HubError: The answer names no model, or one that cannot be trained again.
    """
    data = response.data
    if dialect is PLATFORM:
        # The id names the outbox directory: PLATFORM.opened checks it is no path.
        return PLATFORM.opened(response, model_id=model_id if isinstance(purpose, Load) else None)
    if isinstance(purpose, Create):
        # The id names the outbox directory: a hub must never choose a path.
        return Opened(
            protocol.hub_id(data.get("id"), what="model id", response=response, channel="create")
        )
    protocol.check_record(data, model_id, response=response)
    assert model_id is not None  # a load names its model
    # Our own final upload may have landed before a crash: its kept operation will be
    # confirmed by the hub's idempotent replay, or refused with 409.
    if data.get("status") == "trained" and not ours:
        raise ModelTrainedError(
            f"model {model_id} is already trained; create a new model to train again",
            status=response.status,
            channel="load",
        )
    return Opened(model_id)


def opening_error(op: Op, response: Response, model_id: str | None) -> HubError:
    """The error of a refused load or create: the session never opened."""
    status = response.status
    hub_says = f": {response.message}" if response.message else ""
    if status in (401, 403):
        return AuthError(
            f"the hub refused the API key ({status}) on {what(op)}{hub_says}",
            status=status,
            channel=op.channel,
        )
    if status == 404:
        return ModelNotFoundError(
            f"model {model_id} not found on the hub{hub_says}",
            status=status,
            channel=op.channel,
        )
    if status == 409:
        return ModelTrainedError(
            f"model {model_id} is already trained{hub_says}",
            status=status,
            channel=op.channel,
        )
    return HubError(
        f"the hub rejected {what(op)} with {status}{hub_says}",
        status=status,
        channel=op.channel,
    )


def refusal_error(op: Op, response: Response, model_id: str | None) -> HubError:
    """The error of a refusal that stopped all sending after the model was opened."""
    channel = op.channel
    status = response.status
    asked = what(op)
    hub_says = f": {response.message}" if response.message else ""
    if status in (401, 403):
        return AuthError(
            f"the hub refused the API key ({status}) on {asked}{hub_says}",
            status=status,
            channel=channel,
        )
    if 300 <= status < 400:
        return HubError(
            f"the hub answered {asked} with a redirect ({status}), which is never "
            f"followed with the key; check the API root{hub_says}",
            status=status,
            channel=channel,
        )
    if status == 404:
        return ModelNotFoundError(
            f"model {model_id} not found on the hub ({status}) on {asked}{hub_says}",
            status=status,
            channel=channel,
        )
    if status == 409:
        return ModelTrainedError(
            f"model {model_id} is already trained ({status}) on {asked}{hub_says}",
            status=status,
            channel=channel,
        )
    return HubError(
        f"the hub refused {asked} with {status}{hub_says}",
        status=status,
        channel=channel,
    )


def rejected_final_error(op: Op, response: Response) -> HubError:
    """The error of final weights the hub refused as a payload (400/413/422)."""
    return HubError(
        f"the hub rejected the final weights ({response.status}) on {what(op)}"
        + (f": {response.message}" if response.message else ""),
        status=response.status,
        channel=op.channel,
    )


def unreachable_error(outcome: TransportError) -> HubUnavailableError:
    """Opening failed on a hub that never answered: say what to check."""
    where = outcome.url or "the API root"
    if outcome.kind == "tls":
        hint = (
            f"check the scheme of {where}: https:// for a hub that speaks TLS, http:// "
            "for one that does not (such as the local hub)"
        )
    elif outcome.kind in ("url", "dns"):
        hint = f"check the API root {where}"
    else:
        hint = f"is the hub at {where} running?"
    return HubUnavailableError(f"cannot reach the hub ({outcome}); {hint}")


def failure_text(outcome: Outcome) -> str:
    """``503 busy`` or ``timeout: ...``: the last failure, as ``hubfsm status`` shows it."""
    if isinstance(outcome, Response):
        return f"{outcome.status} {outcome.message}".rstrip()
    return f"{outcome.kind}: {outcome}"


def what(op: Op) -> str:
    """``POST /v1/models/...``: the request an answer was about."""
    if op.request.method == "PUT":
        return "PUT to the signed upload URL"  # its query is a credential
    return f"{op.request.method} {op.request.path}"
