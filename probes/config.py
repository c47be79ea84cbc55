"""The probe's TOML configuration: who the vantage is, how it measures, where results go.

Every key is optional; a bad key or value raises ConfigError naming the file and the key.
Secrets may come from the environment instead of the file (CENSORSCOPE_<SECTION>_<KEY>).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.measurement import ooni_asn

# OONI's public web-connectivity test helpers (OONI-NOTES "Test helper protocol").
OONI_HELPERS = (
    "https://0.th.ooni.org/",
    "https://1.th.ooni.org/",
    "https://2.th.ooni.org/",
    "https://3.th.ooni.org/",
)


class ConfigError(ValueError):
    """A configuration problem, with the file and key it comes from."""


@dataclass
class VantageConfig:
    """The identity written into every measurement; what is left unknown (ZZ, AS0, empty) is
    looked up with [geoip] (probes/vantage.py)."""

    name: str = "default"
    probe_cc: str = "ZZ"
    probe_asn: str = "AS0"
    network_name: str = ""
    # Addresses of the probe's own that must never appear in a stored measurement.
    own_addresses: list[str] = field(default_factory=list)


@dataclass
class ProbeConfig:
    helpers: list[str] = field(default_factory=lambda: list(OONI_HELPERS))
    resolver: str | None = None
    concurrency: int = 16
    timeout: float = 30.0
    per_host_concurrency: int = 2
    per_host_interval: float = 0.2
    ca_file: str | None = None
    results: str = "results"
    fingerprints: list[str] = field(default_factory=list)


@dataclass
class GeoIPConfig:
    """Where the vantage is: an offline database and the sources of the probe's public address.

    Used only for what [vantage] leaves unknown (ZZ, AS0, empty): the operator's word wins.
    """

    # MaxMind DB files (DB-IP "IP to Country/ASN Lite" or GeoLite2-Country/-ASN), any order.
    databases: list[str] = field(default_factory=list)
    # URLs of our helpers/collectors answering GET /x/whoami; empty: our configured helpers
    # (not OONI's) and the upload collector.
    whoami: list[str] = field(default_factory=list)
    # STUN servers (HOST[:PORT], RFC 8489 Binding) as another source of the public address.
    stun: list[str] = field(default_factory=list)
    # A name whose A record is the address of the resolver asking (our helper's
    # `whoami.<zone>`); empty: the name a whoami endpoint offers, else none.
    resolver_whoami: str = ""


@dataclass
class UploadConfig:
    """Where `upload` and the scheduler send measurements.

    The token comes from CENSORSCOPE_UPLOAD_TOKEN, `token_file` (a private file holding it) or
    `token` (then keep this config private); `allow_http` permits plain http to a collector
    that is not on loopback (a lab: the token then crosses the network in clear).
    """

    collector: str = ""
    token: str = ""
    token_file: str = ""
    allow_http: bool = False


@dataclass
class ConsentConfig:
    """The informed-consent notice (probes/consent.py): `informed = true` accepts it for
    unattended runs (or CENSORSCOPE_CONSENT_INFORMED=true)."""

    informed: bool = False


@dataclass
class Config:
    vantage: VantageConfig = field(default_factory=VantageConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    geoip: GeoIPConfig = field(default_factory=GeoIPConfig)
    consent: ConsentConfig = field(default_factory=ConsentConfig)
    source: str = "(defaults)"
    raw: dict[str, Any] = field(default_factory=dict)


_SECTIONS: dict[str, Any] = {
    "vantage": VantageConfig,
    "probe": ProbeConfig,
    "upload": UploadConfig,
    "geoip": GeoIPConfig,
    "consent": ConsentConfig,
}


def _check_type(where: str, key: str, value: Any, expected: Any) -> Any:
    """Coerce/validate one value against the dataclass annotation (a small, explicit subset)."""
    text = str(expected)
    if "bool" in text:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}': expected true or false, got {value!r}")
        return value
    if "list" in text:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: key '{key}': expected a list of strings")
        return value
    if "float" in text:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{where}: key '{key}': expected a positive number, got {value!r}")
        return float(value)
    if "int" in text:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{where}: key '{key}': expected a positive integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: key '{key}': expected a string, got {value!r}")
    return value


def load_config(path: Path | None) -> Config:
    """Read the file (if any), then apply CENSORSCOPE_* environment overrides."""
    config = Config()
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such file") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        config.source = str(path)
        config.raw = data
    for section, cls in _SECTIONS.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{config.source}: [{section}] must be a table")
        target = getattr(config, section)
        known = cls.__dataclass_fields__
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{config.source}: unknown key '{section}.{key}' (known: {', '.join(known)})"
                )
            setattr(
                target, key, _check_type(config.source, f"{section}.{key}", value, known[key].type)
            )
        for key, spec in known.items():
            env = os.environ.get(f"CENSORSCOPE_{section.upper()}_{key.upper()}")
            if env is None:
                continue
            parsed: Any = env.split(",") if "list" in str(spec.type) else env
            if "bool" in str(spec.type):
                parsed = _env_flag(f"CENSORSCOPE_{section.upper()}_{key.upper()}", env)
            if "float" in str(spec.type) or (
                "int" in str(spec.type) and "list" not in str(spec.type)
            ):
                try:
                    parsed = float(env) if "float" in str(spec.type) else int(env)
                except ValueError as exc:
                    raise ConfigError(
                        f"environment CENSORSCOPE_{section.upper()}_{key.upper()}: "
                        f"not a number: {env!r}"
                    ) from exc
            setattr(target, key, _check_type("environment", f"{section}.{key}", parsed, spec.type))
    try:  # OONI's form, "AS<number>": its pipeline reads the number after "AS"
        config.vantage.probe_asn = ooni_asn(config.vantage.probe_asn)
    except ValueError as exc:
        origin = (
            "environment CENSORSCOPE_VANTAGE_PROBE_ASN"
            if "CENSORSCOPE_VANTAGE_PROBE_ASN" in os.environ
            else f"{config.source}: key 'vantage.probe_asn'"
        )
        raise ConfigError(f"{origin}: {exc}") from exc
    if "resolver" in data.get("probe", {}) and not config.probe.resolver:
        config.probe.resolver = None
    return config


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_flag(value: str) -> bool | None:
    """An on/off environment value: True, False, or None for a word that is neither (the
    caller names the variable; a typo must never quietly turn a safety setting off)."""
    text = value.strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    return None


def _env_flag(name: str, value: str) -> bool:
    flag = parse_flag(value) if value.strip() else False
    if flag is None:
        raise ConfigError(f"environment {name}: expected 1/0, true/false, got {value!r}")
    return flag
