"""web_connectivity 0.5: OONI's 50 netem QA scenarios, v0.5's keys to the bit, and our rules.

Truth for each scenario is the verdict probe-cli's QA suite expects of it
(internal/webconnectivityqa/*.go at commit 7cb22410, ``ExpectTestKeys``: Blocking,
Accessible); the scenario name of each line is in ../shared/data/ooni/INDEX.csv.
"""

from __future__ import annotations

import copy
import csv
import json
from typing import Any

import pytest

from probes.nettests.web_connectivity_v05 import (
    analyze_v05,
    page_similarity,
    v05_keys,
)
from probes.nettests.web_connectivity_verdict import analyze_measurement, uses_v05
from tests.shared_data import SHARED_DATA

OONI = SHARED_DATA / "ooni"
NETEM = OONI / "web_connectivity_netem_qa_synthetic.jsonl"
needs_data = pytest.mark.skipif(not NETEM.exists(), reason=f"reference data absent: {NETEM}")

# scenario -> (blocking, accessible) that probe-cli's webconnectivityqa expects.
TRUTH: dict[str, tuple[str | bool | None, bool | None]] = {
    "badSSLWithExpiredCertificate": (False, False),
    "badSSLWithUnknownAuthorityWithConsistentDNS": (False, False),
    "badSSLWithUnknownAuthorityWithInconsistentDNS": ("dns", False),
    "badSSLWithWrongServerName": (False, False),
    "cloudflareCAPTCHAWithHTTP": ("http-diff", False),
    "cloudflareCAPTCHAWithHTTPS": (False, True),
    "controlFailureWithSuccessfulHTTPSWebsite": (False, True),
    "controlFailureWithSuccessfulHTTPWebsite": (None, None),
    "dnsBlockingAndroidDNSCacheNoData": ("dns", False),
    "dnsBlockingBOGON": ("dns", False),
    "dnsBlockingNXDOMAIN": ("dns", False),
    "dnsHijackingToLocalhostWithHTTP": ("dns", False),
    "dnsHijackingToLocalhostWithHTTPS": ("dns", False),
    "dnsHijackingToProxyWithHTTPSURL": (False, True),
    "dnsHijackingToProxyWithHTTPURL": (False, True),
    "ghostDNSBlockingWithHTTP": ("dns", False),
    "ghostDNSBlockingWithHTTPS": ("dns", False),
    "httpBlockingConnectionReset": ("http-failure", False),
    "httpDiffWithConsistentDNS": ("http-diff", False),
    "httpDiffWithInconsistentDNS": ("dns", False),
    "idnaWithoutCensorshipLowercase": (False, True),
    "idnaWithoutCensorshipWithFirstLetterUppercase": (False, True),
    "largeFileWithHTTP": (False, True),
    "largeFileWithHTTPS": (False, True),
    "localhostWithHTTP": (False, False),
    "localhostWithHTTPS": (False, False),
    "redirectWithBrokenLocationForHTTP": ("http-failure", False),
    "redirectWithBrokenLocationForHTTPS": ("http-failure", False),
    "redirectWithConsistentDNSAndThenConnectionRefusedForHTTP": ("http-failure", False),
    "redirectWithConsistentDNSAndThenConnectionRefusedForHTTPS": ("http-failure", False),
    "redirectWithConsistentDNSAndThenConnectionResetForHTTP": ("http-failure", False),
    "redirectWithConsistentDNSAndThenConnectionResetForHTTPS": ("http-failure", False),
    "redirectWithConsistentDNSAndThenEOFForHTTP": ("http-failure", False),
    "redirectWithConsistentDNSAndThenEOFForHTTPS": ("http-failure", False),
    "redirectWithConsistentDNSAndThenNXDOMAIN": ("dns", False),
    "redirectWithConsistentDNSAndThenTimeoutForHTTP": ("http-failure", False),
    "redirectWithConsistentDNSAndThenTimeoutForHTTPS": ("http-failure", False),
    "redirectWithMoreThanTenRedirectsAndHTTP": (False, False),
    "redirectWithMoreThanTenRedirectsAndHTTPS": (False, False),
    "successWithHTTP": (False, True),
    "successWithHTTPS": (False, True),
    "tcpBlockingConnectTimeout": ("tcp_ip", False),
    "tcpBlockingConnectionRefusedWithInconsistentDNS": ("dns", False),
    "throttlingWithHTTP": ("http-failure", False),
    "throttlingWithHTTPS": ("http-failure", False),
    "tlsBlockingConnectionResetWithConsistentDNS": ("http-failure", False),
    "tlsBlockingConnectionResetWithInconsistentDNS": ("dns", False),
    "websiteDownNXDOMAIN": (False, False),
    "websiteDownNoAddrs": (False, False),
    "websiteDownTCPConnect": (False, False),
}
V05_KEYS = (
    "dns_consistency",
    "body_proportion",
    "body_length_match",
    "status_code_match",
    "headers_match",
    "title_match",
    "accessible",
    "blocking",
    "x_dns_flags",
    "x_blocking_flags",
    "x_null_null_flags",
)


