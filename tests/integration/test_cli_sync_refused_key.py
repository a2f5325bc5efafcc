"""`hubfsm sync` with a key the hub refuses: the line says what to run next.

A wrong or revoked key in ``HUB_API_KEY`` is the commonest reason a sync fails. Its line
named the 401 and where the records stay, but not how to send them: the sync command to
run with the right key, and on a local hub, how a revoked key's models reach a new one.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.integration.test_cli import hub_model, offline_outbox

WRONG = "Wr0ngKey" * 5 + "00"  # 42 characters, like a HUB API key


def test_sync_with_a_refused_key_names_the_command_to_run_with_the_right_one(
    cli: Any, serve_hub: Callable[..., Any], tmp_path: Path, leaks: Any
) -> None:
    served = serve_hub(tmp_path / "hub")
    model = hub_model(served)
    root = tmp_path / "outbox"
    directory = offline_outbox(root, model, epochs=2)
    leaks.watch(WRONG)

    refused = cli("sync", str(root), "--hub", served.url, env=dict(os.environ, HUB_API_KEY=WRONG))

    assert refused.returncode == 1
    (line,) = [line for line in refused.stdout.splitlines() if "refused the API key" in line]
    assert f"its records stay in {directory}" in line
    command = f"HUB_API_KEY=... hubfsm sync --hub {served.url} {directory}"
    assert f"`{command}`" in line
    assert "hubfsm hub keys transfer" in line
    # As printed, with the key that made the model: delivered.
    words = shlex.split(command.replace("HUB_API_KEY=... ", ""))
    done = cli(*words[1:], env=dict(os.environ, HUB_API_KEY=served.key))
    assert done.returncode == 0, done.stdout + done.stderr
    arrived = requests.get(
        f"{served.url}/v1/models/{model}/metrics", headers={"x-api-key": served.key}, timeout=10
    ).json()["data"]
    assert len(arrived) == 2
