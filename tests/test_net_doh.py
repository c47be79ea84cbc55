"""DNS over HTTPS through probes.net.dns against a real DoH server on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from probes.net.dns import resolve
from tests.loopback.certs import TestCA
from tests.loopback.doh import running_doh

ZONE = {"site.test": ["127.0.0.2", "127.0.0.9"]}


def _resolve(name: str, url: str, ca_file: str | None) -> object:
    return asyncio.run(
        resolve(
            name,
            resolver=url,
            transport="doh",
            timeout=5.0,
            t_zero=time.monotonic(),
            ca_file=ca_file,
        )
    )


def test_doh_answers_and_records(test_ca: TestCA) -> None:
    with running_doh(test_ca, ZONE) as url:
        result = _resolve("site.test", url, test_ca.ca_pem_path)
    assert result.failure is None  # type: ignore[attr-defined]
    assert result.addrs == ["127.0.0.2", "127.0.0.9"]  # type: ignore[attr-defined]
    [query] = result.queries  # type: ignore[attr-defined]
    assert query["engine"] == "doh" and query["failure"] is None
    assert {a["ipv4"] for a in query["answers"]} == {"127.0.0.2", "127.0.0.9"}


def test_doh_nxdomain(test_ca: TestCA) -> None:
    with running_doh(test_ca, ZONE) as url:
        result = _resolve("missing.test", url, test_ca.ca_pem_path)
    assert result.failure == "dns_nxdomain_error"  # type: ignore[attr-defined]


def test_doh_refuses_an_untrusted_certificate(test_ca: TestCA) -> None:
    with running_doh(test_ca, ZONE) as url:
        result = _resolve("site.test", url, None)
    failure = result.failure  # type: ignore[attr-defined]
    assert failure is not None and failure.startswith(("ssl_", "unknown_failure"))
    assert result.addrs == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["https://127.0.0.5:1/dns-query"])
def test_doh_unreachable_is_a_failure_not_an_exception(bad: str) -> None:
    result = _resolve("site.test", bad, None)
    assert result.failure is not None  # type: ignore[attr-defined]
