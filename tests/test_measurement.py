"""The OONI base format: real measurements survive a load/dump cycle; scrubbing is thorough."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from probes.measurement import (
    SCRUBBED,
    Measurement,
    MeasurementError,
    Scrubber,
    new_measurement_uid,
    new_report_id,
    ooni_asn,
)

OONI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ooni"
OONI_FILES = sorted(OONI_DIR.glob("*.jsonl"))


def _real_measurements() -> list[tuple[str, dict]]:
    out = []
    for path in OONI_FILES:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            data = json.loads(line)
            if isinstance(data, dict) and "test_name" in data:
                out.append((f"{path.name}:{lineno}", data))
    return out


REAL = _real_measurements()


def test_shared_data_present() -> None:
    assert OONI_FILES, f"reference data missing in {OONI_DIR}"
    assert len(REAL) > 150


@pytest.mark.parametrize(("where", "data"), REAL, ids=[w for w, _ in REAL])
def test_real_measurement_round_trips(where: str, data: dict) -> None:
    measurement = Measurement.from_dict(data)
    out = measurement.to_dict()
    assert list(out) == list(data), where
    assert out == data, where
    # And through our JSON line writer.
    assert orjson.loads(measurement.to_json_line()) == data


def test_our_measurement_has_base_keys_in_order() -> None:
    m = Measurement(test_name="web_connectivity", test_version="0.4.3", input="http://x.org/")
    keys = list(m.to_dict())
    for required in (
        "measurement_uid",
        "report_id",
        "probe_cc",
        "probe_asn",
        "test_keys",
        "software_name",
        "data_format_version",
        "annotations",
        "test_runtime",
    ):
        assert required in keys
    assert keys == sorted(keys)  # base keys are written alphabetically, as OONI does


def test_bad_measurement_names_field() -> None:
    with pytest.raises(MeasurementError, match="test_name"):
        Measurement.from_dict({"input": "x"})
    with pytest.raises(MeasurementError, match="test_keys"):
        Measurement.from_dict({"test_name": "x", "test_keys": [1]})
    with pytest.raises(MeasurementError, match="not valid JSON"):
        Measurement.from_json(b"{nope")


def test_scrubber_replaces_whole_addresses_only() -> None:
    scrubber = Scrubber(["1.2.3.4", "2001:db8::1"])
    m = Measurement(
        test_name="web_connectivity",
        test_version="0.4.3",
        probe_ip="1.2.3.4",
        test_keys={
            "client_resolver": "1.2.3.4",
            "note": "from 1.2.3.4:5555 to 11.2.3.45 and 1.2.3.40",
            "v6": "2001:0db8:0000:0000:0000:0000:0000:0001",
            "nested": [{"addr": "[2001:db8::1]:443"}, "2001:db8::10"],
        },
    )
    out = scrubber.scrub(m)
    assert out.probe_ip == "127.0.0.1"
    keys = out.test_keys or {}
    assert keys["client_resolver"] == SCRUBBED
    assert keys["note"] == f"from {SCRUBBED}:5555 to 11.2.3.45 and 1.2.3.40"
    assert keys["v6"] == SCRUBBED
    assert keys["nested"] == [{"addr": f"[{SCRUBBED}]:443"}, "2001:db8::10"]
    assert '1.2.3.4"' not in out.to_json_line().decode()


def test_scrubber_learns_addresses_during_a_run() -> None:
    scrubber = Scrubber()
    m = Measurement(test_name="t", test_version="1", test_keys={"echo": "you are 9.9.9.9"})
    assert scrubber.scrub(m).test_keys == {"echo": "you are 9.9.9.9"}
    scrubber.learn("9.9.9.9")
    assert scrubber.scrub(m).test_keys == {"echo": f"you are {SCRUBBED}"}


def test_ids_look_like_ooni() -> None:
    rid = new_report_id("web_connectivity", "IT", "AS30722")
    assert "_webconnectivity_IT_30722_n1_" in rid
    uid = new_measurement_uid("web_connectivity", "IT")
    assert "_IT_webconnectivity_" in uid and len(uid.split("_")[-1]) == 16


def test_scrubber_matches_ipv6_in_any_case_and_leaves_clean_text_alone() -> None:
    scrubber = Scrubber(["2001:db8::abcd"])
    assert scrubber.scrub_text("peer 2001:DB8::ABCD said hi") == f"peer {SCRUBBED} said hi"
    clean = "nothing of ours: 2001:db8::abce, 11.0.0.1"
    assert scrubber.scrub_text(clean) is clean


def test_asn_takes_ooni_form_and_config_rejects_other_values(tmp_path: Path) -> None:
    """ooni/data reads probe_asn as int(probe_asn[2:]): "1234" would become AS34."""
    from probes.config import ConfigError, load_config

    assert [ooni_asn(v) for v in ("AS1234", "as1234", " 1234", 1234, "AS0")] == [
        "AS1234",
        "AS1234",
        "AS1234",
        "AS1234",
        "AS0",
    ]
    for bad in ("", "AS", "AS12a", "ASN1234", "-5", "AS-5"):
        with pytest.raises(ValueError):
            ooni_asn(bad)
    good = tmp_path / "good.toml"
    good.write_text('[vantage]\nprobe_asn = "3269"\n')
    assert load_config(good).vantage.probe_asn == "AS3269"
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[vantage]\nprobe_asn = "Telecom Italia"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: key 'vantage\.probe_asn'"):
        load_config(bad_file)


def test_a_bad_probe_asn_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from probes.config import ConfigError, load_config

    config = tmp_path / "good.toml"
    config.write_text('[vantage]\nprobe_asn = "AS3269"\n')
    monkeypatch.setenv("CENSORSCOPE_VANTAGE_PROBE_ASN", "Telecom Italia")
    with pytest.raises(ConfigError, match=r"^environment CENSORSCOPE_VANTAGE_PROBE_ASN: "):
        load_config(config)
