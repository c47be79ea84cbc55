"""Loopback servers for tests: fake DNS, HTTP(S) sites, block pages, resets, silence.

Use them in-process (``ServerThread`` runs any of them on a background event loop;
see tests/conftest.py for the fixtures) or as a separate process:

    python -m tests.loopback --host 127.0.0.2 --dns-mode inject_before --zone zone.json

which prints one JSON line saying where everything listens, then serves until killed.
"""

from __future__ import annotations

from tests.loopback.blockpage import Fingerprint, blockpage_body, blockpage_fingerprint
from tests.loopback.certs import TestCA
from tests.loopback.dns_server import BOGON_ANSWERS, DEFAULT_LIES, MODES, FakeDNSServer
from tests.loopback.runner import ServerThread
from tests.loopback.suite import DEFAULT_KEYWORD, WRONG_CERT_HOST, LoopbackSuite, start_suite
from tests.loopback.web import BEHAVIOURS, DEFAULT_TITLE, WebServer, closed_port, reset_socket

__all__ = [
    "BEHAVIOURS",
    "BOGON_ANSWERS",
    "DEFAULT_KEYWORD",
    "DEFAULT_LIES",
    "DEFAULT_TITLE",
    "MODES",
    "WRONG_CERT_HOST",
    "FakeDNSServer",
    "Fingerprint",
    "LoopbackSuite",
    "ServerThread",
    "TestCA",
    "WebServer",
    "blockpage_body",
    "blockpage_fingerprint",
    "closed_port",
    "reset_socket",
    "start_suite",
]
