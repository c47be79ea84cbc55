"""ech_check: are TLS ClientHellos with an Encrypted Client Hello extension blocked?

Modelled on OONI's echcheck (probe-cli internal/experiment/echcheck, test version 0.3.0): to
one address of the input's name, handshakes with no ECH, with GREASE ECH and with the real
ECHConfig of the name's HTTPS DNS record (RFC 9460 ``ech``), in shuffled order, each on its own
TCP connection; OONI's test keys (``queries``, ``tcp_connects``, ``tls_handshakes`` with
``echconfig`` and ``outer_server_name``). Beyond OONI:

- outer SNI variants: each hello kind is sent with the name itself, with each ``outer_sni``
  (default ``cloudflare-ech.com``, the outer name Russia's TSPU blocks since November 2024) and
  with the ECHConfig's public_name; the real ECH hello uses the public_name as its outer SNI, as
  a real client does, with the input's name sealed inside (HPKE, probes.net.tls_hello);
- the hellos are crafted byte by byte (Python's ssl cannot add ECH), so the handshake stops at
  the server's first record: a ServerHello, HelloRetryRequest or alert means the hello passed;
- every connection of a round is open before the first hello is sent, so a censor's residual
  blocking of the (client, server, port) triple (new connections after a trigger) cannot make
  a hello without ECH fail in the same round;
- a second round repeats the SNIs whose ECH hellos failed while the plain one passed; the
  verdict (ech_check_analysis) needs the failure twice, so one lost packet is not blocking.

Options: ``outer_sni`` (names, space-separated), ``sni_endpoint`` (IP:PORT instead of DNS).
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.rdtypes.svcbbase
import dns.resolver

from probes.net import tls_hello
from probes.net.addresses import format_host_port, is_ip, parse_host_port
from probes.net.dns import resolve_retrying
from probes.net.failures import EOF_ERROR, SSL_FAILED_HANDSHAKE, failure_from_exception
from probes.net.https_records import https_query_name, https_records
from probes.net.records import since
from probes.net.tcp import open_socket, tcp_record
from probes.nettests.base import Nettest, SetupError
from probes.nettests.ech_check_analysis import analyze, confirm_snis

DEFAULT_PORT = 443
# Russia's TSPU drops ClientHellos with ECH and this outer SNI (since November 2024; OONI
# echcheck's default input since probe-cli v3.24, PR #1658).
DEFAULT_OUTER_SNI = ("cloudflare-ech.com",)
# Shares of the per-input budget (--timeout, 30 s by default): the DNS step, then per round a
# connect and a wait for the server's first record; two rounds and DNS end by 95%.
DNS_SHARE = 0.15
CONNECT_SHARE = 0.15
HELLO_SHARE = 0.25
ROUNDS = 2
_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
_READ_LIMIT = 16384 + 5


def target_of(input_: str) -> tuple[str, int]:
    """(name, port) from ``https://NAME[:PORT]/...`` or a bare name; ValueError if neither."""
    text = input_.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() != "https":
            raise ValueError(f"the scheme must be https, not {parts.scheme!r}")
        name, port = (parts.hostname or "").rstrip(".").lower(), parts.port or DEFAULT_PORT
    else:
        name, port = text.rstrip(".").lower(), DEFAULT_PORT
    if not name or is_ip(name):
        raise ValueError("needs a domain name (the SNI)")
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{name!r} is not a valid name: {exc}") from None
    return name, port


def ech_configs_of(queries: list[dict[str, Any]]) -> bytes | None:
    """The ``ech`` SvcParam of the first HTTPS record in the answers' raw responses."""
    for rd in https_records(queries):
        param = rd.params.get(dns.rdtypes.svcbbase.ParamKey.ECH)
        if param is not None:
            return bytes(param.ech)
    return None


@dataclass
class Attempt:
    """One planned hello: its outer SNI and kind."""

    server_name: str
    ech: str  # "none", "grease", "real"


