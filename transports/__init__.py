"""Transports for hubfsm: real HTTP, an in-memory hub, and a fault-injecting wrapper."""
