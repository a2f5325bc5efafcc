"""Masking of secrets before they reach a repr, a log line or an error message."""

from __future__ import annotations

__all__ = ["mask_key"]

_VISIBLE = 4


def mask_key(key: str) -> str:
    """Hide all but the last four characters of a secret.

    Args:
        key: The secret, typically an API key.

    Returns:
        The key with every character but the last four replaced by ``*``; a key of
        four characters or fewer is masked entirely, since its tail would be all of it.
    """
    if len(key) <= _VISIBLE:
        return "*" * len(key)
    return "*" * (len(key) - _VISIBLE) + key[-_VISIBLE:]
