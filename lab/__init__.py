"""The censor lab: a censored internet in Linux network namespaces (see docs/lab.md).

Imports nothing from probes, analysis or backend: the censor is independent of what it judges.
"""
