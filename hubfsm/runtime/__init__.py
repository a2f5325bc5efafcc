"""The runtime: the worker and the inline driver shells, the session facade, exits, sync."""