class ECHCheck(Nettest):
    name = "ech_check"
    version = "0.1.0"

    async def setup(self) -> None:
        opts = self.ctx.options
        raw = opts.get("outer_sni")
        extra = str(raw).split() if raw is not None else list(DEFAULT_OUTER_SNI)
        self.outer_sni = [s.rstrip(".").lower() for s in extra if s]
        for sni in self.outer_sni:
            try:
                target_of(sni)
            except ValueError as exc:
                raise SetupError(f"ech_check --outer-sni {sni!r}: {exc}") from exc
        endpoint = opts.get("sni_endpoint")
        self.endpoint = str(endpoint) if endpoint else None
        if self.endpoint:
            try:
                parse_host_port(self.endpoint, DEFAULT_PORT)
            except ValueError as exc:
                raise SetupError(f"ech_check --sni-endpoint {self.endpoint!r}: {exc}") from exc
        self.rng = random.SystemRandom()

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        try:
            target_of(input_)
        except ValueError as exc:
            return str(exc)
        return None

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        name, port = target_of(input_)
        t_zero = time.monotonic()
        budget = self.ctx.timeout
        keys: dict[str, Any] = {
            "queries": [],
            "tcp_connects": [],
            "tls_handshakes": [],
            "x_outer_sni": [],
            "x_ech_config": None,
            "x_ech_config_failure": None,
            "failure": None,
        }
        ip, port = await self._address(name, port, keys, t_zero, budget * DNS_SHARE)
        if ip is None:
            keys.update(blocking=None, blocking_detail=None)
            return keys
        config = self._config(keys)
        variants = [name, *self.outer_sni]
        if config is not None and config[0].public_name:
            variants.append(config[0].public_name)
        variants = list(dict.fromkeys(variants))
        keys["x_outer_sni"] = variants
        plan = [Attempt(sni, kind) for sni in variants for kind in ("none", "grease")]
        if config is not None:
            plan.append(Attempt(config[0].public_name or name, "real"))
        for round_no in range(1, ROUNDS + 1):
            if round_no > 1:
                again = confirm_snis(keys)
                plan = [a for a in plan if a.server_name in again]
                if not plan:
                    break
            await self._round(round_no, plan, ip, port, name, config, keys, t_zero, budget)
        verdict = analyze(keys)
        keys["x_verdicts"] = {sni: v.as_dict() for sni, v in verdict.per_sni.items()}
        keys["blocking"], keys["blocking_detail"] = verdict.blocking, verdict.blocking_detail
        return keys

    async def _address(
        self, name: str, port: int, keys: dict[str, Any], t_zero: float, timeout: float
    ) -> tuple[str | None, int]:
        """The address to measure (the first A answer, or ``sni_endpoint``) and, beside it,
        the HTTPS record's ECHConfigList (kept in ``x_ech_config``)."""
        resolver = self.ctx.resolver or _system_nameserver()
        https_lookup = (
            resolve_retrying(
                https_query_name(name, port),
                query_type="HTTPS",
                resolver=resolver,
                timeout=timeout,
                t_zero=t_zero,
            )
            if resolver
            else None
        )
        if self.endpoint:
            ip, port = parse_host_port(self.endpoint, port)
            if https_lookup is not None:
                keys["queries"] = _https_records((await https_lookup).queries)
            return ip, port
        a_lookup = resolve_retrying(
            name,
            query_type="A" if self.ctx.resolver else "ANY",
            resolver=self.ctx.resolver,
            timeout=timeout,
            t_zero=t_zero,
        )
        if https_lookup is not None:
            a, https = await asyncio.gather(a_lookup, https_lookup)
            keys["queries"] = a.queries + _https_records(https.queries)
        else:
            a = await a_lookup
            keys["queries"] = a.queries
        if not a.addrs:
            keys["failure"] = a.failure or "dns_no_answer"
            return None, port
        v4 = [x for x in a.addrs if ":" not in x]
        return (v4 or a.addrs)[0], port

    def _config(self, keys: dict[str, Any]) -> tuple[tls_hello.ECHConfig, tuple[int, int]] | None:
        """The usable ECHConfig of the HTTPS answers (the list is kept as OONI's base64)."""
        raw = ech_configs_of(keys["queries"])
        if raw is None:
            return None
        keys["x_ech_config"] = base64.b64encode(raw).decode("ascii")
        try:
            usable = tls_hello.usable_config(tls_hello.parse_ech_config_list(raw))
        except tls_hello.HelloError as exc:
            keys["x_ech_config_failure"] = str(exc)
            return None
        if usable is None:
            keys["x_ech_config_failure"] = "no config with X25519, HKDF-SHA256 and a known AEAD"
        return usable

    async def _round(
        self,
        round_no: int,
        plan: list[Attempt],
        ip: str,
        port: int,
        name: str,
        config: tuple[tls_hello.ECHConfig, tuple[int, int]] | None,
        keys: dict[str, Any],
        t_zero: float,
        budget: float,
    ) -> None:
        """Open every connection, then send the hellos in a shuffled order, then read."""
        order = list(plan)
        self.rng.shuffle(order)
        address = format_host_port(ip, port)
        connects = await asyncio.gather(
            *(_connect(ip, port, budget * CONNECT_SHARE, t_zero) for _ in order)
        )
        hellos = [_hello_for(a, name, config) for a in order]
        for attempt, (_, record) in zip(order, connects, strict=True):
            record.update(x_round=round_no, x_server_name=attempt.server_name, x_ech=attempt.ech)
            keys["tcp_connects"].append(record)
        live = [(a, s, h) for a, (s, _), h in zip(order, connects, hellos, strict=True) if s]
        results = await asyncio.gather(
            *(
                _exchange(sock, hello, address, budget * HELLO_SHARE, t_zero)
                for _, sock, hello in live
            )
        )
        for (attempt, _, hello), entry in zip(live, results, strict=True):
            entry["x_round"] = round_no
            entry["x_ech"] = attempt.ech
            if attempt.ech == "grease":
                entry["echconfig"] = "GREASE"
            elif attempt.ech == "real":
                entry["echconfig"] = keys["x_ech_config"]
                entry["x_inner_server_name"] = hello.inner_server_name
            if attempt.ech != "none":
                entry["outer_server_name"] = attempt.server_name
            keys["tls_handshakes"].append(entry)


