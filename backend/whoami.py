"""GET /x/whoami: tell a client the address it came from (the helper's and the collector's).

A probe behind NAT has its public address on no interface; it learns it here from a server we
run, never from a third party (issue 12 section 2). The address is the TCP peer as uvicorn
reports it (behind a reverse proxy: the forwarded client address uvicorn accepts from a trusted
proxy, see docs/deployment.md). Nothing is logged or kept.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from probes.publicip import WHOAMI_PATH as _RELATIVE

# The path the probe asks (probes.publicip), as a route.
WHOAMI_PATH = "/" + _RELATIVE


def mount_whoami(app: FastAPI, dns_whoami: str | None = None) -> None:
    """Add GET /x/whoami; `dns_whoami` is a name whose A/AAAA answer is the address of the
    resolver asking (the helper's DNS zone serves `whoami.<zone>`), offered to probes."""

    @app.get(WHOAMI_PATH)
    async def whoami(request: Request) -> Response:
        client = request.client
        if client is None or not client.host:
            return JSONResponse({"error": "client address unknown"}, status_code=503)
        body: dict[str, str] = {"address": client.host}
        if dns_whoami:
            body["dns_whoami"] = dns_whoami
        return JSONResponse(body, headers={"cache-control": "no-store"})
