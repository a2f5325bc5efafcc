"""Transports for hubfsm: real HTTP, handler functions in the process, and seeded faults."""
