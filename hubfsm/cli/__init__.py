"""The ``hubfsm`` command line."""
