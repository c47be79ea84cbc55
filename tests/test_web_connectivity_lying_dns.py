"""A lying resolver sends the site to an "Access Denied" page from the same server software.

Issue 14: web_connectivity v0.4 (and v0.5) call a page accessible whenever the status code and
the uncommon header names match, so a block page served by the same stack as the site (a
tenth of the length, another title) passed as the site although the DNS answer was already
inconsistent. The probe runs here against real servers on loopback, our helper and two DNS
servers; no fingerprints are given, so only the comparison can tell.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.helper_config import HelperConfig
from probes.nettests.web_connectivity_v05 import SIMILARITY_SAME_PAGE
from tests.loopback import FakeDNSServer, ServerThread, WebServer
from tests.loopback.control_helper import free_port_on, running_helper

CENSORSCOPE = [sys.executable, "-m", "probes.cli"]


@pytest.fixture(scope="module")
def lying_world() -> Iterator[dict[str, Any]]:
    port = free_port_on(["127.0.0.2", "127.0.0.6"])
    servers = ServerThread("wc-lying-dns")
    try:
        site = servers.start(
            WebServer("127.0.0.2", port, title="Daily Example News", paragraphs=40)
        )
        block = servers.start(WebServer("127.0.0.6", port, behaviour="blockpage"))
        # hop.test: a redirect target with a second address where nothing listens.
        zone = {"news.test": ["127.0.0.2"], "hop.test": ["127.0.0.2", "127.0.0.8"]}
        truthful = servers.start(FakeDNSServer("127.0.0.3", 0, zone))
        lying = servers.start(FakeDNSServer("127.0.0.4", 0, {"news.test": ["127.0.0.6"]}))
        config = HelperConfig(resolver=truthful.address, allow_private=True)
        with running_helper(config) as helper_url:
            yield {
                "port": port,
                "lying": lying,
                "truthful": truthful,
                "helper": helper_url,
                "site": site,
                "block": block,
            }
    finally:
        servers.close()


def _measure(world: dict[str, Any], results: Path, resolver: str) -> dict[str, Any]:
    url = f"http://news.test:{world['port']}/"
    cmd = [
        *CENSORSCOPE, "run", "web_connectivity", "--input", url, "--results", str(results),
        "--no-progress", "--resolver", resolver, "--helper", world["helper"], "--timeout", "10",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [path] = results.glob("raw/date=*/vantage=*/test_name=web_connectivity/*.jsonl")
    [line] = path.read_bytes().splitlines()
    measurement: dict[str, Any] = json.loads(line)
    assert measurement["test_version"].startswith("0.5.")
    return dict(measurement["test_keys"])


def test_block_page_from_the_same_server_software_is_not_accessible(
    lying_world: dict[str, Any], tmp_path: Path
) -> None:
    keys = _measure(lying_world, tmp_path, lying_world["lying"].address)
    # The comparison v0.4 and v0.5 make: same status, shared uncommon header names.
    assert keys["status_code_match"] is True and keys["headers_match"] is True
    assert keys["body_length_match"] is False and keys["title_match"] is False
    assert keys["body_proportion"] < 0.2
    assert keys["dns_consistency"] == "inconsistent"
    # v0.5 alone: accessible; ours: DNS blocking.
    assert keys["x_v05_blocking"] is False and keys["x_v05_accessible"] is True
    assert keys["blocking"] == "dns" and keys["accessible"] is False
    assert keys["blocking_detail"] == "dns.bogon"  # the lie is a loopback address
    # The reference page through the helper's address is the real one, and differs.
    assert keys["x_reference"]["why"] == "helper_addresses"
    assert keys["x_reference"]["address"].startswith("127.0.0.2:")
    assert keys["x_reference_similarity"] < SIMILARITY_SAME_PAGE
    # The helper's address got a flow of its own (ts-017 E005), outside the classic view.
    th = [c for c in keys["tcp_connect"] if c["ip"] == "127.0.0.2"]
    assert th and all("classic" not in c["tags"] for c in th)


def test_the_truthful_resolver_sees_the_site_accessible(
    lying_world: dict[str, Any], tmp_path: Path
) -> None:
    keys = _measure(lying_world, tmp_path, lying_world["truthful"].address)
    assert keys["dns_consistency"] == "consistent"
    assert keys["blocking"] is False and keys["accessible"] is True
    assert keys["x_blocking_flags"] == 32  # success
    assert "x_reference" not in keys  # nothing to doubt: no second fetch


def test_more_than_ten_redirects_is_down_everywhere(
    lying_world: dict[str, Any], tmp_path: Path
) -> None:
    """netem's redirectWithMoreThanTenRedirects on loopback: 0.5 follows 10 redirects, marks
    the 11th response failed; the helper gave up too, so the site is down, not blocked."""
    url = f"http://news.test:{lying_world['port']}/redirect/15"
    cmd = [
        *CENSORSCOPE, "run", "web_connectivity", "--input", url, "--results", str(tmp_path),
        "--no-progress", "--resolver", lying_world["truthful"].address,
        "--helper", lying_world["helper"], "--timeout", "10",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("raw/date=*/vantage=*/test_name=web_connectivity/*.jsonl")
    keys = json.loads(path.read_bytes().splitlines()[0])["test_keys"]
    assert len(keys["requests"]) == 11
    last = keys["requests"][0]
    assert "redirects" in last["failure"] and "depth=10" in last["tags"]
    assert keys["control"]["http_request"]["failure"]
    assert keys["blocking"] is False and keys["accessible"] is False


def test_every_address_of_a_redirect_host_is_tried(
    lying_world: dict[str, Any], tmp_path: Path
) -> None:
    """ts-017 E002: the GET reached hop.test on its first address; the second (nothing
    listens) gets a flow of its own at depth 1, which explains nothing away: the final page
    matches, so the site is accessible."""
    port = lying_world["port"]
    url = f"http://news.test:{port}/redirect-to?url=http://hop.test:{port}/"
    cmd = [
        *CENSORSCOPE, "run", "web_connectivity", "--input", url, "--results", str(tmp_path),
        "--no-progress", "--resolver", lying_world["truthful"].address,
        "--helper", lying_world["helper"], "--timeout", "10",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("raw/date=*/vantage=*/test_name=web_connectivity/*.jsonl")
    keys = json.loads(path.read_bytes().splitlines()[0])["test_keys"]
    second = [c for c in keys["tcp_connect"] if c["ip"] == "127.0.0.8"]
    assert len(second) == 1 and "depth=1" in second[0]["tags"]
    assert second[0]["status"]["failure"] == "connection_refused"
    hop_lookups = [q for q in keys["queries"] if q["hostname"] == "hop.test"]
    assert hop_lookups and all("depth=1" in q["tags"] for q in hop_lookups)
    assert keys["blocking"] is False and keys["accessible"] is True
