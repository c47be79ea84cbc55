"""The control test helper: OONI's web-connectivity helper protocol over FastAPI.

Speaks the same JSON as OONI's oohelperd, so our probe can use OONI's public helpers and
OONI probes can use ours. This module is the HTTP face only: reading and bounding requests,
throttling, status codes and logging. The protocol lives in helper_protocol, the measurement
in helper_measure, the address guard in ssrf, the settings in helper_config.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from backend import serving
from backend.helper_config import HelperConfig
from backend.helper_dnszone import DNSZoneConfig, DNSZoneServer
from backend.helper_echo import EchoConfig, EchoServer
from backend.helper_measure import measure
from backend.helper_protocol import BadRequest, parse_request
from backend.helper_relay import RelayConfig, mount_relay
from backend.http_body import BodyTooLarge, read_capped
from backend.log_text import printable
from backend.serving import ServerLimits
from backend.whoami import mount_whoami
from probes import __version__
from probes.gc_tuning import tuned_gc
from probes.net.addresses import parse_host_port

__all__ = [
    "GREETING",
    "DNSZoneConfig",
    "EchoConfig",
    "HelperConfig",
    "RelayConfig",
    "ServerLimits",
    "create_app",
    "parse_listen",
    "serve",
]

log = logging.getLogger("censorscope.helper")

# oohelperd's greeting; clients probe `GET /` to see whether a helper is alive.
GREETING = {"message": "Hello OONItarian!"}
SERVER_HEADER = f"censorscope-helper/{__version__}"
DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass
class _Load:
    """Control requests in flight; one event loop, so a plain counter is enough."""

    inflight: int = 0


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"server": SERVER_HEADER})


def create_app(
    config: HelperConfig,
    *,
    echo: EchoConfig | None = None,
    relay: RelayConfig | None = None,
    dns_zone: DNSZoneConfig | None = None,
) -> FastAPI:
    """The helper's ASGI app for the given settings (echo ports, DNS zone and relay serve
    http_keyword and message_delivery; their servers start and stop with the app)."""
    app = FastAPI(
        title="censorscope control helper", docs_url=None, redoc_url=None, openapi_url=None
    )
    if relay is not None:
        mount_relay(app, relay)
    mount_whoami(app, f"whoami.{dns_zone.zone.strip('.')}" if dns_zone is not None else None)
    if echo is not None or dns_zone is not None:
        mount_echo(
            app,
            EchoServer(echo or EchoConfig()),
            DNSZoneServer(dns_zone) if dns_zone is not None else None,
        )
    app.router.on_shutdown.append(config.close_resolver_pool)
    load = _Load()
    counter = itertools.count(1)

    @app.get("/")
    async def greet() -> Response:
        return JSONResponse(GREETING, headers={"server": SERVER_HEADER})

    @app.api_route("/", methods=["HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
    async def other_method() -> Response:
        # oohelperd answers 400 to every method but GET and POST (handler.go).
        return _error(400, "the helper answers GET (greeting) and POST (control) only")

    @app.post("/")
    async def control(request: Request) -> Response:
        number = next(counter)
        if load.inflight >= config.max_inflight:
            log.warning("<#%d> throttled: %d requests in flight", number, load.inflight)
            return _error(503, "too many control requests in flight, retry later")
        load.inflight += 1
        started = time.monotonic()
        try:
            return await _control(request, number, config)
        finally:
            load.inflight -= 1
            log.debug("<#%d> done in %.2fs", number, time.monotonic() - started)

    return app


def mount_echo(app: FastAPI, server: EchoServer, zone: DNSZoneServer | None = None) -> None:
    """Run the echo ports (and DNS zone) with the app; tell probes where they are (GET /echo)."""
    for part in (server, zone):
        if part is not None:
            app.router.on_startup.append(part.start)
            app.router.on_shutdown.append(part.stop)

    @app.get("/echo")
    async def echo_info() -> Response:
        info = {**server.info(), **(zone.info() if zone is not None else {})}
        return JSONResponse(info, headers={"server": SERVER_HEADER})


async def _control(request: Request, number: int, config: HelperConfig) -> Response:
    started = time.monotonic()
    try:
        async with asyncio.timeout(config.timeout):  # a slow sender must not hold a slot
            data = await read_capped(request, config.max_request_bytes)
    except BodyTooLarge:
        # 400 as oohelperd (its body reader stops at the limit and the JSON then fails).
        log.info("<#%d> 400 request body over %d bytes", number, config.max_request_bytes)
        return _error(400, f"request body over {config.max_request_bytes} bytes")
    except TimeoutError:
        log.info("<#%d> 408 request body not received in time", number)
        return _error(408, "request body not received in time")
    try:
        req = parse_request(data, max_tcp_endpoints=config.max_tcp_endpoints)
    except BadRequest as exc:
        log.info("<#%d> 400 %s", number, printable(exc))
        return _error(400, str(exc))
    doc = await measure(req, config)
    log.info(
        "<#%d> %s endpoints=%d dns=%s http=%s in %.2fs",
        number,
        printable(req.url),
        len(doc["tcp_connect"]),
        doc["dns"]["failure"] or len(doc["dns"]["addrs"]),
        doc["http_request"]["failure"] or doc["http_request"]["status_code"],
        time.monotonic() - started,
    )
    return Response(
        orjson.dumps(doc), media_type="application/json", headers={"server": SERVER_HEADER}
    )


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) to a (host, port) pair; raises ValueError if malformed."""
    host, port = parse_host_port(listen, 8080)
    if not host or not 0 < port < 65536:
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host, port


def serve(
    listen: str,
    config: HelperConfig,
    *,
    echo: EchoConfig | None = None,
    relay: RelayConfig | None = None,
    dns_zone: DNSZoneConfig | None = None,
    limits: ServerLimits | None = None,
) -> None:
    """Run the helper under uvicorn until interrupted, within `limits` (backend/serving.py)."""
    host, port = parse_listen(listen)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info(
        "control helper on %s:%d resolver=%s allow_private=%s exempt=%s",
        host,
        port,
        config.resolver or "system",
        config.allow_private,
        ",".join(config.exempt_networks) or "-",
    )
    app = create_app(config, echo=echo, relay=relay, dns_zone=dns_zone)
    with tuned_gc():  # hundreds of requests in flight: as a probe's run (probes/gc_tuning.py)
        _run_uvicorn(app, host, port, limits or ServerLimits())


def _run_uvicorn(app: FastAPI, host: str, port: int, limits: ServerLimits) -> None:
    serving.run(
        app,
        limits,
        host=host,
        port=port,
        access_log=False,  # we log one line per control request ourselves
        server_header=False,
        log_level="info",
    )
