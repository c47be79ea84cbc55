"""The measurement collector: OONI's collector protocol (ooni/spec bk-003) plus bearer tokens.

    POST /report                  open a report      -> {"report_id", "supported_formats", ...}
    POST /report/{id}             submit one measurement {"format": "json", "content": {...}}
    POST /report/{id}/close       close the report
    GET  /health                  liveness and the number of stored measurements
    GET  /stats                   the token's vantage: its stored measurements

Every POST needs `Authorization: Bearer TOKEN`; a token speaks for one vantage (see
collector_tokens), and a measurement whose `annotations.vantage` is another vantage is refused
with 403. A submission is answered 200 only once its line is fsynced in the store; a retried
measurement (same `measurement_uid`) is answered 200 with `"duplicate": true` and not stored
again (see collector_store). Refusals are 4xx with `{"error": reason}` naming the problem.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from backend import serving
from backend.collector_store import CollectorStore, Conflict, Session
from backend.collector_tokens import TokenFile, TokenFileError
from backend.collector_validate import Invalid, check_open, check_submission, parse_json_object
from backend.helper import parse_listen
from backend.log_text import printable
from backend.serving import ServerLimits
from backend.whoami import mount_whoami
from probes import __version__
from probes.measurement import new_report_id, ooni_time

__all__ = ["CollectorConfig", "TokenFileError", "create_app", "serve"]

log = logging.getLogger("censorscope.collector")

SERVER_HEADER = f"censorscope-collector/{__version__}"
OPEN_BODY_LIMIT = 64 * 1024
_CC = re.compile(r"^[A-Z]{2}$")
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass
class CollectorConfig:
    """Where the collector keeps measurements and tokens, and its limits."""

    data: Path
    tokens: Path
    max_measurement_bytes: int = 8 * 1024 * 1024
    max_open_files: int = 256
    writer_threads: int = 64
    token_check_interval: float = 0.5


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload),
        status_code=status,
        media_type="application/json",
        headers={"server": SERVER_HEADER, **(headers or {})},
    )


def _error(status: int, message: str) -> Response:
    headers = {"www-authenticate": 'Bearer realm="censorscope"'} if status == 401 else None
    return _json(status, {"error": message}, headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """At most `limit` bytes; refuses early on a Content-Length that says more (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Invalid(f"request body over {limit} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Invalid(f"request body over {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


class _Auth:
    """Bearer token -> vantage, or the refusal to send."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    def vantage(self, request: Request) -> str:
        header = request.headers.get("authorization")
        if not header:
            raise Invalid("missing 'Authorization: Bearer TOKEN'", status=401)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Invalid("the Authorization header must be 'Bearer TOKEN'", status=401)
        vantage = self.tokens.vantage_of(token.strip())
        if vantage is None:
            raise Invalid("unknown token", status=401)
        return vantage


def create_app(config: CollectorConfig) -> FastAPI:
    """The collector's ASGI app; the store's index is rebuilt when the app starts."""
    tokens = TokenFile(config.tokens, check_interval=config.token_check_interval)
    auth = _Auth(tokens)
    store = CollectorStore(
        config.data, max_open_files=config.max_open_files, threads=config.writer_threads
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        summary = await asyncio.to_thread(store.rebuild)
        log.info(
            "collector store %s: %d measurements in %d files, %d open reports, %d tokens",
            config.data,
            summary.measurements,
            summary.files,
            sum(1 for s in store.sessions.values() if not s.closed),
            len(tokens),
        )
        for problem in summary.problems:
            log.warning("store: %s", problem)
        if summary.duplicates:
            log.warning("store: %d duplicated measurement_uid lines", summary.duplicates)
        yield
        store.close()

    app = FastAPI(
        title="censorscope collector",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.store = store
    mount_whoami(app)

    @app.get("/health")
    async def health() -> Response:
        return _json(200, {"status": "ok", "measurements": store.total})

    @app.get("/stats")
    async def stats(request: Request) -> Response:
        # A vantage sees its own figure only: which vantages exist is not for others to learn
        # (publish may hide an at-risk vantage's name; the collector must not list it).
        try:
            vantage = auth.vantage(request)
        except Invalid as exc:
            return _refuse(exc, "stats")
        mine = store.counts.get(vantage, 0)
        return _json(200, {"measurements": mine, "vantages": {vantage: mine}})

    @app.post("/report")
    async def open_report(request: Request) -> Response:
        try:
            vantage = auth.vantage(request)
            meta = check_open(
                parse_json_object(await _read_body(request, OPEN_BODY_LIMIT), "request body")
            )
        except Invalid as exc:
            return _refuse(exc, "open")
        cc = meta["probe_cc"] if _CC.match(meta["probe_cc"]) else "ZZ"
        report_id = new_report_id(meta["test_name"], cc, meta["probe_asn"])
        session = Session(
            report_id=report_id,
            vantage=vantage,
            test_name=meta["test_name"],
            opened=ooni_time(datetime.now(UTC)),
            meta=meta,
        )
        try:
            await asyncio.to_thread(store.open_session, session)
        except OSError as exc:
            log.error("could not record a new report: %s", exc)
            if exc.errno in _NO_SPACE:
                return _error(507, "the collector's disk is full, retry later")
            return _error(503, "could not open a report now, retry later")
        log.info("opened %s for %s (%s)", report_id, vantage, meta["test_name"])
        return _json(
            200,
            {
                "backend_version": __version__,
                "report_id": report_id,
                "supported_formats": ["json"],
            },
        )

    def _session(request: Request, report_id: str) -> tuple[Session, str]:
        vantage = auth.vantage(request)
        session = store.sessions.get(report_id)
        if session is None:
            raise Invalid(f"no open report {report_id[:80]!r}: open one with POST /report", 404)
        if session.vantage != vantage:
            raise Invalid("this report belongs to another vantage", status=403)
        if session.closed:
            raise Invalid(f"report {report_id!r} is closed: open a new one", status=409)
        return session, vantage

    @app.post("/report/{report_id}")
    async def submit(report_id: str, request: Request) -> Response:
        try:
            session, vantage = _session(request, report_id)
            body = await _read_body(request, config.max_measurement_bytes)
            sub = check_submission(parse_json_object(body, "request body"))
            if sub.vantage != vantage:
                raise Invalid(
                    f"content.annotations.vantage {sub.vantage!r} is not this token's vantage",
                    status=403,
                )
            if sub.test_name != session.test_name:
                raise Invalid(
                    f"content.test_name {sub.test_name!r}: this report is {session.test_name!r}"
                )
            if sub.report_id != session.report_id:
                # Where a line is filed comes from the report it was posted to, never from its
                # content: a vantage cannot write into another report's file.
                raise Invalid(
                    f"content.report_id {sub.report_id!r} is not the report it was posted to "
                    f"({session.report_id!r}): set it to the report_id POST /report answered"
                )
            stored = await store.submit(sub, session)
        except Invalid as exc:
            return _refuse(exc, report_id)
        except Conflict:
            return _error(409, "content.measurement_uid: already stored for another vantage")
        except OSError as exc:
            # Nothing of it is stored (the store cuts a failed write back): the probe keeps it.
            log.error("%s: could not store a measurement: %s", report_id, exc)
            if exc.errno in _NO_SPACE:
                return _error(507, "the collector's disk is full, retry later")
            return _error(503, "could not store the measurement now, retry later")
        return _json(200, {"measurement_uid": sub.uid, "duplicate": not stored})

    @app.post("/report/{report_id}/close")
    async def close(report_id: str, request: Request) -> Response:
        try:
            session, _vantage = _session(request, report_id)
        except Invalid as exc:
            return _refuse(exc, report_id)
        await asyncio.to_thread(store.close_session, session)
        return _json(200, {})

    return app


def _refuse(exc: Invalid, where: str) -> Response:
    # `where` is a report id from the URL path: a client's text, escaped for the log line.
    log.info("%s: %d %s", printable(where, 80), exc.status, printable(exc))
    return _error(exc.status, str(exc))


def serve(listen: str, config: CollectorConfig) -> None:
    """Run the collector under uvicorn until interrupted."""
    host, port = parse_listen(listen)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(config)
    log.info("collector on %s:%d data=%s tokens=%s", host, port, config.data, config.tokens)
    # No per-client request rate and no per-client connection cap: an uploader posts one
    # request per measurement and shows a token, and a whole fleet may sit behind one NAT.
    # The read timeouts and the total connection cap apply (backend/serving.py).
    serving.run(
        app,
        ServerLimits(client_rate=0, max_connections=2000, max_connections_per_client=2000),
        host=host,
        port=port,
        access_log=False,
        server_header=False,
        log_level="warning",
        backlog=2048,
    )
