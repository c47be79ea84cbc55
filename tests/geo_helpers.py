"""Small MaxMind DB files in the two layouts the probe reads, written with mmdb-writer.

Record shapes follow the vendors' documentation: MaxMind's GeoIP2/GeoLite2 binary database field
reference (`country.iso_code`, `registered_country`, `autonomous_system_number` as uint32,
`autonomous_system_organization`) and DB-IP's Lite MMDB files (the same field names; the
country file has no `registered_country`).
"""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MmdbU32, MMDBWriter
from netaddr import IPSet

ITALY = {"geoname_id": MmdbU32(3175395), "iso_code": "IT", "names": {"en": "Italy"}}
EUROPE = {"code": "EU", "geoname_id": MmdbU32(6255148), "names": {"en": "Europe"}}


def country_record(cc: str, *, layout: str) -> dict[str, object]:
    country = {**ITALY, "iso_code": cc, "is_in_european_union": cc == "IT"}
    record: dict[str, object] = {"continent": EUROPE, "country": country}
    if layout == "geolite2":
        record["registered_country"] = country
    return record


def asn_record(asn: int, org: str) -> dict[str, object]:
    return {"autonomous_system_number": MmdbU32(asn), "autonomous_system_organization": org}


def write_mmdb(path: Path, database_type: str, networks: dict[str, dict[str, object]]) -> Path:
    """An IPv6 tree with IPv4 mapped in (as both vendors ship), one record per network."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": f"censorscope test {database_type}"},
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def vantage_databases(
    directory: Path, layout: str, networks: dict[str, tuple[str, int, str]]
) -> list[Path]:
    """A country and an ASN file in `layout` ("dbip"/"geolite2"): network -> (cc, asn, org)."""
    kind = {
        "dbip": ("DBIP-Country-Lite", "DBIP-ASN-Lite"),
        "geolite2": ("GeoLite2-Country", "GeoLite2-ASN"),
    }
    country_type, asn_type = kind[layout]
    country = write_mmdb(
        directory / f"{layout}-country.mmdb",
        country_type,
        {net: country_record(cc, layout=layout) for net, (cc, _a, _o) in networks.items()},
    )
    asn = write_mmdb(
        directory / f"{layout}-asn.mmdb",
        asn_type,
        {net: asn_record(a, o) for net, (_c, a, o) in networks.items()},
    )
    return [country, asn]
