"""A private CA (trustme) issuing server certificates for any hostname on demand."""

from __future__ import annotations

import ssl
import tempfile
import threading
from pathlib import Path

import trustme


class TestCA:
    """A CA whose PEM file the probe is pointed at (``ca_pem_path``).

    With ``directory`` holding ca.pem + ca.key (written by a previous run), the same CA
    is loaded, so separate server processes can share one trust anchor.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory or tempfile.mkdtemp(prefix="censorscope-ca-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = self.directory / "ca.pem", self.directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            self.ca = trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
        else:
            self.ca = trustme.CA(organization_name="censorscope loopback CA")
            cert_path.write_bytes(self.ca.cert_pem.bytes())
            key_path.write_bytes(self.ca.private_key_pem.bytes())
            key_path.chmod(0o600)
        self.ca_pem_path = str(cert_path)
        self._per_host: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def _context_for(self, *hosts: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*hosts).configure_cert(ctx)
        return ctx

    def context_for_host(self, host: str) -> ssl.SSLContext:
        """A server context whose certificate is valid for ``host`` (cached)."""
        host = host.lower()
        with self._lock:
            if host not in self._per_host:
                self._per_host[host] = self._context_for(host)
            return self._per_host[host]

    def server_context(self, fixed_hosts: list[str] | None = None) -> ssl.SSLContext:
        """A server context: for ``fixed_hosts`` only, or valid for whatever SNI arrives.

        Without SNI (or for fixed_hosts) the certificate covers localhost and 127.0.0.1.
        """
        if fixed_hosts:
            return self._context_for(*fixed_hosts)
        ctx = self._context_for("localhost", "127.0.0.1")

        def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if name:
                sslobj.context = self.context_for_host(name)

        ctx.sni_callback = pick
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx
