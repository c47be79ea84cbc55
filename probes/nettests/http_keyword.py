"""http_keyword: is a request carrying a keyword delivered to an echo outside the censor?

For each keyword (the input; a combination `A+B` carries all its parts), each placement
(URL path, query, Host header, body, TLS SNI, DNS name: keyword_placements) and each encoding
the word has there (UTF-8, GB18030, Big5 in the URL and body; IDNA in names), the method follows the
keyword-testing anchors (Citizen Lab's chat-censorship studies; Park and Crandall, "Empirical
study of a national-scale distributed intrusion detection system", DSN 2010):
- a benign control of the same shape and length before, and another after, each on its own
  connection;
- the keyword request, tried again on a mismatch (up to `KEYWORD_TRIES`), each try on an
  endpoint (helper IP:port) that no earlier trigger has tainted (keyword_residual);
- after a failed keyword, the benign control again on the same endpoint at once: when it fails
  too, the censor is stateful (residual censorship) and the path itself is shown to work by
  the controls on the other endpoints.
`blocking` is set only when every keyword try failed while both controls passed; a failure on
an endpoint tainted by another trigger is `residual`, never a verdict. A placement is blocked
when the word is blocked in any of its encodings; its record is that encoding's (`encoding`),
`encodings` says each encoding's outcome and `encoding_results` keeps the others' records.

Outcomes of one exchange: delivered (echo intact), reset, timeout, blockpage (a page instead
of the echo), modified (the echo differs), error, residual; for the DNS name (a query to the
helper's authoritative zone, whose answer is known in advance) injected (another answer).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from probes.fingerprints import FingerprintError, Fingerprints, blocking_matches
from probes.net.addresses import format_host_port, is_ip
from probes.net.dns import resolve
from probes.net.http import JSONClient, aclose, http_exchange, make_client
from probes.nettests.base import Nettest, SetupError
from probes.nettests.keyword_placements import (
    ENCODINGS,
    NAME_PLACEMENTS,
    PLACEMENTS,
    Shape,
    control_word,
    encodings_for,
    shape,
)
from probes.nettests.keyword_residual import (
    RESIDUAL_WINDOW_SECONDS,
    Endpoint,
    TaintFile,
    TaintTracker,
)

# Citizen Lab's keyword tests retry a blocked message a few times before calling it
# blocked; the issue fixes "up to 5 tries on a mismatch".
KEYWORD_TRIES = 5
# Per-exchange budget: a censor that drops instead of resetting shows up as a timeout.
EXCHANGE_TIMEOUT = 5.0


def outcome_of(result_failure: str | None, status: int | None, body: bytes, want: Shape) -> str:
    """One exchange's outcome from what came back."""
    if result_failure is not None:
        if result_failure == "connection_reset":
            return "reset"
        if result_failure == "generic_timeout_error":
            return "timeout"
        return "error"
    try:
        echo = orjson.loads(body)
    except orjson.JSONDecodeError:
        echo = None
    if status == 200 and want.intact(echo):
        return "delivered"
    if status == 200 and isinstance(echo, dict):
        return "modified"
    return "blockpage"


# outcome -> (blocking layer, evidence) for the HTTP placements; SNI resets are TLS's.
_EVIDENCE = {
    "reset": ("tcp_ip", "tcp.rst_injected"),
    "timeout": ("tcp_ip", "tcp.timeout"),
    "blockpage": ("http-diff", "http.blockpage"),
    "modified": ("http-diff", "http.modified"),
    "error": ("http-failure", "http.failure"),
}
_SNI_EVIDENCE = {"reset": ("tls", "tls.sni_reset"), "timeout": ("tls", "tls.timeout")}
_DNS_EVIDENCE = {
    "injected": ("dns", "dns.injected"),
    "timeout": ("dns", "dns.timeout"),
    "error": ("dns", "dns.failure"),
}


def dns_outcome(failure: str | None, addrs: list[str], expected: str) -> str:
    """The outcome of a query to the helper's zone, whose true answer is known in advance."""
    if failure == "generic_timeout_error":
        return "timeout"
    if failure is not None and not addrs:
        return "error"
    return "delivered" if addrs == [expected] else "injected"


