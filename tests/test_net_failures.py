from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import httpx
import pytest

from probes.net import failures as F
from probes.net.failures import NetworkFailure, failure_from_exception


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), F.CONNECTION_REFUSED),
        (ConnectionResetError(errno.ECONNRESET, "reset"), F.CONNECTION_RESET),
        (ConnectionAbortedError(errno.ECONNABORTED, "aborted"), F.CONNECTION_ABORTED),
        (OSError(errno.EHOSTUNREACH, "no route"), F.HOST_UNREACHABLE),
        (OSError(errno.ENETUNREACH, "unreachable"), F.NETWORK_UNREACHABLE),
        (TimeoutError(), F.GENERIC_TIMEOUT_ERROR),
        (EOFError(), F.EOF_ERROR),
        (asyncio.IncompleteReadError(b"", 2), F.EOF_ERROR),
        (socket.gaierror(socket.EAI_NONAME, "no name"), F.DNS_NXDOMAIN_ERROR),
        (ssl.SSLEOFError(8, "eof"), F.EOF_ERROR),
        (ssl.SSLError(1, "handshake failure"), F.SSL_FAILED_HANDSHAKE),
        (NetworkFailure(F.DNS_REFUSED_ERROR), F.DNS_REFUSED_ERROR),
        (httpx.ReadTimeout("slow"), F.GENERIC_TIMEOUT_ERROR),
    ],
)
def test_direct_mapping(exc: BaseException, expected: str) -> None:
    assert failure_from_exception(exc) == expected


def _cert_error(code: int) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code = code
    return err


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (20, F.SSL_UNKNOWN_AUTHORITY),
        (18, F.SSL_UNKNOWN_AUTHORITY),
        (62, F.SSL_INVALID_HOSTNAME),
        (10, F.SSL_INVALID_CERTIFICATE),  # expired
    ],
)
def test_certificate_verify_codes(code: int, expected: str) -> None:
    assert failure_from_exception(_cert_error(code)) == expected


def test_wrapped_errors_are_classified_by_what_they_wrap() -> None:
    try:
        try:
            raise _cert_error(62)
        except ssl.SSLError as inner:
            raise httpx.ConnectError("wrapped") from inner
    except httpx.ConnectError as outer:
        assert failure_from_exception(outer) == F.SSL_INVALID_HOSTNAME


def test_timeout_raised_while_handling_another_error_is_a_timeout() -> None:
    try:
        try:
            raise ssl.SSLWantReadError()
        except ssl.SSLWantReadError:
            raise TimeoutError() from None
    except TimeoutError as exc:
        assert failure_from_exception(exc) == F.GENERIC_TIMEOUT_ERROR


def test_asyncio_timeout_is_not_interrupted() -> None:
    async def slow() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError as exc:
            return failure_from_exception(exc)
        return "no timeout"

    assert asyncio.run(slow()) == F.GENERIC_TIMEOUT_ERROR


def test_unknown_failure_scrubs_addresses() -> None:
    out = failure_from_exception(RuntimeError("boom talking to 10.1.2.3 and [2001:db8::1]"))
    assert out.startswith("unknown_failure: ")
    assert "10.1.2.3" not in out and "2001:db8" not in out


def test_real_refused_socket_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as c, pytest.raises(OSError) as info:
        c.connect(("127.0.0.1", port))
    assert failure_from_exception(info.value) == F.CONNECTION_REFUSED
