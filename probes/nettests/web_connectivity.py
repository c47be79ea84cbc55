"""web_connectivity: is a URL reachable from here, and if not, which layer was interfered with?

Steps (ooni/spec ts-017, version 0.4 semantics): resolve the URL's host (both families) with the
probe's resolver; ask the control helper for its view (DNS, TCP, HTTP) while connecting over TCP
to every address; an HTTP(S) GET following redirects, connected to the addresses our own DNS
returned; for https the TLS handshake with the first reachable address (the GET's own when it
succeeded there, else a separate one that keeps the chain as evidence).  The verdict comes from
`web_connectivity_analysis.analyze`, which reads only these test keys, so the same code
re-derives verdicts from stored measurements.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from probes.fingerprints import FingerprintError, Fingerprints
from probes.net.addresses import format_host_port, is_ip
from probes.net.dns import QUERY_ANY, DNSResult, resolve_retrying
from probes.net.http import DEFAULT_HEADERS, http_get
from probes.net.packets import FlowRecorder, capture_unavailable, pcap_path
from probes.net.tcp import TCPResult, tcp_connect
from probes.net.tls import tls_handshake
from probes.nettests.base import EXIT_HELPER_UNREACHABLE, Nettest, SetupError
from probes.nettests.control import SAME_ASN_FEATURE, ControlClient, note_degraded
from probes.nettests.web_connectivity_analysis import analyze

# Share of the per-input budget given to each step; the helper's own budget is similar.
DNS_TIMEOUT_SHARE = 0.2
CONNECT_TIMEOUT_SHARE = 0.2
DEFAULT_PORTS = {"http": 80, "https": 443}
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
    version = "0.4.3"

    async def setup(self) -> None:
        try:
            self.fingerprints = (
                Fingerprints.from_files(self.ctx.fingerprint_files)
                if self.ctx.fingerprint_files
                else None
            )
        except (FingerprintError, OSError) as exc:
            raise SetupError(f"fingerprints: {exc}") from exc
        self.control = ControlClient(
            self.ctx.helpers, timeout=self.ctx.timeout, ca_file=self.ctx.ca_file
        )
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

    async def _measure(self, input_: str, recorder: FlowRecorder) -> dict[str, Any]:
        parts = urlsplit(input_)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or DEFAULT_PORTS[scheme]
        t_zero = time.monotonic()
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
            addrs = []
            for result in results:
                keys["queries"].extend(result.queries)
                addrs.extend(a for a in result.addrs if a not in addrs)
            failures = [r.failure for r in results]
            if not addrs:
                # As OONI: the first query's failure (getaddrinfo's, or A's) stands for DNS.
                keys["dns_experiment_failure"] = failures[0] if failures else "dns_no_answer"
        endpoints = [_endpoint(ip, port) for ip in addrs]
        # Before the first SYN: the connects' and the fetch's flows (same addresses and port).
        await recorder.start(addrs, port)

        # 2. Control request and TCP connects run together.
        control_task = asyncio.create_task(self.control.measure(input_, endpoints, DEFAULT_HEADERS))
        connects: list[TCPResult] = await asyncio.gather(
            *(
                tcp_connect(
                    ip, port, timeout=self.ctx.timeout * CONNECT_TIMEOUT_SHARE, t_zero=t_zero
                )
                for ip in addrs
            )
        )
        keys["tcp_connect"] = [c.record for c in connects]
        reachable = [c.ip for c in connects if c.failure is None]

        # 3. HTTP(S) GET through our own DNS answers, following redirects.
        fetch_handshakes: list[dict[str, Any]] = []
        if addrs and not reachable:
            # Every connect failed: the verdict is already decided (ts-017 rule "all TCP
            # connects failed"), and a fetch would only wait out the same timeouts again.
            keys["http_experiment_failure"] = connects[0].failure
        elif addrs:
            first_host = host.lower()
            ordered = reachable + [a for a in addrs if a not in reachable]

            async def resolve(name: str) -> list[str]:
                if name.lower() == first_host:
                    return ordered
                if is_ip(name):
                    return [name.strip("[]")]
                found: list[str] = []
                for result in await self._resolve(name, t_zero):
                    keys["queries"].extend(result.queries)
                    found.extend(a for a in result.addrs if a not in found)
                return found

            http = await http_get(
                input_,
                resolve=resolve,
                timeout=self.ctx.timeout * 0.5,
                t_zero=t_zero,
                headers=DEFAULT_HEADERS,
                ca_file=self.ctx.ca_file,
            )
            keys["requests"] = http.requests
            keys["network_events"] = http.network_events
            keys["http_experiment_failure"] = http.failure
            fetch_handshakes = http.tls_handshakes
        elif keys["dns_experiment_failure"] is None:
            keys["dns_experiment_failure"] = "dns_no_answer"

        # 4. TLS handshake evidence for https (SNI = the URL's host) with the first reachable
        # address: the fetch's own handshake when it succeeded there (a second one would double
        # the TLS work of every input), else a handshake of its own, which keeps the chain the
        # server sent when verification failed.
        if scheme == "https" and reachable:
            address = format_host_port(reachable[0], port)
            first = fetch_handshakes[0] if fetch_handshakes else None
            done = first if first and first["address"] == address and not first["failure"] else None
            if done is None:
                tls = await tls_handshake(
                    reachable[0],
                    port,
                    host,
                    timeout=self.ctx.timeout * CONNECT_TIMEOUT_SHARE,
                    t_zero=t_zero,
                    ca_file=self.ctx.ca_file,
                )
                done = tls.record
            keys["tls_handshakes"].append(done)

        await recorder.stop()
        control = await control_task
        keys["control"] = control.control
        keys["control_failure"] = control.failure
        keys["x_th_runtime"] = control.runtime
        if (control.control.get("dns") or {}).get("addrs"):  # oohelperd before Aug 2022: no ip_info
            note_degraded(keys, control.control, {"ip_info": SAME_ASN_FEATURE})
        keys.update(analyze(keys, fingerprints=self.fingerprints).as_test_keys())
        return keys

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
