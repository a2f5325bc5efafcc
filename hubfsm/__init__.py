"""hubfsm: a training-session client for model hubs, built as a sans-I/O state machine."""

from __future__ import annotations

__version__ = "0.1.0"
