"""A ready-made set of loopback servers, shared by the pytest fixtures and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.loopback.blockpage import blockpage_fingerprint
from tests.loopback.certs import TestCA
from tests.loopback.dns_server import FakeDNSServer
from tests.loopback.runner import ServerThread
from tests.loopback.web import WebServer, closed_port

DEFAULT_KEYWORD = "forbidden-keyword"
WRONG_CERT_HOST = "wrong.example"


@dataclass
class LoopbackSuite:
    """Every server the network primitives are tested against, on one loop thread."""

    host: str
    ca: TestCA
    keyword: str
    http: WebServer
    https: WebServer
    https_wrong_name: WebServer
    blockpage: WebServer
    reset_http: WebServer
    reset_https: WebServer
    silent: WebServer
    closer: WebServer
    closed_port: int
    dns: FakeDNSServer | None = None
    thread: ServerThread | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """Where everything listens: the JSON line the CLI prints."""
        fp = blockpage_fingerprint()
        out: dict[str, Any] = {
            "host": self.host,
            "ca_pem": self.ca.ca_pem_path,
            "keyword": self.keyword,
            "http": self.http.address,
            "https": self.https.address,
            "https_wrong_name": self.https_wrong_name.address,
            "wrong_cert_host": WRONG_CERT_HOST,
            "blockpage": self.blockpage.address,
            "blockpage_fingerprint": {"name": fp.name, "pattern": fp.pattern},
            "reset_http": self.reset_http.address,
            "reset_https": self.reset_https.address,
            "silent": self.silent.address,
            "closer": self.closer.address,
            "closed": f"{self.host}:{self.closed_port}",
        }
        if self.dns is not None:
            out["dns"] = self.dns.address
            out["dns_mode"] = self.dns.mode
        return out

    def close(self) -> None:
        if self.thread is not None:
            self.thread.close()


def start_suite(
    host: str = "127.0.0.2",
    *,
    ca: TestCA | None = None,
    keyword: str = DEFAULT_KEYWORD,
    dns: FakeDNSServer | None = None,
) -> LoopbackSuite:
    """Start every server on ``host`` (ports chosen by the kernel) in a background thread."""
    ca = ca or TestCA()
    thread = ServerThread("loopback-suite")
    try:
        suite = LoopbackSuite(
            host=host,
            ca=ca,
            keyword=keyword,
            http=thread.start(WebServer(host)),
            https=thread.start(WebServer(host, ca=ca)),
            https_wrong_name=thread.start(WebServer(host, ca=ca, cert_hosts=[WRONG_CERT_HOST])),
            blockpage=thread.start(WebServer(host, behaviour="blockpage")),
            reset_http=thread.start(WebServer(host, keyword=keyword)),
            reset_https=thread.start(WebServer(host, ca=ca, keyword=keyword)),
            silent=thread.start(WebServer(host, behaviour="silent")),
            closer=thread.start(WebServer(host, behaviour="close")),
            closed_port=closed_port(host),
            dns=thread.start(dns) if dns is not None else None,
            thread=thread,
        )
    except BaseException:
        thread.close()
        raise
    return suite
