"""probes/net."""
