"""The OONI measurement data format (ooni/spec data-formats/df-000-base.md) and IP scrubbing.

A `Measurement` holds the base keys as typed attributes and keeps every key it did not model in
`extra`, in the order it was read, so a measurement published by OONI survives a load/dump cycle
with the same keys and values.  `test_keys` stays a plain dict: its schema belongs to the nettest.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import platform
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from probes import __version__, scrub
from probes.net.addresses import parse_ip

SOFTWARE_NAME = "censorscope"
SOFTWARE_VERSION = __version__
# df-000-base: "data_format_version" of the current base format.
DATA_FORMAT_VERSION = "0.2.0"
# df-000-base: the value of probe_ip when the probe does not share its address.
SCRUBBED_PROBE_IP = "127.0.0.1"
# probe-cli model.ScrubMeasurement: what replaces every other occurrence of the probe's IP.
SCRUBBED = "[scrubbed]"
UNKNOWN_CC = "ZZ"
UNKNOWN_ASN = "AS0"
# OONI timestamps: "YYYY-MM-DD HH:MM:SS", UTC.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Verdict vocabulary of test_keys.blocking (DESIGN 3); False = not blocked, None = inconclusive.
BLOCKING_TYPES = ("dns", "tcp_ip", "tls", "http-failure", "http-diff", "delivery")

# The base keys we model, in the order we write them.
BASE_KEYS = (
    "annotations",
    "data_format_version",
    "input",
    "measurement_start_time",
    "measurement_uid",
    "probe_asn",
    "probe_cc",
    "probe_ip",
    "probe_network_name",
    "report_id",
    "resolver_asn",
    "resolver_ip",
    "resolver_network_name",
    "software_name",
    "software_version",
    "test_helpers",
    "test_keys",
    "test_name",
    "test_runtime",
    "test_start_time",
    "test_version",
)


class MeasurementError(ValueError):
    """A measurement that does not follow the base format; names the offending field."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def ooni_time(moment: datetime | None = None) -> str:
    """Format a UTC instant the way OONI's base format does."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime(TIME_FORMAT)


def parse_ooni_time(text: str) -> datetime:
    """Parse an OONI timestamp; raises MeasurementError naming the bad value."""
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError) as exc:
        raise MeasurementError(
            "measurement_start_time", f"not 'YYYY-MM-DD HH:MM:SS': {text!r}"
        ) from exc


def compact_test_name(test_name: str) -> str:
    """OONI drops underscores from the test name inside report ids and uids."""
    return test_name.replace("_", "")


def asn_number(probe_asn: str) -> int:
    """'AS1234' -> 1234 (0 when unknown)."""
    try:
        return int(probe_asn.removeprefix("AS"))
    except ValueError:
        return 0


# OONI Probe's annotation values: Go's runtime.GOARCH for the architecture, and its platform
# names; ooni/data's pipeline files a missing annotation as "unknown".
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}
_OONI_PLATFORM = {"darwin": "macos", "win32": "windows"}


def base_annotations(vantage: str) -> dict[str, str]:
    """Every measurement's annotations: what OONI's pipeline reads, plus our vantage name."""
    machine = platform.machine().lower()
    return {
        "architecture": _GO_ARCH.get(machine, machine or "unknown"),
        "engine_name": SOFTWARE_NAME,
        "engine_version": SOFTWARE_VERSION,
        "platform": _OONI_PLATFORM.get(sys.platform, sys.platform),
        "vantage": vantage,
    }


def ooni_asn(value: str | int) -> str:
    """An AS number in OONI's form, "AS<number>" (ooni/data parses int(probe_asn[2:])).

    Accepts "AS1234", "as1234", "1234" or 1234; raises ValueError for anything else.
    """
    text = str(value).strip()
    digits = text[2:] if text[:2].upper() == "AS" else text
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"not an AS number (AS<number>): {value!r}")
    return f"AS{int(digits)}"


def new_report_id(
    test_name: str, probe_cc: str, probe_asn: str, moment: datetime | None = None
) -> str:
    """A report id shaped like OONI's: 20230307T142542Z_webconnectivity_US_7922_n1_<random>."""
    stamp = (moment or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return (
        f"{stamp}_{compact_test_name(test_name)}_{probe_cc}_{asn_number(probe_asn)}"
        f"_n1_{secrets.token_urlsafe(12).replace('-', 'x').replace('_', 'y')}"
    )


def new_measurement_uid(test_name: str, probe_cc: str, moment: datetime | None = None) -> str:
    """A uid shaped like OONI's: 20230307142542.625294_US_webconnectivity_9215f30cf2412f49."""
    stamp = (moment or datetime.now(UTC)).strftime("%Y%m%d%H%M%S.%f")
    return f"{stamp}_{probe_cc}_{compact_test_name(test_name)}_{secrets.token_hex(8)}"


@dataclass
class Measurement:
    """One OONI measurement. Unknown top-level keys are kept in `extra`."""

    test_name: str
    test_version: str
    input: str | None = None
    report_id: str = ""
    measurement_uid: str = ""
    probe_cc: str = UNKNOWN_CC
    probe_asn: str = UNKNOWN_ASN
    probe_network_name: str = ""
    probe_ip: str = SCRUBBED_PROBE_IP
    resolver_ip: str = ""
    resolver_asn: str = UNKNOWN_ASN
    resolver_network_name: str = ""
    test_start_time: str = ""
    measurement_start_time: str = ""
    test_runtime: float = 0.0
    software_name: str = SOFTWARE_NAME
    software_version: str = SOFTWARE_VERSION
    data_format_version: str = DATA_FORMAT_VERSION
    annotations: dict[str, Any] = field(default_factory=dict)
    test_helpers: dict[str, Any] | None = None
    test_keys: dict[str, Any] | None = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Key order as read (None for measurements we made): keeps a loaded measurement's shape.
    key_order: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def vantage(self) -> str | None:
        value = self.annotations.get("vantage")
        return value if isinstance(value, str) else None

    @property
    def blocking(self) -> Any:
        return (self.test_keys or {}).get("blocking")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Build from decoded JSON, checking the types of the keys every measurement has."""
        if not isinstance(data, Mapping):
            raise MeasurementError("(measurement)", "not a JSON object")
        for required in ("test_name",):
            if not isinstance(data.get(required), str):
                raise MeasurementError(required, "missing or not a string")
        test_keys = data.get("test_keys", {})
        if test_keys is not None and not isinstance(test_keys, dict):
            raise MeasurementError("test_keys", "not an object")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise MeasurementError("annotations", "not an object")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "key_order"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                kwargs[key] = value
            else:
                extra[key] = value
        kwargs["annotations"] = annotations
        if "test_version" not in kwargs:
            kwargs["test_version"] = ""
        return cls(**kwargs, extra=extra, key_order=tuple(data.keys()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in read order for loaded measurements, else base order."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.pop("extra")
        values.pop("key_order")
        values.update(self.extra)
        if self.key_order is not None:
            out = {key: values[key] for key in self.key_order if key in values}
            # Keys set after loading (e.g. a re-derived verdict stored in extra) come last.
            for key, value in values.items():
                if key not in out and (key in self.extra):
                    out[key] = value
            return out
        ordered = {key: values[key] for key in BASE_KEYS if key in values}
        ordered.update({k: v for k, v in values.items() if k not in ordered})
        return ordered

    def to_json_line(self) -> bytes:
        """One complete newline-terminated JSON line, as the store writes it."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_json(cls, line: bytes | str) -> Measurement:
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MeasurementError("(line)", f"not valid JSON: {exc}") from exc
        return cls.from_dict(data)


# Never learned: the placeholder probe_ip and its IPv6 twin.
_PLACEHOLDERS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


class Scrubber:
    """Removes the probe's own addresses from every string of a measurement.

    Like probe-cli's ScrubMeasurement it works on the serialised JSON, so no key is missed; unlike
    a plain replace it matches whole addresses only, in every form probes/scrub.py lists (IPv6
    spelt any valid way, dashed and reverse-DNS names, inside base64 bodies and DNS messages).
    Addresses the probe learns at run time (e.g. reflected back by an echo server or seen in a
    packet capture) are added with `learn`.
    """

    def __init__(self, own_addresses: Iterable[str] = ()) -> None:
        self._addrs: set[scrub.IPAddress] = set()
        self._forms: set[str] = set()
        self._v6: set[ipaddress.IPv6Address] = set()
        self._signatures: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._wire: Callable[[bytes], bytes] = bytes
        for ip in own_addresses:
            self.learn(ip)

    def learn(self, ip: str) -> None:
        """Add an address of the probe's own (never the scrubbing placeholders themselves)."""
        addr = parse_ip(ip) if ip else None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # an IPv4 address (a dual-stack socket's view of it)
        if addr is None or addr.is_unspecified or addr in _PLACEHOLDERS or addr in self._addrs:
            return
        self._addrs.add(addr)
        self._forms |= scrub.text_forms(addr)
        self._v6 = scrub.v6_family(self._addrs)
        self._signatures = {scrub.v6_signature(a) for a in self._v6}
        # One alternation for all addresses: one pass over the text per measurement.
        self._pattern = re.compile(
            "|".join(
                scrub.token_pattern(form) for form in sorted(self._forms, key=len, reverse=True)
            ),
            re.IGNORECASE,
        )
        self._wire = scrub.wire_scrubber(self._addrs)

    @property
    def addresses(self) -> list[str]:
        return sorted(str(a) for a in self._addrs)

    def scrub_text(self, text: str) -> str:
        if self._pattern is None:
            return text
        lowered = text.lower()
        if any(form.lower() in lowered for form in self._forms):
            text = self._pattern.sub(SCRUBBED, text)
            lowered = text.lower()
        if any(sig in lowered for sig in self._signatures):
            replaced = scrub.replace_v6_tokens(text, self._v6, SCRUBBED)
            if replaced != text:  # unchanged text stays the same object (callers rely on it)
                text = replaced
        return text

    def _scrub_blobs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Base64 values: bodies and headers (MaybeBinaryData) get the text scrub, DNS messages
        a length-keeping one that leaves them parseable."""
        new, changed = scrub.scrub_blobs(data, self.scrub_text, self._wire)
        return new if changed else data

    def scrub(self, measurement: Measurement) -> Measurement:
        """Return a scrubbed copy: probe_ip set to 127.0.0.1, the addresses replaced elsewhere."""
        data = self.scrub_dict(measurement.to_dict())
        return Measurement.from_dict(data) if measurement.key_order else _rebuild(data)

    def scrub_dict(self, measurement: dict[str, Any]) -> dict[str, Any]:
        """`scrub` on a decoded measurement (a copy; key order kept, probe_ip last if it was
        absent): for publishing measurements read back as JSON without modelling them."""
        data = dict(measurement)
        data["probe_ip"] = SCRUBBED_PROBE_IP
        if self._pattern is not None:
            text = orjson.dumps(data).decode()
            if '"base64"' in text or '"raw' in text:
                data = self._scrub_blobs(data)
                text = orjson.dumps(data).decode()
            cleaned = self.scrub_text(text)
            if cleaned != text:  # most measurements hold none of our addresses: no re-parse
                data = orjson.loads(cleaned)
        return data


def _rebuild(data: dict[str, Any]) -> Measurement:
    """from_dict without remembering key order (our own measurements keep base order)."""
    m = Measurement.from_dict(data)
    m.key_order = None
    return m
