"""The censor behaves as the scenario says, seen by plain clients inside the vantages."""

from __future__ import annotations

import subprocess
import time

import pytest

from lab import topology
from lab.addresses import BLOCKPAGE_V4
from lab.topology import LabInfo

pytestmark = pytest.mark.lab


def _dns(lab: LabInfo, vantage: str, name: str, server: str, qtype: str = "A") -> list[dict]:
    res = lab.client(vantage, "dns", name, "--server", server, "--type", qtype, "--wait", "0.7")
    return res["answers"]


def test_dns_injection_first_at_cn_only(lab: LabInfo) -> None:
    d = lab.scenario.by_block("dns_inject")[0]
    pool = set(lab.scenario.censor.inject_pool)
    cn = _dns(lab, "cn", d.name, lab.resolver_v4)
    assert len(cn) == lab.scenario.censor.dns_injectors + 1
    assert all(set(a["addrs"]) <= pool for a in cn[:-1])  # forged answers come first
    assert cn[-1]["addrs"] == [d.a]  # the real answer still follows
    assert _dns(lab, "open", d.name, lab.resolver_v4) == [{"rcode": "NOERROR", "addrs": [d.a]}]


def test_dns_injection_answers_aaaa_with_a(lab: LabInfo) -> None:
    d = lab.scenario.by_block("dns_inject")[0]
    cn = _dns(lab, "cn", d.name, lab.resolver_v6, "AAAA")
    assert cn[0]["addrs"][0] in lab.scenario.censor.inject_pool
    assert cn[-1]["addrs"] == [d.aaaa]


def test_dns_injection_on_address_without_dns_server(lab: LabInfo, spares) -> None:
    d = lab.scenario.by_block("dns_inject")[0]
    silent = spares.v4()
    cn = _dns(lab, "cn", d.name, silent)
    assert cn and cn[0]["addrs"][0] in lab.scenario.censor.inject_pool
    open_ = _dns(lab, "open", d.name, silent)
    assert all("addrs" not in a for a in open_)  # nothing, or ICMP port unreachable


def test_dns_nxdomain_and_bogon(lab: LabInfo) -> None:
    nx = lab.scenario.by_block("dns_nxdomain")[0]
    assert _dns(lab, "cn", nx.name, lab.resolver_v4) == [{"rcode": "NXDOMAIN", "addrs": []}]
    assert _dns(lab, "open", nx.name, lab.resolver_v4)[0]["addrs"] == [nx.a]
    bogon = lab.scenario.by_block("dns_bogon")[0]
    assert _dns(lab, "cn", bogon.name, lab.resolver_v4) == [
        {"rcode": "NOERROR", "addrs": [lab.scenario.censor.bogon]}
    ]


def test_keyword_in_request_line_reset_at_cn_not_open(lab: LabInfo, spares) -> None:
    ip = spares.v4()
    args = ("http", "--ip", ip, "--host", "news.example", "--path", "/falun")
    assert lab.client("cn", *args)["outcome"] == "reset"
    res = lab.client("open", *args)
    assert res["outcome"] == "ok" and res["status"] == 200


def test_keyword_combination_needs_all_words(lab: LabInfo, spares) -> None:
    assert (
        lab.client(
            "cn", "http", "--ip", spares.v4(), "--host", "a.example", "--path", "/tiananmen"
        )["outcome"]
        == "ok"
    )
    assert (
        lab.client(
            "cn", "http", "--ip", spares.v4(), "--host", "a.example", "--path", "/tiananmen-1989"
        )["outcome"]
        == "reset"
    )


def test_keyword_split_across_segments_still_caught(lab: LabInfo, spares) -> None:
    # "GET /fal" | "un HTTP/1.1 ...": no single segment holds the keyword.
    res = lab.client(
        "cn", "http", "--ip", spares.v4(), "--host", "b.example", "--path", "/falun", "--split", "8"
    )
    assert res["outcome"] == "reset"


def test_blocked_host_header_reset_ipv4_and_ipv6(lab: LabInfo) -> None:
    d = lab.scenario.by_block("http_rst")[0]
    for ip in (d.a, d.aaaa):
        assert lab.client("cn", "http", "--ip", ip, "--host", d.name)["outcome"] == "reset"
        res = lab.client("open", "http", "--ip", ip, "--host", d.name)
        assert res["outcome"] == "ok" and res["title"] == d.title


def test_blocked_sni_reset(lab: LabInfo) -> None:
    d = lab.scenario.by_block("sni_rst")[0]
    args = ("tls", "--ip", d.a, "--sni", d.name, "--ca", lab.ca_pem)
    assert lab.client("cn", *args)["outcome"] == "reset"
    res = lab.client("open", *args)
    assert res["outcome"] == "ok" and res["title"] == d.title


def test_accessible_https_site_is_fine_at_cn(lab: LabInfo) -> None:
    d = next(d for d in lab.scenario.by_block("none") if d.scheme == "https")
    res = lab.client("cn", "tls", "--ip", d.a, "--sni", d.name, "--ca", lab.ca_pem)
    assert res["outcome"] == "ok" and res["title"] == d.title


