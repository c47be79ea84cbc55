"""probes.geoip on MaxMind DB files in DB-IP's and GeoLite2's layouts (tests/geo_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from probes.geoip import GeoDatabase, GeoIPError, IPInfo
from tests.geo_helpers import asn_record, vantage_databases, write_mmdb

NETWORKS = {
    "203.0.113.0/24": ("IT", 30722, "Vodafone Italia S.p.A."),
    "2001:db8::/32": ("DE", 3320, "Deutsche Telekom AG"),
}


@pytest.mark.parametrize("layout", ["dbip", "geolite2"])
def test_country_and_asn_files_read_as_one(tmp_path: Path, layout: str) -> None:
    with GeoDatabase(vantage_databases(tmp_path, layout, NETWORKS)) as db:
        assert db.lookup("203.0.113.7") == IPInfo("IT", 30722, "Vodafone Italia S.p.A.")
        assert db.lookup("2001:db8::42") == IPInfo("DE", 3320, "Deutsche Telekom AG")
        assert db.lookup("203.0.113.7").asn_string == "AS30722"
        assert db.asn("2001:db8::42") == (3320, "Deutsche Telekom AG")


@pytest.mark.parametrize("layout", ["dbip", "geolite2"])
def test_unknown_addresses_stay_zz_as0(tmp_path: Path, layout: str) -> None:
    with GeoDatabase(vantage_databases(tmp_path, layout, NETWORKS)) as db:
        info = db.lookup("198.51.100.1")
        assert info == IPInfo() and info.asn_string == "AS0" and not info.known
        assert db.lookup("not an address") == IPInfo()
        assert db.asn("198.51.100.1") == (0, "")


def test_registered_country_is_a_fallback_only(tmp_path: Path) -> None:
    # GeoLite2 leaves `country` out for some networks (e.g. anycast) but keeps registered_country.
    path = write_mmdb(
        tmp_path / "c.mmdb",
        "GeoLite2-Country",
        {
            "192.0.2.0/24": {"registered_country": {"iso_code": "FR"}},
            "198.51.100.0/24": {
                "country": {"iso_code": "IT"},
                "registered_country": {"iso_code": "FR"},
            },
        },
    )
    with GeoDatabase([path]) as db:
        assert db.lookup("192.0.2.1").cc == "FR"
        assert db.lookup("198.51.100.1").cc == "IT"


def test_an_ipv4_only_database_answers_ipv6_with_unknown(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="DBIP-ASN-Lite")
    writer.insert_network(IPSet(["203.0.113.0/24"]), asn_record(64500, "Example"))
    path = tmp_path / "v4.mmdb"
    writer.to_db_file(str(path))
    with GeoDatabase([path]) as db:
        assert db.lookup("203.0.113.1").asn == 64500
        assert db.lookup("2001:db8::1") == IPInfo()


def test_a_missing_or_bad_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match=r"nothere\.mmdb: no such"):
        GeoDatabase([tmp_path / "nothere.mmdb"])
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"this is not a MaxMind DB")
    with pytest.raises(GeoIPError, match=r"bad\.mmdb: not a MaxMind DB"):
        GeoDatabase([bad])


def test_stale_files_are_named_with_their_age(tmp_path: Path) -> None:
    import time

    with GeoDatabase(vantage_databases(tmp_path, "geolite2", NETWORKS)) as db:
        now = time.time()
        assert db.stale(now, 90) == []
        later = db.stale(now + 120 * 86400, 90)
        assert [name.split(" ")[0] for name in later] == [
            "geolite2-country.mmdb",
            "geolite2-asn.mmdb",
        ]
        assert all("120 days old" in name for name in later)


def test_helper_command_fills_ip_info_asn_from_the_geoip_db(tmp_path: Path) -> None:
    """`censorscope helper --geoip-db` gives ip_info real ASNs (oohelperd's ipinfo.go does the
    same from its own database); without a database every asn would be 0."""
    import subprocess
    import sys

    import httpx

    from tests.loopback.control_helper import free_port_on, wait_http

    database = write_mmdb(
        tmp_path / "asn.mmdb",
        "GeoLite2-ASN",
        {"127.0.0.0/24": asn_record(64500, "Loopback Networks")},
    )
    port = free_port_on(["127.0.0.1"])
    helper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "probes.cli",
            "helper",
            "--listen",
            f"127.0.0.1:{port}",
            "--allow-private",
            "--geoip-db",
            str(database),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        reply = httpx.post(
            url,
            json={
                "http_request": "http://127.0.0.1:9/",
                "http_request_headers": {},
                "tcp_connect": ["127.0.0.1:9"],
            },
            timeout=30,
        )
        assert reply.status_code == 200
        assert reply.json()["ip_info"]["127.0.0.1"]["asn"] == 64500
    finally:
        helper.terminate()
        helper.wait(10)


def test_helper_command_names_a_bad_geoip_db(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "absent.mmdb"
    done = subprocess.run(
        [sys.executable, "-m", "probes.cli", "helper", "--geoip-db", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(missing) in done.stderr
