"""Every rank but 0 gets a session with the whole surface that sends nothing."""

from __future__ import annotations

import pytest

from hubfsm.errors import HubfsmError
from hubfsm.runtime.opener import NullSession
from hubfsm.runtime.session import Session


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_a_null_session_has_every_public_name_a_session_has():
    assert _public(Session) - {"compose"} <= _public(NullSession)


def test_the_plan_and_its_weights_are_rank_zeros_and_say_so():
    run = NullSession(3)
    with pytest.raises(HubfsmError, match="rank 3 .*read it on rank 0"):
        run.plan  # noqa: B018
    with pytest.raises(HubfsmError, match="rank 3 .*no weights"):
        run.download_weights()
    assert run.rejected() == []
    run.finish_pending(timeout=0)
