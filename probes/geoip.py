"""An offline IP-to-country/ASN database in MaxMind DB format (read with `maxminddb`).

Two free layouts are read, and any number of files may be given (a country file and an ASN
file are usually separate):

- DB-IP "IP to Country Lite" / "IP to ASN Lite" (CC BY 4.0, https://db-ip.com/db/lite.php);
- MaxMind GeoLite2-Country / GeoLite2-ASN (GeoLite2 EULA, free account).

Both keep the country in `country.iso_code` (GeoLite2 also has `registered_country`, which
DB-IP leaves out, so it is only a fallback: OONI's probe-cli geoipx reads `country` for the same
reason) and the network in `autonomous_system_number` / `autonomous_system_organization`
(MaxMind's ASN database reference). A City database works too: it has the same `country`.

`GeoDatabase.asn(ip)` is the small hook the control helper can call for oohelperd's `ip_info`.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

UNKNOWN_CC = "ZZ"
UNKNOWN_ASN = 0


class GeoIPError(ValueError):
    """A database that cannot be opened or read, with its path."""


@dataclass(frozen=True)
class IPInfo:
    """What the databases say about one address (ZZ / 0 / "" where they say nothing)."""

    cc: str = UNKNOWN_CC
    asn: int = UNKNOWN_ASN
    network_name: str = ""

    @property
    def asn_string(self) -> str:
        """OONI's spelling: "AS<number>" ("AS0" when unknown)."""
        return f"AS{self.asn}"

    @property
    def known(self) -> bool:
        return self.cc != UNKNOWN_CC or self.asn != UNKNOWN_ASN


def _country(record: Mapping[str, Any]) -> str | None:
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, Mapping):
            code = part.get("iso_code")
            if isinstance(code, str) and len(code) == 2 and code.isalpha():
                return code.upper()
    return None


def _asn(record: Mapping[str, Any]) -> tuple[int, str] | None:
    number = record.get("autonomous_system_number")
    if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
        return None
    org = record.get("autonomous_system_organization")
    return number, org if isinstance(org, str) else ""


class GeoDatabase:
    """One or more .mmdb files read as one: the first file that knows a field answers it."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._readers: list[Any] = []
        for path in self.paths:
            try:
                self._readers.append(maxminddb.open_database(str(path)))
            except FileNotFoundError as exc:
                self.close()
                raise GeoIPError(f"{path}: no such GeoIP database") from exc
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                self.close()
                raise GeoIPError(f"{path}: not a MaxMind DB file: {exc}") from exc

    def stale(self, now: float, max_age_days: float) -> list[str]:
        """The files built more than `max_age_days` before `now` (epoch s), with their age:
        networks change hands, and a months-old file puts probes in the wrong AS."""
        old = []
        for path, reader in zip(self.paths, self._readers, strict=True):
            age = (now - reader.metadata().build_epoch) / 86400
            if age > max_age_days:
                old.append(f"{path.name} ({age:.0f} days old)")
        return old

    def close(self) -> None:
        for reader in self._readers:
            with contextlib.suppress(Exception):
                reader.close()
        self._readers = []

    def __enter__(self) -> GeoDatabase:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _records(self, ip: str) -> Iterable[Mapping[str, Any]]:
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return
        for reader in self._readers:
            try:
                record = reader.get(addr)
            except ValueError:  # an IPv6 address in an IPv4-only database
                continue
            if isinstance(record, Mapping):
                yield record

    def lookup(self, ip: str) -> IPInfo:
        """Country, ASN and network name of one address (unknown parts stay ZZ / 0 / "")."""
        cc: str | None = None
        asn: tuple[int, str] | None = None
        for record in self._records(ip):
            cc = cc or _country(record)
            asn = asn or _asn(record)
            if cc and asn:
                break
        number, name = asn or (UNKNOWN_ASN, "")
        return IPInfo(cc=cc or UNKNOWN_CC, asn=number, network_name=name)

    def asn(self, ip: str) -> tuple[int, str]:
        """(AS number, organisation) of one address, (0, "") when unknown: the helper's
        `ip_info` hook (oohelperd fills ip_info.asn the same way)."""
        info = self.lookup(ip)
        return info.asn, info.network_name
