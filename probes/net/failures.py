"""Map Python exceptions to OONI failure strings.

The vocabulary is ooni/spec data-formats/df-007-errors.md, as extended by
ooni/probe-cli (internal/netxlite/errno.go, classify.go). Keeping the spec's
exact strings lets OONI's tools read our measurements and ours read theirs.
Classification walks the exception chain (``__cause__``/``__context__``) so a
library error that wraps an OS or TLS error is classified by its root.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl

# --- df-007 / probe-cli failure strings -----------------------------------------------------
CONNECTION_REFUSED = "connection_refused"
CONNECTION_RESET = "connection_reset"
CONNECTION_ABORTED = "connection_aborted"
CONNECTION_ALREADY_CLOSED = "connection_already_closed"
GENERIC_TIMEOUT_ERROR = "generic_timeout_error"
EOF_ERROR = "eof_error"
HOST_UNREACHABLE = "host_unreachable"
NETWORK_UNREACHABLE = "network_unreachable"
NETWORK_DOWN = "network_down"
ADDRESS_FAMILY_NOT_SUPPORTED = "address_family_not_supported"
INTERRUPTED = "interrupted"
DNS_NXDOMAIN_ERROR = "dns_nxdomain_error"
DNS_NO_ANSWER = "dns_no_answer"
DNS_REFUSED_ERROR = "dns_refused_error"
DNS_SERVFAIL_ERROR = "dns_servfail_error"
DNS_SERVER_FAILURE = DNS_SERVFAIL_ERROR  # alias: OONI's string for SERVFAIL
DNS_SERVER_MISBEHAVING = "dns_server_misbehaving"
DNS_TEMPORARY_FAILURE = "dns_temporary_failure"
DNS_NON_RECOVERABLE_FAILURE = "dns_non_recoverable_failure"
DNS_BOGON_ERROR = "dns_bogon_error"
SSL_INVALID_HOSTNAME = "ssl_invalid_hostname"
# df-007 spells it "ssl_unknown_autority"; probe-cli (what OONI actually emits) fixed the typo.
SSL_UNKNOWN_AUTHORITY = "ssl_unknown_authority"
SSL_INVALID_CERTIFICATE = "ssl_invalid_certificate"
SSL_FAILED_HANDSHAKE = "ssl_failed_handshake"
UNKNOWN_FAILURE_PREFIX = "unknown_failure: "

_ERRNO_FAILURES: dict[int, str] = {
    errno.ECONNREFUSED: CONNECTION_REFUSED,
    errno.ECONNRESET: CONNECTION_RESET,
    errno.ECONNABORTED: CONNECTION_ABORTED,
    errno.ETIMEDOUT: GENERIC_TIMEOUT_ERROR,
    errno.EHOSTUNREACH: HOST_UNREACHABLE,
    errno.ENETUNREACH: NETWORK_UNREACHABLE,
    errno.ENETDOWN: NETWORK_DOWN,
    errno.EAFNOSUPPORT: ADDRESS_FAMILY_NOT_SUPPORTED,
    errno.EPIPE: CONNECTION_RESET,  # writing to a peer that reset us
}

# getaddrinfo(3) codes, as probe-cli's getaddrinfo resolver maps them.
_GAI_FAILURES: dict[int, str] = {
    socket.EAI_NONAME: DNS_NXDOMAIN_ERROR,
    socket.EAI_AGAIN: DNS_TEMPORARY_FAILURE,
    socket.EAI_FAIL: DNS_NON_RECOVERABLE_FAILURE,
}
if hasattr(socket, "EAI_NODATA"):
    _GAI_FAILURES[socket.EAI_NODATA] = DNS_NO_ANSWER

# OpenSSL X509_V_ERR_* codes carried by ssl.SSLCertVerificationError.verify_code.
_X509_UNKNOWN_AUTHORITY = {
    2,  # unable to get issuer certificate
    18,  # self-signed certificate
    19,  # self-signed certificate in chain
    20,  # unable to get local issuer certificate
    21,  # unable to verify the first certificate
}
_X509_HOSTNAME_MISMATCH = {62, 63, 64}  # hostname / email / IP address mismatch

_IP_RE = re.compile(r"\[?[0-9a-fA-F]*:[0-9a-fA-F:.]+\]?|\b\d{1,3}(?:\.\d{1,3}){3}\b")


class NetworkFailure(Exception):
    """An error that already knows its OONI failure string (e.g. a failed DNS step)."""

    def __init__(self, failure: str, message: str = "") -> None:
        super().__init__(message or failure)
        self.failure = failure


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps, outermost first, without cycles."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not s for s in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _ssl_failure(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _X509_HOSTNAME_MISMATCH:
            return SSL_INVALID_HOSTNAME
        if code in _X509_UNKNOWN_AUTHORITY:
            return SSL_UNKNOWN_AUTHORITY
        return SSL_INVALID_CERTIFICATE
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return EOF_ERROR
    return SSL_FAILED_HANDSHAKE


def _classify_one(exc: BaseException) -> str | None:
    """Classify a single exception, or None when it says nothing specific."""
    if isinstance(exc, NetworkFailure):
        return exc.failure
    if isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError):
        return None  # flow control inside a handshake loop, never a failure
    if isinstance(exc, ssl.SSLError):
        return _ssl_failure(exc)
    if isinstance(exc, socket.gaierror):
        return _GAI_FAILURES.get(exc.errno or 0)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | socket.timeout):
        return GENERIC_TIMEOUT_ERROR
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return EOF_ERROR
    if isinstance(exc, asyncio.CancelledError):
        return INTERRUPTED
    if isinstance(exc, OSError) and exc.errno in _ERRNO_FAILURES:
        return _ERRNO_FAILURES[exc.errno]
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return CONNECTION_RESET
    if isinstance(exc, ConnectionAbortedError):
        return CONNECTION_ABORTED
    return _classify_by_name(exc)


def _classify_by_name(exc: BaseException) -> str | None:
    """Library exceptions we must not import here (dnspython, httpx), recognised by name."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if module.startswith("dns."):
        return {
            "NXDOMAIN": DNS_NXDOMAIN_ERROR,
            "NoAnswer": DNS_NO_ANSWER,
            "Timeout": GENERIC_TIMEOUT_ERROR,
            "LifetimeTimeout": GENERIC_TIMEOUT_ERROR,
            "NoNameservers": DNS_SERVER_MISBEHAVING,
            "BadResponse": DNS_SERVER_MISBEHAVING,
            "UnexpectedEOF": EOF_ERROR,
        }.get(name)
    if module.startswith(("httpx", "httpcore")):
        if "Timeout" in name:
            return GENERIC_TIMEOUT_ERROR
        text = str(exc).lower()
        if name == "RemoteProtocolError" and ("disconnected" in text or "closed" in text):
            return EOF_ERROR
    if module.startswith("anyio") and name in ("EndOfStream", "IncompleteRead"):
        return EOF_ERROR
    if module.startswith("anyio") and name == "ClosedResourceError":
        return CONNECTION_ALREADY_CLOSED
    return None


def scrub_addresses(text: str) -> str:
    """Remove IP addresses from free text, as probe-cli's scrubber does for unknown failures."""
    return _IP_RE.sub("[scrubbed]", text)


def failure_from_exception(exc: BaseException) -> str:
    """Return the OONI failure string for ``exc`` (never raises).

    The outermost exception that says something specific wins: library wrappers
    (httpx.ConnectError, anyio.BrokenResourceError, ...) say nothing and pass the
    question to what they wrap, while e.g. a TimeoutError raised inside an ``except``
    block is not explained by the exception being handled there.
    """
    found = [f for f in map(_classify_one, _chain(exc)) if f is not None]
    # asyncio.timeout() raises TimeoutError out of the CancelledError it injected:
    # being interrupted only explains a failure when nothing more specific does.
    specific = [f for f in found if f != INTERRUPTED]
    if specific:
        return specific[0]
    if found:
        return found[0]
    text = str(exc) or type(exc).__name__
    return UNKNOWN_FAILURE_PREFIX + scrub_addresses(f"{type(exc).__name__}: {text}")