def test_blackholed_ip_times_out(lab: LabInfo) -> None:
    d = lab.scenario.by_block("blackhole")[0]
    assert (
        lab.client("cn", "tcp", "--ip", d.a, "--port", "443", "--timeout", "1")["outcome"]
        == "timeout"
    )
    assert lab.client("open", "tcp", "--ip", d.a, "--port", "443")["outcome"] == "ok"


def test_blockpage_injected(lab: LabInfo) -> None:
    d = lab.scenario.by_block("blockpage")[0]
    cn = lab.client("cn", "http", "--ip", d.a, "--host", d.name)
    assert cn["outcome"] == "ok" and cn["title"] == lab.scenario.censor.blockpage_title
    open_ = lab.client("open", "http", "--ip", d.a, "--host", d.name)
    assert open_["title"] == d.title


def test_dns_blockpage_sends_the_name_to_the_censors_block_page_server(lab: LabInfo) -> None:
    d = lab.scenario.by_block("dns_blockpage")[0]
    assert [a["addrs"] for a in _dns(lab, "cn", d.name, lab.resolver_v4)] == [[BLOCKPAGE_V4]]
    assert [a["addrs"] for a in _dns(lab, "open", d.name, lab.resolver_v4)] == [[d.a]]
    page = lab.client("cn", "http", "--ip", BLOCKPAGE_V4, "--host", d.name)
    assert (page["status"], page["title"]) == (200, lab.scenario.censor.blockpage_title)
    # No certificate for the name there: port 443 of the block-page server refuses.
    assert lab.client("cn", "tcp", "--ip", BLOCKPAGE_V4, "--port", "443")["outcome"] == "refused"
    assert lab.client("open", "http", "--ip", d.a, "--host", d.name)["title"] == d.title


def test_residual_blocks_same_triple_not_other_port(lab: LabInfo, spares) -> None:
    assert lab.scenario.censor.residual_seconds >= 10
    ip = spares.v4()
    assert (
        lab.client("cn", "http", "--ip", ip, "--host", "c.example", "--path", "/falun")["outcome"]
        == "reset"
    )
    clean = ("http", "--ip", ip, "--host", "c.example", "--path", "/weather")
    # An RST|ACK answering the SYN: Linux reports it as "connection refused".
    assert lab.client("cn", *clean)["outcome"] == "connect_refused"
    assert lab.client("cn", *clean, "--port", "8080")["outcome"] == "ok"
    assert lab.client("open", *clean)["outcome"] == "ok"


def test_down_domain_times_out_everywhere(lab: LabInfo) -> None:
    d = lab.scenario.by_block("down")[0]
    for vantage in ("cn", "open"):
        res = lab.client(vantage, "tcp", "--ip", d.a, "--port", "80", "--timeout", "0.5")
        assert res["outcome"] == "timeout"


def test_censor_counted_its_decisions(lab: LabInfo) -> None:
    st = topology.status()
    assert st.up and set(st.namespaces) == {"cs-internet", "cs-censor", "cs-vp-cn", "cs-vp-open"}
    decisions = st.censor.get("decisions", {})
    assert decisions, "censor wrote no statistics"
    assert st.censor.get("send_failures") == 0


def test_censor_survives_eperm_on_forged_packets(lab: LabInfo, spares) -> None:
    """A firewall DROP on the censor's own output makes raw sends fail with EPERM."""
    rule = ["-d", lab.vantages["cn"].ipv4, "-p", "tcp", "-j", "DROP"]
    ipt = ["ip", "netns", "exec", "cs-censor", "iptables", "-w"]
    before = lab.censor_stats().get("send_failures", 0)
    subprocess.run([*ipt, "-I", "OUTPUT", *rule], check=True)
    try:
        lab.client(
            "cn",
            "http",
            "--ip",
            spares.v4(),
            "--host",
            "d.example",
            "--path",
            "/falun",
            "--timeout",
            "1",
        )
    finally:
        subprocess.run([*ipt, "-D", "OUTPUT", *rule], check=True)
    res = lab.client("cn", "http", "--ip", spares.v4(), "--host", "d.example", "--path", "/falun")
    assert res["outcome"] == "reset"  # still censoring
    assert topology.status().up
    deadline = time.monotonic() + 3
    while lab.censor_stats().get("send_failures", 0) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lab.censor_stats()["send_failures"] > before


def test_lab_resolver_has_room_for_query_bursts(lab: LabInfo) -> None:
    """The lab DNS server's receive buffer is enlarged (bursts of thousands of queries)."""
    import re

    from lab import servers

    for resolver in (lab.resolver_v4, lab.resolver_v6):
        out = subprocess.run(
            ["ip", "netns", "exec", "cs-internet", "ss", "-ulnm", f"src [{resolver}]:53"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        buffers = [int(rb) for rb in re.findall(r"\brb(\d+)", out)]
        assert len(buffers) == 1, out
        assert buffers[0] >= servers.DNS_RECEIVE_BUFFER, out
