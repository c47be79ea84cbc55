"""web_connectivity: is a URL reachable from here, and if not, which layer was interfered with?

Steps (web_connectivity 0.5, probe-cli webconnectivitylte, in our own code): resolve the URL's
host with the probe's resolver; ask the control helper for its view while a flow runs per
address (TCP connect, and the TLS handshake for the name: for an http:// URL on port 80 also
one on 443, which validates the address); an HTTP(S) GET following redirects (at most 10),
every hop its own transaction tagged with its redirect depth; then the helper's addresses our
DNS did not give get a flow each, and, when the control alone cannot tell, a reference page is
fetched (ours). Every record carries ``transaction_id`` and 0.5's tags, and the verdict comes
from `web_connectivity_v05.analyze_v05`, which reads only these test keys, so the same code
re-derives verdicts from stored measurements.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from probes.fingerprints import FingerprintError, Fingerprints
from probes.net.addresses import is_ip
from probes.net.dns import QUERY_ANY, DNSResult, resolve_retrying
from probes.net.http import DEFAULT_HEADERS, http_get
from probes.net.packets import FlowRecorder, capture_unavailable, pcap_path
from probes.net.records import Transactions
from probes.net.tcp import tcp_connect, tcp_record
from probes.net.tls import tls_handshake
from probes.nettests.base import EXIT_HELPER_UNREACHABLE, Nettest, SetupError
from probes.nettests.control import SAME_ASN_FEATURE, ControlClient, note_degraded
from probes.nettests.wc_observations import tag_depth
from probes.nettests.web_connectivity_analysis import is_bogon
from probes.nettests.web_connectivity_v05 import analyze_v05, helper_dns_lost

# Share of the per-input budget given to each step; the helper's own budget is similar.
DNS_TIMEOUT_SHARE = 0.2
CONNECT_TIMEOUT_SHARE = 0.2
DEFAULT_PORTS = {"http": 80, "https": 443}
# webconnectivitylte stops after 10 redirects and marks the last response failed.
MAX_REDIRECTS = 10
# The helper's own addresses we also try (ts-017 E005); 0.5 tries them all, a handful is
# enough to see whether the real servers are reachable.
MAX_HELPER_ADDRESSES = 4
REFERENCE_TIMEOUT_SHARE = 0.3
# Connectivity flows to a redirect host's other addresses (E002), at most this many per input.
MAX_REDIRECT_FLOWS = 8
# Retries, so that one lost datagram does not decide a verdict: a query that timed out is asked
# once more (probes.net.dns.resolve_retrying); a busy helper is asked again by ControlClient.
# Packet capture (RST evidence, docs/methodology.md) is opt-in here: option `packet_capture`,
# or `pcap_dir` (`--pcap DIR`). One capture costs ~5.5 ms of CPU (a sniffer thread, a BPF
# socket, scapy's dissection) and 50 ms of drain, against ~1 ms budgeted per input at 200/s.
CAPTURE_DEFAULT = False


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class WebConnectivity(Nettest):
    name = "web_connectivity"
    # The procedure and keys of OONI's web_connectivity 0.5.28 (webconnectivitylte, classic
    # engine): docs/methodology.md. Measurements below 0.5 are re-derived with v0.4's rules.
    # 0.5.29: the body fetch's byte curve (bytes_received_cumulative) and `http.stalled`.
    version = "0.5.29"

    async def setup(self) -> None:
        try:
            self.fingerprints = (
                Fingerprints.from_files(self.ctx.fingerprint_files)
                if self.ctx.fingerprint_files
                else None
            )
        except (FingerprintError, OSError) as exc:
            raise SetupError(f"fingerprints: {exc}") from exc
        self.control = ControlClient.for_context(self.ctx)
        self.exit_status = 0
        self.pcap_dir = self.ctx.options.get("pcap_dir")
        opted = self.ctx.options.get("packet_capture", CAPTURE_DEFAULT or bool(self.pcap_dir))
        self.capture = bool(opted)
        if self.capture and (why := capture_unavailable()):
            self.warnings.append(f"packet capture unavailable: {why}")
        problem = await self.control.choose()
        if problem:
            self.warnings.append(
                f"control helper unreachable ({problem}); "
                "measurements record control_failure and blocking null"
            )
            self.exit_status = EXIT_HELPER_UNREACHABLE

    async def close(self) -> None:
        await self.control.aclose()

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        try:
            parts = urlsplit(input_)
            _ = parts.port
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            return "needs an http:// or https:// URL with a host"
        return None

    async def _resolve(self, host: str, t_zero: float) -> list[DNSResult]:
        """The host's addresses; a query that timed out is asked once more (every attempt is
        recorded).

        The system resolver makes one getaddrinfo lookup for both families, recorded as one
        "ANY" query as OONI's probe does (a family the name lacks is no failure: OONI's pipeline
        reads any failed system query as DNS interference). A configured resolver gets an A
        and an AAAA query, each recorded with its own outcome.
        """
        timeout = self.ctx.timeout * DNS_TIMEOUT_SHARE
        query_types = ("A", "AAAA") if self.ctx.resolver else (QUERY_ANY,)
        return list(
            await asyncio.gather(
                *(
                    resolve_retrying(
                        host,
                        query_type=query_type,
                        resolver=self.ctx.resolver,
                        timeout=timeout,
                        t_zero=t_zero,
                    )
                    for query_type in query_types
                )
            )
        )

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        recorder = FlowRecorder(
            enabled=self.capture, pcap=pcap_path(self.pcap_dir, self.name, input_)
        )
        async with recorder:  # stops the capture even when the input is abandoned
            keys = await self._measure(input_, recorder)
        # Evidence only: the v0.4 verdict above never reads it (OONI agreement).
        keys.update(recorder.keys(detail=True))
        return keys

    def _tag_lookups(self, results: list[DNSResult], tx: Transactions) -> list[dict[str, Any]]:
        """The lookup's query records (getaddrinfo's one, or a resolver's A and AAAA with
        their retries) under one transaction, tagged as 0.5 does."""
        queries: list[dict[str, Any]] = []
        txid = tx.new_id()
        for result in results:
            for query in result.queries:
                query.update(transaction_id=txid, tags=tx.tags())
                queries.append(query)
        return queries

    async def _flow(
        self,
        ip: str,
        port: int,
        sni: str | None,
        tx: Transactions,
        keys: dict[str, Any],
        t_zero: float,
        *,
        fetch_body: bool,
        classic: bool,
        depth: int = 0,
    ) -> bool:
        """One endpoint's connect (and TLS handshake with ``sni``), one transaction; True when
        the endpoint accepted the connection."""
        txid = tx.new_id()
        tags = tx.tags(fetch_body=fetch_body, classic=classic, depth=depth)
        timeout = self.ctx.timeout * CONNECT_TIMEOUT_SHARE
        if sni is None:
            connect = await tcp_connect(ip, port, timeout=timeout, t_zero=t_zero)
            record, ok = connect.record, connect.failure is None
        else:
            tls = await tls_handshake(
                ip, port, sni, timeout=timeout, t_zero=t_zero, ca_file=self.ctx.ca_file
            )
            ok = tls.connected
            record = tcp_record(ip, port, None if ok else tls.failure, tls.t0, tls.tcp_t)
            if ok:
                tls.record.update(transaction_id=txid, tags=tags)
                keys["tls_handshakes"].append(tls.record)
        record.update(transaction_id=txid, tags=tags)
        keys["tcp_connect"].append(record)
        return ok

    async def _measure(self, input_: str, recorder: FlowRecorder) -> dict[str, Any]:
        parts = urlsplit(input_)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or DEFAULT_PORTS[scheme]
        # An http:// URL on the default port: also a TLS handshake on 443 per address, which
        # proves (or not) that the address serves the name (ts-017 E001, as 0.5 does).
        validate_port = 443 if scheme == "http" and parts.port is None else None
        sni = host if scheme == "https" else None
        t_zero = time.monotonic()
        tx = Transactions()
        keys: dict[str, Any] = {
            "agent": "redirect",
            "client_resolver": self.resolver_ip or None,
            "retries": None,
            "socksproxy": None,
            "queries": [],
            "tcp_connect": [],
            "tls_handshakes": [],
            "requests": [],
            "network_events": [],
            "dns_experiment_failure": None,
            "http_experiment_failure": None,
            "control_failure": None,
            "control": {},
        }
        # 1. DNS with the probe's resolver (which may be the censored one).
        if is_ip(host):
            addrs = [host.strip("[]")]
        else:
            results = await self._resolve(host, t_zero)
            keys["queries"].extend(self._tag_lookups(results, tx))
            addrs = []
            for result in results:
                addrs.extend(a for a in result.addrs if a not in addrs)
            failures = [r.failure for r in results]
            if not addrs:
                # As OONI: the first query's failure (getaddrinfo's, or A's) stands for DNS.
                keys["dns_experiment_failure"] = failures[0] if failures else "dns_no_answer"
        endpoints = [_endpoint(ip, port) for ip in addrs]
        if validate_port is not None:
            endpoints += [_endpoint(ip, validate_port) for ip in addrs]
        # Before the first SYN: the connects' and the fetch's flows (same addresses and port).
        await recorder.start(addrs, port)

        # 2. The control request, and a flow per address (0.5's connectivity checks).
        control_task = asyncio.create_task(self.control.measure(input_, endpoints, DEFAULT_HEADERS))
        flows = [
            self._flow(ip, port, sni, tx, keys, t_zero, fetch_body=True, classic=True)
            for ip in addrs
        ]
        if validate_port is not None:
            flows += [
                self._flow(
                    ip, validate_port, host, tx, keys, t_zero, fetch_body=False, classic=True
                )
                for ip in addrs
            ]
        oks = (await asyncio.gather(*flows))[: len(addrs)]
        reachable = [ip for ip, ok in zip(addrs, oks, strict=True) if ok]

        # 3. HTTP(S) GET through our own DNS answers, following redirects; every hop is its
        # own transaction at its redirect depth.
        final_body: bytes | None = None
        if addrs and not reachable:
            # Every connect failed: the flows above are the evidence, and a fetch would only
            # wait out the same timeouts again.
            first = next((c for c in keys["tcp_connect"] if c["status"]["failure"]), None)
            keys["http_experiment_failure"] = first["status"]["failure"] if first else None
        elif addrs:
            first_host = host.lower()
            ordered = reachable + [a for a in addrs if a not in reachable]

            hop_addresses: dict[str, list[str]] = {}

            async def resolve(name: str) -> list[str]:
                if name.lower() == first_host:
                    found = ordered
                elif is_ip(name):
                    found = [name.strip("[]")]
                else:
                    found_results = await self._resolve(name, t_zero)
                    keys["queries"].extend(self._tag_lookups(found_results, tx))
                    found = []
                    for result in found_results:
                        found.extend(a for a in result.addrs if a not in found)
                hop_addresses[name.lower()] = found
                return found

            http = await http_get(
                input_,
                resolve=resolve,
                timeout=self.ctx.timeout * 0.5,
                t_zero=t_zero,
                headers=DEFAULT_HEADERS,
                ca_file=self.ctx.ca_file,
                max_redirects=MAX_REDIRECTS,
                transactions=tx,
            )
            keys["requests"] = http.requests
            keys["network_events"] = http.network_events
            keys["http_experiment_failure"] = http.failure
            keys["tcp_connect"].extend(tx.tcp_connect)
            keys["tls_handshakes"].extend(http.tls_handshakes)
            if http.failure is None:
                final_body = http.body
                if self.ctx.options.get("http3"):
                    await self._http3(http, keys, t_zero)
            await self._redirect_flows(http.requests, hop_addresses, tx, keys, t_zero)
        elif keys["dns_experiment_failure"] is None:
            keys["dns_experiment_failure"] = "dns_no_answer"

        await recorder.stop()
        control = await control_task
        if helper_dns_lost({"control": control.control}):
            # The helper lost its DNS answer (a datagram, a timeout): ask once more, as the
            # probe does its own lookups, rather than decide on a partial control.
            again = await self.control.measure(input_, endpoints, DEFAULT_HEADERS)
            if again.failure is None and not helper_dns_lost({"control": again.control}):
                control = again
            keys["x_control_asked_again"] = True
        keys["x_control_request"] = {
            "http_request": input_,
            "http_request_headers": {k: [v] for k, v in DEFAULT_HEADERS.items()},
            "tcp_connect": endpoints,
        }
        keys["control"] = control.control
        keys["control_failure"] = control.failure
        keys["x_th_runtime"] = control.runtime
        if (control.control.get("dns") or {}).get("addrs"):  # oohelperd before Aug 2022: no ip_info
            note_degraded(keys, control.control, {"ip_info": SAME_ASN_FEATURE})

        # 4. The helper's addresses that our DNS did not give (ts-017 E005): a flow each, so
        # that blocking of the real addresses shows even when the DNS lied.
        # A private address from the helper is tried only when ours were private too (a lab,
        # an intranet): a helper must not steer the probe into its own network.
        private_ok = bool(addrs) and all(is_bogon(a) for a in addrs)
        th_addrs = [
            a
            for a in (control.control.get("dns") or {}).get("addrs") or []
            if isinstance(a, str) and a not in addrs and (private_ok or not is_bogon(a))
        ][:MAX_HELPER_ADDRESSES]
        if th_addrs:
            await asyncio.gather(
                *(
                    self._flow(ip, port, sni, tx, keys, t_zero, fetch_body=False, classic=False)
                    for ip in th_addrs
                )
            )
        verdict = analyze_v05(keys, url=input_, fingerprints=self.fingerprints)
        # 5. Ours: a reference page to compare the fetched one with, only when it can change
        # the verdict (docs/methodology.md "reference page").
        if verdict.wants_reference and final_body is not None:
            reference = await self._reference(input_, host, addrs, th_addrs, keys, t_zero)
            if reference is not None:
                keys["x_reference"] = reference
                verdict = analyze_v05(keys, url=input_, fingerprints=self.fingerprints)
        keys.update(verdict.as_test_keys())
        return keys

    async def _http3(self, http: Any, keys: dict[str, Any], t_zero: float) -> None:
        """--http3: the final page again over HTTP/3 when its HTTPS response advertised h3
        (Alt-Svc), from the address that served it (``x_http3_request``; the verdict is not
        changed: docs/methodology.md)."""
        from probes.net.http3 import alt_svc_h3, http3_get, https_rr_h3
        from probes.net.https_records import https_query_name

        alt_svc = next((v for k, v in http.headers.items() if k.lower() == "alt-svc"), "")
        port = alt_svc_h3(alt_svc)
        url = http.final_url or ""
        if not url.startswith("https://") or not http.address:
            return
        discovery: dict[str, Any] = {"alt_svc": alt_svc, "discovered_by": "alt-svc"}
        if port is None:
            # No Alt-Svc: the name's HTTPS record (RFC 9460) may offer h3 (browsers ask it).
            parts = urlsplit(url)
            resolver = self.ctx.resolver or _system_nameserver()
            if not resolver or not parts.hostname or is_ip(parts.hostname):
                return
            lookup = await resolve_retrying(
                https_query_name(parts.hostname, parts.port or 443), query_type="HTTPS",
                resolver=resolver, timeout=self.ctx.timeout * 0.1, t_zero=t_zero,
            )  # fmt: skip
            port = https_rr_h3(lookup.queries, parts.port or 443)
            discovery.update(discovered_by="https-rr", queries=lookup.queries)
            if port is None:
                return
        ip = http.address.rpartition(":")[0].strip("[]")
        found = await http3_get(
            ip, int(port), url, timeout=self.ctx.timeout * 0.2, t_zero=t_zero,
            ca_file=self.ctx.ca_file,
        )  # fmt: skip
        keys["x_http3_request"] = {**found.record(url, f"{http.address}"), **discovery}

    async def _redirect_flows(
        self,
        requests: list[dict[str, Any]],
        hop_addresses: dict[str, list[str]],
        tx: Transactions,
        keys: dict[str, Any],
        t_zero: float,
    ) -> None:
        """Connectivity on each redirect (ts-017 E002): a flow to every address of a redirect
        hop's host that the GET did not try, tagged with the hop's depth."""
        tried = {(c["ip"], c["port"], tuple(c.get("tags") or ())) for c in keys["tcp_connect"]}
        flows: list[Coroutine[Any, Any, bool]] = []
        for request in requests:
            depth = tag_depth(request.get("tags"))
            if not depth:
                continue
            parts = urlsplit(str((request.get("request") or {}).get("url") or ""))
            if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
                continue
            port = parts.port or DEFAULT_PORTS[parts.scheme]
            sni = parts.hostname if parts.scheme == "https" else None
            for ip in hop_addresses.get(parts.hostname.lower(), []):
                tags = tuple(tx.tags(fetch_body=True, depth=depth))
                if (ip, port, tags) in tried or len(flows) >= MAX_REDIRECT_FLOWS:
                    continue
                tried.add((ip, port, tags))
                flows.append(
                    self._flow(
                        ip, port, sni, tx, keys, t_zero, fetch_body=True, classic=True, depth=depth
                    )
                )
        await asyncio.gather(*flows)

    async def _reference(
        self,
        input_: str,
        host: str,
        addrs: list[str],
        th_addrs: list[str],
        keys: dict[str, Any],
        t_zero: float,
    ) -> dict[str, Any] | None:
        """The page again from a source the censor's DNS cannot have chosen.

        DNS inconsistent (none of our addresses is the helper's): the same URL through the
        helper's addresses. The helper lost its DNS and the URL is cleartext: the same URL
        over HTTPS through our addresses (the certificate proves the server). Else nothing.
        """
        control = keys.get("control") or {}
        helper_addrs = set((control.get("dns") or {}).get("addrs") or [])
        url, via, why = input_, th_addrs, "helper_addresses"
        if helper_dns_lost(keys):
            parts = urlsplit(input_)
            if parts.scheme != "http" or parts.port is not None:
                return None
            url, via, why = parts._replace(scheme="https").geturl(), addrs, "https_same_url"
        elif not th_addrs or helper_addrs & set(addrs):
            return None

        async def resolve(name: str) -> list[str]:
            if name.lower() == host.lower():
                return via
            return []  # a redirect elsewhere: no reference (our DNS is the suspect)

        ref = await http_get(
            url,
            resolve=resolve,
            timeout=self.ctx.timeout * REFERENCE_TIMEOUT_SHARE,
            t_zero=t_zero,
            headers=DEFAULT_HEADERS,
            ca_file=self.ctx.ca_file,
            max_redirects=MAX_REDIRECTS,
        )
        record = ref.requests[0] if ref.requests else {}
        return {
            "why": why,
            "url": url,
            "failure": ref.failure,
            "address": ref.address,
            "response": record.get("response") if ref.failure is None else None,
        }

    def invalid_input_keys(self, problem: str) -> dict[str, Any]:
        return {**super().invalid_input_keys(problem), "accessible": None}

    def timeout_keys(self, input_: str | None, failure: str) -> dict[str, Any]:
        return {
            "control_failure": None,
            "dns_experiment_failure": None,
            "http_experiment_failure": failure,
            "accessible": None,
            "blocking": None,
            "blocking_detail": None,
        }


def _system_nameserver() -> str | None:
    """The first nameserver of /etc/resolv.conf (getaddrinfo cannot ask for HTTPS records)."""
    import dns.exception
    import dns.resolver

    try:
        servers = dns.resolver.Resolver().nameservers
    except (dns.exception.DNSException, OSError):
        return None
    return str(servers[0]) if servers else None
