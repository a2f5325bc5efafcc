"""Deterministic simulation: worlds, fault profiles, invariants, crash and HTTP worlds."""