class HTTPKeyword(Nettest):
    name = "http_keyword"
    version = "0.2.0"  # 0.2: each encoding a word has (utf-8, gb18030, big5)
    needs_input = False
    keyword_inputs = True  # run_command streams the --keywords file as inputs

    @classmethod
    def default_budget(cls, options: dict[str, Any]) -> float:
        """The per-input budget the method needs when --timeout is unset: every exchange of
        every (placement, encoding) may run to its timeout (two controls, the tries, the
        residual check), and one wait for an untainted endpoint. A fixed 30 s cannot hold one
        censored word whose tries meet a residual window (the GFW's is ~90 s)."""
        placements = list(options.get("placements") or PLACEMENTS)
        n_encodings = len(options.get("encodings") or ENCODINGS)
        tries = int(options.get("keyword_tries") or KEYWORD_TRIES)
        window = options.get("residual_window")
        window = RESIDUAL_WINDOW_SECONDS if window is None else float(window)
        variants = sum(1 if p in NAME_PLACEMENTS else n_encodings for p in placements)
        return variants * (tries + 3) * EXCHANGE_TIMEOUT + window

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.ctx.options
        self.placements = list(opts.get("placements") or PLACEMENTS)
        self.encodings = tuple(opts.get("encodings") or ENCODINGS)
        self.tries = int(opts.get("keyword_tries") or KEYWORD_TRIES)
        window = opts.get("residual_window")  # 0 is a window too: taint nothing
        self.window = RESIDUAL_WINDOW_SECONDS if window is None else float(window)
        self.exchange_timeout = min(EXCHANGE_TIMEOUT, self.ctx.timeout)
        self.tracker: TaintTracker | None = None
        self.tls_tracker: TaintTracker | None = None
        self._taints = TaintFile()
        self._client: Any = None
        self._host = ""
        self._zone: tuple[str, int, str] | None = None  # (zone, DNS port, true answer)
        self.fingerprints: Fingerprints | None = None

    async def setup(self) -> None:
        try:
            if self.ctx.fingerprint_files:
                self.fingerprints = Fingerprints.from_files(self.ctx.fingerprint_files)
        except (FingerprintError, OSError) as exc:
            raise SetupError(f"fingerprints: {exc}") from exc
        for placement in self.placements:
            if placement not in PLACEMENTS:
                raise SetupError(f"unknown placement {placement!r} (known: {PLACEMENTS})")
        for encoding in self.encodings:
            if encoding not in ENCODINGS:
                raise SetupError(f"unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
        if not self.ctx.helpers:
            raise SetupError("http_keyword needs --helper URL (a censorscope helper with echo)")
        base = self.ctx.helpers[0].rstrip("/")
        self._host = urlsplit(base).hostname or ""
        if not is_ip(self._host):
            raise SetupError(f"--helper {base}: give the helper by IP address")
        info = await self._echo_info(base)
        tcp = [(self._host, int(p)) for p in info.get("tcp_ports") or []]
        tls = [(self._host, int(p)) for p in info.get("tls_ports") or []]
        if not tcp:
            raise SetupError(f"--helper {base}: no echo ports (start it with --echo-ports)")
        if "dns" in self.placements:
            if not info.get("dns_zone"):
                if self.ctx.options.get("placements"):
                    raise SetupError(f"--helper {base}: no DNS zone (start it with --dns-zone)")
                self.placements.remove("dns")
                self.warnings.append("the helper serves no DNS zone: the dns placement is skipped")
            else:
                zone = str(info["dns_zone"])
                self._zone = (zone, int(info["dns_port"]), str(info["dns_answer"]))
        self.tracker = TaintTracker(tcp, self.window)
        saved = self._taints.load()
        if "sni" in self.placements:
            if not tls:
                raise SetupError(f"--helper {base}: no TLS echo ports (--tls-echo-ports)")
            self.tls_tracker = TaintTracker(tls, self.window)
        for tracker in (self.tracker, self.tls_tracker):
            if tracker is not None and self.window > 0:
                tracker.restore(saved)
        self._client = make_client(verify=False)

    async def _echo_info(self, base: str) -> dict[str, Any]:
        client = JSONClient(ca_file=self.ctx.ca_file)
        try:
            reply = await client.get_json(f"{base}/echo", timeout=self.ctx.timeout)
        finally:
            await client.aclose()
        # OONI's oohelperd answers every GET with its greeting (400 before April 2024).
        if reply.status_code != 200 or not isinstance(reply.data, dict) or "message" in reply.data:
            raise SetupError(
                f"--helper {base}: no echo endpoints ({reply.failure or reply.status_code}); "
                "http_keyword needs a censorscope helper (OONI's oohelperd has none)"
            )
        return reply.data

    async def close(self) -> None:
        taints: dict[str, float] = {}
        for tracker in (self.tracker, self.tls_tracker):
            if tracker is not None:
                taints.update(tracker.export())
        if taints:
            self._taints.save(taints)  # the next run (a scheduled job's) avoids them
        await aclose(self._client)

    async def _exchange(
        self, tracker: TaintTracker, req: Shape, t_zero: float, ep: Endpoint | None = None
    ) -> tuple[dict[str, Any], Endpoint]:
        """Send `req` on `ep` (or a clean endpoint) and classify what came back."""
        chosen = ep or await tracker.acquire()
        started = time.monotonic()
        try:
            res = await http_exchange(
                chosen[0], chosen[1], method=req.method, target=req.target, host=req.host,
                body=req.body, tls_sni=req.sni, timeout=self.exchange_timeout,
                t_zero=t_zero, client=self._client,
            )  # fmt: skip
        finally:
            if ep is None:
                tracker.release(chosen)
        outcome = outcome_of(res.failure, res.status_code, res.body, req)
        foreign_taint = ep is None and tracker.tainted_during(chosen, started, time.monotonic())
        if outcome != "delivered" and foreign_taint:
            outcome = "residual"
        matched: list[str] = []
        if outcome in ("blockpage", "modified") and self.fingerprints is not None:
            found = self.fingerprints.match_http(res.body, res.headers)
            matched = sorted({m.name for m in blocking_matches(found)})
        record = {
            "outcome": outcome,
            "fingerprints": matched,
            "failure": res.failure,
            "address": f"{chosen[0]}:{chosen[1]}",
            "status_code": res.status_code,
            "requests": res.requests,
            "network_events": res.network_events,
            "t0": res.t0,
            "t": res.t,
        }
        return record, chosen

    async def _dns_exchange(self, req: Shape, t_zero: float) -> dict[str, Any]:
        """Ask the helper's zone server for the name in `req` (through the censor's path)."""
        assert self._zone is not None
        _zone, port, expected = self._zone
        res = await resolve(
            req.host,
            resolver=format_host_port(self._host, port),
            timeout=self.exchange_timeout,
            t_zero=t_zero,
        )
        return {
            "outcome": dns_outcome(res.failure, res.addrs, expected),
            "failure": res.failure,
            "address": format_host_port(self._host, port),
            "query": req.host,
            "addrs": res.addrs,
            "queries": res.queries,
            "t0": res.t0,
            "t": res.t,
        }

    async def _dns_placement(self, word: str, t_zero: float) -> dict[str, Any]:
        """The dns placement: no connection state to taint, so no rotation, same method."""
        assert self._zone is not None
        zone = self._zone[0]
        req = shape("dns", word, zone)
        benign = shape("dns", control_word("dns", word), zone)
        before = await self._dns_exchange(benign, t_zero)
        tries: list[dict[str, Any]] = []
        for _ in range(self.tries):
            tries.append(await self._dns_exchange(req, t_zero))
            if tries[-1]["outcome"] == "delivered":
                break
        after = await self._dns_exchange(benign, t_zero)
        return self._verdict(req, word, before, tries, after, None)

    async def _placement(self, placement: str, word: str, t_zero: float) -> dict[str, Any]:
        """Every encoding of the word at `placement`; the first blocked one decides."""
        variants = []
        for encoding in encodings_for(placement, word, self.encodings):
            variants.append(await self._variant(placement, word, encoding, t_zero))
        shown = next((v for v in variants if v["blocking"] not in (False, None)), None)
        shown = shown or next((v for v in variants if v["blocking"] is None), variants[0])
        record = dict(shown)
        record["encodings"] = {
            v["encoding"]: {k: v[k] for k in ("outcome", "blocking", "blocking_detail")}
            for v in variants
        }
        record["encoding_results"] = {
            v["encoding"]: v for v in variants if v["encoding"] != shown["encoding"]
        }
        return record

    async def _variant(
        self, placement: str, word: str, encoding: str, t_zero: float
    ) -> dict[str, Any]:
        if placement == "dns":
            return await self._dns_placement(word, t_zero)
        tracker = self.tls_tracker if placement == "sni" else self.tracker
        assert tracker is not None
        req = shape(placement, word, encoding=encoding)
        benign = shape(placement, control_word(placement, word, encoding), encoding=encoding)
        before, _ = await self._exchange(tracker, benign, t_zero)
        tries: list[dict[str, Any]] = []
        residual_check = None
        for _ in range(self.tries):
            record, ep = await self._exchange(tracker, req, t_zero)
            tries.append(record)
            if record["outcome"] == "delivered":
                break
            if record["outcome"] != "residual":
                tracker.taint(ep)
                if residual_check is None and record["outcome"] in ("reset", "timeout"):
                    residual_check, _ = await self._exchange(tracker, benign, t_zero, ep)
        after, _ = await self._exchange(tracker, benign, t_zero)
        return self._verdict(req, word, before, tries, after, residual_check)

    def _verdict(
        self,
        req: Shape,
        word: str,
        before: dict[str, Any],
        tries: list[dict[str, Any]],
        after: dict[str, Any],
        residual_check: dict[str, Any] | None,
    ) -> dict[str, Any]:
        placement = req.placement
        fresh = [t for t in tries if t["outcome"] != "residual"]
        controls_ok = before["outcome"] == after["outcome"] == "delivered"
        delivered = any(t["outcome"] == "delivered" for t in tries)
        blocking: Any
        if delivered:
            outcome, blocking, detail = "delivered", False, None
        elif not fresh or not controls_ok:
            outcome, blocking, detail = (fresh or tries)[-1]["outcome"], None, None
        else:
            outcome = fresh[0]["outcome"]
            table = _EVIDENCE
            if placement == "sni" and outcome in _SNI_EVIDENCE:
                table = _SNI_EVIDENCE
            elif placement == "dns":
                table = _DNS_EVIDENCE
            blocking, evidence = table[outcome]
            detail = f"{evidence}.{placement}"
        stateful = residual_check is not None and residual_check["outcome"] != "delivered"
        return {
            "placement": placement,
            "word": word,
            "encoding": req.encoding,
            "control_word": control_word(placement, word, req.encoding),
            "outcome": outcome,
            "blocking": blocking,
            "blocking_detail": detail,
            "control_before": before,
            "control_after": after,
            "keyword_tries": tries,
            "residual_check": residual_check,
            "residual_observed": stateful,
        }

    async def measure(self, input_: str | None) -> dict[str, Any]:
        if not input_:
            raise ValueError("http_keyword measures one keyword per input")
        parts = [p for p in input_.split("+") if p]
        word = " ".join(parts)
        t_zero = time.monotonic()
        results = [await self._placement(p, word, t_zero) for p in self.placements]
        blocked = [r for r in results if r["blocking"] not in (False, None)]
        if blocked:
            blocking, detail = blocked[0]["blocking"], blocked[0]["blocking_detail"]
        elif any(r["blocking"] is None for r in results):
            blocking, detail = None, None
        else:
            blocking, detail = False, None
        return {
            "keyword": input_,
            "keyword_parts": parts,
            "residual_window": self.window,
            "placements": {r["placement"]: r for r in results},
            "blocked_placements": [r["placement"] for r in blocked],
            "blocking": blocking,
            "blocking_detail": detail,
        }
