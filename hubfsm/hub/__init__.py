"""A reference hub: the HUB REST API over a store, in memory or served over HTTP.

The client never needs it at run time; tests, simulations and ``hubfsm hub serve`` do.
"""