def _scenarios() -> list[tuple[str, dict[str, Any]]]:
    if not NETEM.exists():
        return []
    names: dict[int, str] = {}
    with (OONI / "INDEX.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["file"] == NETEM.name:
                names[int(row["line"])] = row["note"].split("scenario=", 1)[1].strip()
    lines = NETEM.read_text(encoding="utf-8").splitlines()
    return [(names[n], json.loads(text)) for n, text in enumerate(lines, 1)]


SCENARIOS = _scenarios()


@needs_data
def test_every_scenario_has_a_truth() -> None:
    assert len(SCENARIOS) == 50
    assert {name for name, _ in SCENARIOS} == set(TRUTH)


@needs_data
@pytest.mark.parametrize(("name", "m"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenario_gets_its_verdict(name: str, m: dict[str, Any]) -> None:
    """Our verdict (through the test_version dispatcher, as `analyze` re-derives it)."""
    v = analyze_measurement(m["test_keys"], m["test_version"], url=m["input"])
    assert (v.blocking, v.accessible) == TRUTH[name], v.as_test_keys()


@needs_data
@pytest.mark.parametrize(("name", "m"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_v05_keys_reproduce_ooni_to_the_bit(name: str, m: dict[str, Any]) -> None:
    ours = v05_keys(m["test_keys"]).as_test_keys()
    assert {k: ours[k] for k in V05_KEYS} == {k: m["test_keys"][k] for k in V05_KEYS}


@needs_data
def test_old_versions_keep_the_v04_procedure() -> None:
    """The same evidence labelled 0.4.3 is read by v0.4 (which misses the localhost lie)."""
    m = dict(SCENARIOS[11][1])
    assert SCENARIOS[11][0] == "dnsHijackingToLocalhostWithHTTP"
    assert analyze_measurement(m["test_keys"], "0.5.28", url=m["input"]).blocking == "dns"
    assert analyze_measurement(m["test_keys"], "0.4.3", url=m["input"]).blocking is False
    assert uses_v05("0.5.0") and uses_v05("1.0") and not uses_v05("0.4.3")
    assert not uses_v05(None) and not uses_v05("x")


def _scenario(name: str) -> dict[str, Any]:
    return copy.deepcopy(next(m for n, m in SCENARIOS if n == name))


def _access_denied(length: int) -> str:
    filler = "<p>The page you requested has been blocked by order of the authority.</p>"
    page = "<html><head><title>Access Denied</title></head><body>" + filler
    return (page + "<!-- " + "x" * max(0, length - len(page) - 25) + " -->\n</body></html>")[
        :length
    ]


@needs_data
def test_lying_dns_to_a_block_page_with_the_same_headers_is_not_accessible() -> None:
    """dnsHijackingToProxyWithHTTPURL with the proxy answering a block page a tenth of the
    length, another title, the same header names: v0.5 says accessible, we say dns."""
    m = _scenario("dnsHijackingToProxyWithHTTPURL")
    tk = m["test_keys"]
    final = next(r for r in tk["requests"] if r["response"]["code"] == 200)
    final["response"]["body"] = _access_denied(tk["control"]["http_request"]["body_length"] // 10)
    ooni = v05_keys(tk)
    assert (ooni.blocking, ooni.accessible, ooni.headers_match) == (False, True, True)
    assert (ooni.body_length_match, ooni.title_match) == (False, False)
    v = analyze_v05(tk, url=m["input"])
    assert (v.blocking, v.accessible, v.blocking_detail) == ("dns", False, "dns.inconsistent")
    assert v.wants_reference  # the probe would fetch the page through the helper's address
    keys = v.as_test_keys()
    assert keys["x_v05_blocking"] is False and keys["x_v05_accessible"] is True


@needs_data
def test_a_reference_page_that_matches_keeps_a_dynamic_page_accessible() -> None:
    """Same lie, but our reference fetch (through the helper's address) got the same text:
    the page changed length and title legitimately, not by censorship."""
    m = _scenario("dnsHijackingToProxyWithHTTPURL")
    tk = m["test_keys"]
    final = next(r for r in tk["requests"] if r["response"]["code"] == 200)
    words = " ".join(f"word{i}" for i in range(300))
    final["response"]["body"] = f"<html><title>Today 1</title><body>{words}</body></html>"
    tk["x_reference"] = {
        "failure": None,
        "response": {"code": 200, "body": f"<html><title>News 2</title>{words} more</html>"},
    }
    v = analyze_v05(tk, url=m["input"])
    assert v.blocking is False and v.accessible is True
    assert v.similarity is not None and v.similarity > 0.9
    assert not v.wants_reference


def test_page_similarity_separates_a_block_page_from_the_site() -> None:
    site = (
        "<html><title>Example News</title><body>"
        + "story " * 5
        + "".join(
            f"<p>Paragraph {i} says something different about item {i * 7}.</p>" for i in range(80)
        )
        + "</body></html>"
    ).encode()
    block = _access_denied(len(site) // 10).encode()
    assert page_similarity(site, site) == 1.0
    assert page_similarity(site, block) < 0.05
    assert page_similarity(site, site.replace(b"item 7.", b"item 8.")) > 0.9


def _helper_dns_lost(tk: dict[str, Any]) -> None:
    """What issue 14 saw under 2% loss: the helper's DNS timed out, so did its fetch; its TCP
    connects to the probe's addresses worked."""
    tk["control"]["dns"] = {"failure": "generic_timeout_error", "addrs": []}
    tk["control"]["http_request"] = {
        "failure": "generic_timeout_error",
        "body_length": -1,
        "title": "",
        "headers": {},
        "status_code": -1,
    }
    tk["control"]["ip_info"] = {}


@needs_data
def test_partial_control_still_decides_tcp_blocking() -> None:
    m = _scenario("tcpBlockingConnectTimeout")
    _helper_dns_lost(m["test_keys"])
    v = analyze_v05(m["test_keys"], url=m["input"])
    assert (v.blocking, v.accessible, v.partial_control) == ("tcp_ip", False, True)


@needs_data
def test_partial_control_https_success_is_accessible_and_dns_validated() -> None:
    m = _scenario("successWithHTTPS")
    _helper_dns_lost(m["test_keys"])
    ooni = v05_keys(m["test_keys"])
    v = analyze_v05(m["test_keys"], url=m["input"])
    assert (v.blocking, v.accessible) == (False, True)
    # v0.5 takes the lost answer for ghost DNS; the probe's TLS handshake proves the address.
    assert (ooni.dns_consistency, ooni.x_null_null_flags) == ("inconsistent", 16)
    assert v.ooni.dns_consistency == "consistent"


@needs_data
def test_partial_control_http_page_is_not_called_a_diff() -> None:
    """v0.5 reads the lost answer as ghost DNS and the missing page as a diff: "dns". Without a
    control page we do not blame HTTP. A TLS-validated reference with the same text decides
    accessible; without one the verdict stays unknown."""
    m = _scenario("successWithHTTP")
    tk = m["test_keys"]
    _helper_dns_lost(tk)
    assert v05_keys(tk).blocking == "dns"  # ghost DNS + a diff with a fetch that never ran
    v = analyze_v05(tk, url=m["input"])
    assert (v.blocking, v.accessible) == (None, None)
    assert v.wants_reference
    final = next(r for r in tk["requests"] if r["response"]["code"] == 200)
    tk["x_reference"] = {"failure": None, "response": dict(final["response"])}
    v = analyze_v05(tk, url=m["input"])
    assert (v.blocking, v.accessible) == (False, True)
    assert v.why.startswith("partial control")


@needs_data
def test_a_failed_lookup_without_control_is_unknown_not_accessible() -> None:
    """v0.5's classic engine (rule 5.1.1) calls a DNS failure with no control accessible; we
    say unknown (nothing was compared)."""
    m = _scenario("dnsBlockingNXDOMAIN")
    tk = m["test_keys"]
    tk["control"], tk["control_failure"] = None, "generic_timeout_error"
    ooni = v05_keys(tk)
    assert (ooni.blocking, ooni.accessible) == (False, True)
    v = analyze_v05(tk, url=m["input"])
    assert (v.blocking, v.accessible) == (None, None)


JUNK: list[Any] = [None, 1, "x", [], {}, [1, 2], {"a": 1}, True, -1, 1.5]


def _mutate(value: Any, rng: Any) -> None:
    """Replace or drop about one field in twelve, at every depth."""
    if isinstance(value, dict):
        for key in list(value):
            roll = rng.random()
            if roll < 0.05:
                value[key] = rng.choice(JUNK)
            elif roll < 0.08:
                del value[key]
            else:
                _mutate(value[key], rng)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if rng.random() < 0.05:
                value[i] = rng.choice(JUNK)
            else:
                _mutate(item, rng)


@needs_data
def test_malformed_keys_never_crash_the_verdict() -> None:
    """Stored data is whatever a probe wrote: a wrong type anywhere gives a verdict (maybe
    null), never an exception that would stop a whole analysis."""
    import random

    rng = random.Random(14)
    for _, m in SCENARIOS:
        for _ in range(20):
            keys = copy.deepcopy(m["test_keys"])
            _mutate(keys, rng)
            analyze_v05(keys)