def _hello_for(
    attempt: Attempt, name: str, config: tuple[tls_hello.ECHConfig, tuple[int, int]] | None
) -> tls_hello.Hello:
    if attempt.ech == "grease":
        return tls_hello.client_hello(attempt.server_name, grease_ech=True)
    if attempt.ech == "real" and config is not None:
        return tls_hello.client_hello(
            attempt.server_name, ech_config=config, inner_server_name=name
        )
    return tls_hello.client_hello(attempt.server_name)


def _https_records(queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The HTTPS lookup's records, a query answered with HTTPS records not failed: the
    resolver's records judge answers by their addresses (an HTTPS record has none)."""
    for query in queries:
        answers = query.get("answers") or []
        if query.get("failure") == "dns_no_answer" and any(
            a.get("answer_type") == "HTTPS" for a in answers
        ):
            query["failure"] = None
    return queries


def _system_nameserver() -> str | None:
    """The first nameserver of /etc/resolv.conf: getaddrinfo cannot ask for HTTPS records."""
    try:
        servers = dns.resolver.Resolver().nameservers
    except (dns.exception.DNSException, OSError):
        return None
    return str(servers[0]) if servers else None


async def _connect(
    ip: str, port: int, timeout: float, t_zero: float
) -> tuple[socket.socket | None, dict[str, Any]]:
    t0 = since(t_zero)
    try:
        sock = await open_socket(ip, port, timeout)
    except (OSError, TimeoutError) as exc:
        return None, tcp_record(ip, port, failure_from_exception(exc), t0, since(t_zero))
    return sock, tcp_record(ip, port, None, t0, since(t_zero))


async def _exchange(
    sock: socket.socket, hello: tls_hello.Hello, address: str, timeout: float, t_zero: float
) -> dict[str, Any]:
    """Send the hello and read the server's first record: the df-006 entry of the attempt."""
    loop = asyncio.get_running_loop()
    entry: dict[str, Any] = {
        "network": "tcp",
        "address": address,
        "server_name": hello.server_name,
        "failure": None,
        "t0": since(t_zero),
        "t": 0.0,
        "tls_version": "",
        "cipher_suite": "",
        "negotiated_protocol": "",
        "no_tls_verify": True,
        "peer_certificates": [],
        "tags": [],
        "x_server_answer": None,
    }
    data = b""
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_sendall(sock, hello.record)
            while not tls_hello.record_complete(data) and len(data) < _READ_LIMIT:
                chunk = await loop.sock_recv(sock, _READ_LIMIT - len(data))
                if not chunk:
                    raise EOFError
                data += chunk
    except (OSError, TimeoutError, EOFError) as exc:
        entry["failure"] = EOF_ERROR if isinstance(exc, EOFError) else failure_from_exception(exc)
    finally:
        sock.close()
    entry["t"] = since(t_zero)
    if entry["failure"] is None:
        _describe_answer(entry, data)
    return entry


def _describe_answer(entry: dict[str, Any], data: bytes) -> None:
    try:
        answer = tls_hello.parse_server_answer(data)
    except tls_hello.HelloError as exc:
        entry["failure"] = f"unknown_failure: {exc}"
        return
    entry["x_server_answer"] = answer.kind
    if answer.kind == "alert":
        entry["failure"] = SSL_FAILED_HANDSHAKE  # the server answered, with an alert
        entry["x_alert"] = answer.alert
    elif answer.kind == "other":
        entry["failure"] = "unknown_failure: the answer is not a TLS record"
    else:
        entry["tls_version"] = answer.tls_version or ""
        suite = answer.cipher_suite or 0
        entry["cipher_suite"] = _SUITES.get(suite, f"0x{suite:04x}")
