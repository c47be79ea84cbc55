"""probes/channels."""
