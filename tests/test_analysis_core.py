"""analysis: loading, verdict re-derivation, comparison of vantages (synthetic + real OONI)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analysis.compare import compare, wilson
from analysis.load import Filters, load
from analysis.pipeline import run
from analysis.verdicts import (
    VERDICT_COLUMNS,
    CensoredPlanetSignatures,
    Classifier,
    SignatureError,
    default_classifier,
    load_signatures,
)
from tests import analysis_helpers as h
from tests.shared_data import SHARED_DATA

OONI = SHARED_DATA / "ooni"
FINGERPRINTS = SHARED_DATA / "fingerprints"
WC_REAL = OONI / "web_connectivity_real.jsonl"
NETEM = OONI / "web_connectivity_netem_qa_synthetic.jsonl"
needs_data = pytest.mark.skipif(not WC_REAL.exists(), reason=f"reference data absent: {OONI}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    h.write_store(root)
    return root


def test_store_loads_with_dtypes_and_partition_filters(store: Path) -> None:
    loaded = load([store])
    m = loaded.measurements
    assert len(m) == 2 * h.DAYS * h.REPEATS * 3
    assert str(m["time"].dtype) == "datetime64[s, UTC]"
    assert isinstance(m["vantage"].dtype, pd.CategoricalDtype)
    assert set(m["vantage"]) == {"censored", "open"}
    assert m["domain"].iloc[0] in {h.BLOCKED, h.OPEN, h.DOWN}
    only = load(
        [store],
        filters=Filters(
            since=h.START.date(),
            until=h.START.date(),
            vantages=frozenset({"open"}),
            inputs=frozenset({h.OPEN}),
        ),
    )
    assert len(only.measurements) == h.REPEATS
    assert set(only.measurements["input"]) == {h.OPEN}
    # every file opened belongs to the one partition kept
    assert all("vantage=open" in s and "date=2024-03-01" in s for s in only.sources)


def test_malformed_lines_are_counted_with_file_line_and_not_fatal(tmp_path: Path) -> None:
    good = WC_REAL.read_bytes().split(b"\n")[0] if WC_REAL.exists() else b'{"test_name": "x"}'
    path = tmp_path / "mixed.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join([good, b"{not json", b"[1, 2]", b"{}", good])))
    loaded = load(ooni=[path])
    assert len(loaded.measurements) == 2
    assert loaded.n_problems == 3
    assert [p.line for p in loaded.problems] == [2, 3, 4]
    assert "not valid JSON" in str(loaded.problems[0]) and str(path) in str(loaded.problems[0])
    assert "test_name" in loaded.problems[2].reason


def test_torn_store_line_is_reported(store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(store, copy)
    victim = next((copy / "raw").rglob("*.jsonl"))
    victim.write_bytes(victim.read_bytes() + b'{"test_name": "tcp_co')
    loaded = load([copy])
    assert loaded.n_problems == 1 and "torn" in loaded.problems[0].reason


@needs_data
def test_single_json_document_and_observations(tmp_path: Path) -> None:
    import orjson

    first = orjson.loads(WC_REAL.read_bytes().split(b"\n")[2])
    doc = tmp_path / "one.json"
    doc.write_bytes(orjson.dumps(first, option=orjson.OPT_INDENT_2))
    loaded = load(ooni=[doc])
    assert len(loaded.measurements) == 1
    obs = loaded.observations
    assert set(obs["kind"]) >= {"dns", "http"}
    assert (obs["row"] == 0).all()
    n_answers = sum(len(q.get("answers") or [1]) for q in first["test_keys"]["queries"])
    assert (obs["kind"] == "dns").sum() == n_answers


def test_wilson_interval_known_values() -> None:
    # Wilson 95% for 0/10 is [0, 0.2775]; for 5/10 [0.2366, 0.7634] (Brown, Cai & DasGupta).
    low, high = wilson(np.array([0, 5]), np.array([10, 10]))
    assert low[0] == 0 and high[0] == pytest.approx(0.2775, abs=1e-4)
    assert low[1] == pytest.approx(0.2366, abs=1e-4) and high[1] == pytest.approx(0.7634, abs=1e-4)


def test_synthetic_store_findings_and_change_points(store: Path) -> None:
    result = run([store], [], Filters(), None)
    findings = result.comparison.findings.set_index("target")
    assert findings.loc[h.BLOCKED, "finding"] == "blocked at censored"
    assert findings.loc[h.BLOCKED, "blocking_type"] == "dns"
    assert findings.loc[h.BLOCKED, "blocking_detail"] == "dns.injected"
    assert bool(findings.loc[h.BLOCKED, "significant"])
    assert findings.loc[h.DOWN, "finding"] == "inconclusive"
    assert findings.loc[h.OPEN, "finding"] == "accessible everywhere"
    changes = result.comparison.changes
    events = changes[changes["event"].notna()]
    got = [(r.target, r.vantage, r.event, r.start.day) for r in events.itertuples()]
    first = h.START.day
    assert got == [
        (h.OPEN, "censored", "start", first + h.BLOCK_FROM),
        (h.OPEN, "censored", "stop", first + h.BLOCK_UNTIL + 1),
    ]  # and the one-day flip at the open vantage is no change point
    vantages = result.comparison.vantages.set_index(["target", "vantage"])
    row = vantages.loc[(h.BLOCKED, "censored")]
    assert row["rate"] == 1.0 and row["n"] == h.DAYS * h.REPEATS and row["q_value"] < 0.05


@needs_data
def test_rederived_verdicts_keep_the_original_and_name_fingerprints() -> None:
    classifier = default_classifier(FINGERPRINTS)
    loaded = load(ooni=[WC_REAL], classifier=classifier, classifier_columns=VERDICT_COLUMNS)
    m = loaded.measurements.set_index("line")
    assert (m.drop(index=7)["verdict_source"] == "rederived").all()  # 7: test_keys null
    # line 17: RU rutor.org, the probe said http-diff; a known block page names it
    assert m.loc[17, "orig_blocking"] == "http-diff"
    assert m.loc[17, "blocking_detail"] == "http.blockpage"
    assert m.loc[17, "blocking_fingerprint"] in m.loc[17, "fingerprints"].split(";")
    assert "ooni.ru_5" in m.loc[17, "fingerprints"].split(";")
    # line 1: ID archive.org, the 0.4 probe said accessible; the Kominfo page confirms blocking
    assert m.loc[1, "orig_blocking"] == "false" and m.loc[1, "blocking"] == "http-diff"
    assert m.loc[1, "blocking_fingerprint"] == "ooni.id_lamanlabuh_kominfo"


def test_censored_planet_false_positive_wins(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text('{"fingerprint": "b_x", "pattern": "Access denied"}\n\n')
    (tmp_path / "f.json").write_text('{"fingerprint": "x_fp", "pattern": "Thank you for"}\n')
    sigs = CensoredPlanetSignatures(
        load_signatures(tmp_path / "b.json", false_positive=False),
        load_signatures(tmp_path / "f.json", false_positive=True),
    )
    assert sigs.match("<h1>Access denied</h1>") == (["censoredplanet:b_x"], [])
    assert sigs.match("Access denied. Thank you for") == ([], ["censoredplanet:x_fp"])
    (tmp_path / "bad.json").write_text('{"fingerprint": "y", "pattern": "(unclosed"}\n')
    with pytest.raises(SignatureError, match=r"bad.json:1: field 'pattern'"):
        load_signatures(tmp_path / "bad.json", false_positive=False)


@needs_data
def test_real_censored_planet_signatures_load() -> None:
    sigs = CensoredPlanetSignatures.from_dir(FINGERPRINTS / "censoredplanet")
    assert len(sigs.blockpages) == 622 and len(sigs.false_positives) == 460
    assert "censoredplanet:a_prod_fortinet_1" in sigs.match("x FortiGuard Web Filtering y")[0]


@needs_data
def test_real_ooni_measurements_compare() -> None:
    loaded = load(
        ooni=[WC_REAL, NETEM], classifier=Classifier(), classifier_columns=VERDICT_COLUMNS
    )
    findings = compare(loaded.measurements).findings.set_index("target")
    # one measurement at rate 1.0 is no finding (issue 14): it is suggestive, with its gaps named
    assert findings.loc["https://fa.wikipedia.org", "finding"] == (
        "suggestive at IR-AS197207 (missed: n,q,wilson)"
    )
    assert (findings["finding"] == "down everywhere").sum() >= 1
    assert loaded.n_problems == 0


def _gate_counts(rows: list[tuple[str, str, int, int]]) -> pd.DataFrame:
    """A counts table: (test_name, vantage, blocked, ok) of one target, one window."""
    return pd.DataFrame(
        [
            {
                "target": "http://x.example/",
                "test_name": test,
                "vantage": vantage,
                "window": pd.NaT,
                "n": b + o,
                "blocked": b,
                "ok": o,
                "down": 0,
                "inconclusive": 0,
                "disagree": 0,
            }
            for test, vantage, b, o in rows
        ]
    )


def _finding(rows: list[tuple[str, str, int, int]], **gates: Any) -> pd.DataFrame:
    from analysis.compare import Gates, findings, per_vantage

    vantages = per_vantage(_gate_counts(rows), Gates(**gates))
    return findings(
        vantages,
        pd.DataFrame(
            columns=[
                "target",
                "test_name",
                "blocking",
                "blocking_detail",
                "blocking_fingerprint",
                "n",
            ]
        ),
    )


def test_gates_pass_with_enough_evidence() -> None:
    out = _finding([("wc", "censored", 10, 0), ("wc", "open", 0, 10)])
    assert out.loc[0, "finding"] == "blocked at censored"
    assert out.loc[0, "gates"] == "censored: share;n;q;wilson"


def test_gate_min_measurements() -> None:
    # 2/2 blocked against 30 ok: q and wilson could pass; n must stop it
    out = _finding([("wc", "censored", 2, 0), ("wc", "open", 0, 30)], fdr_alpha=1.0)
    assert out.loc[0, "finding"].startswith("suggestive at censored (missed: n")
    assert (
        _finding(
            [("wc", "censored", 2, 0), ("wc", "open", 0, 30)], fdr_alpha=1.0, min_measurements=2
        ).loc[0, "finding"]
        == "blocked at censored"
    )


def test_gate_q_value() -> None:
    # enough n, a clear Wilson gap, but many tests: with alpha tiny the q gate alone fails
    rows = [("wc", "censored", 5, 0), ("wc", "open", 0, 40)]
    assert _finding(rows).loc[0, "finding"] == "blocked at censored"
    out = _finding(rows, fdr_alpha=1e-9)
    assert out.loc[0, "finding"] == "suggestive at censored (missed: q)"


def test_gate_wilson_against_the_open_vantage() -> None:
    # 21/40 blocked vs 10/40 at the open vantage: Fisher's p = 0.021 passes the q gate, but the
    # Wilson intervals (0.37-0.67 and 0.14-0.40) overlap, so it is no finding
    rows = [("wc", "censored", 21, 19), ("wc", "open", 10, 30)]
    out = _finding(rows)
    assert out.loc[0, "finding"] == "suggestive at censored (missed: wilson)"


def test_each_nettest_apart() -> None:
    # one web_connectivity block must not borrow tcp_connect's measurements
    rows = [
        ("web_connectivity", "censored", 1, 0),
        ("tcp_connect", "censored", 0, 20),
        ("tcp_connect", "open", 0, 20),
        ("web_connectivity", "open", 0, 20),
    ]
    out = _finding(rows).set_index("test_name")
    assert out.loc["web_connectivity", "finding"].startswith("suggestive at censored")
    assert out.loc["tcp_connect", "finding"] == "accessible everywhere"


def _real_line(number: int) -> dict[str, Any]:
    import json

    return dict(json.loads(WC_REAL.read_text().splitlines()[number - 1]))


@needs_data
def test_probe_fingerprint_counts_when_rederiving_without_fingerprints() -> None:
    # The lab demo's case: the probe matched a block page with the fingerprint it was given and
    # stored http-diff/http.blockpage; the analysis runs without --fingerprints.
    data = _real_line(1)  # ID archive.org: v0.4 comparisons alone call it accessible
    assert Classifier()(data)["blocking"] == "false"
    data["test_keys"].update(
        blocking="http-diff",
        blocking_detail="http.blockpage",
        blocking_fingerprint="ooni.id_lamanlabuh_kominfo",
    )
    row = Classifier()(data)
    assert (row["blocking"], row["blocking_detail"]) == ("http-diff", "http.blockpage")
    assert row["blocking_fingerprint"] == "ooni.id_lamanlabuh_kominfo"
    assert row["verdict_source"] == "probe_evidence" and row["disagreement"] is None


@needs_data
def test_disagreement_names_both_sides_and_why() -> None:
    row = default_classifier(FINGERPRINTS)(_real_line(1))  # probe false, a fingerprint matches
    assert row["disagreement"] == (
        "probe false; analysis http-diff/http.blockpage: "
        "analysis matched fingerprint ooni.id_lamanlabuh_kominfo"
    )
    assert default_classifier(FINGERPRINTS)(_real_line(17))["disagreement"] is None


def _stock_gzip_lines(path: Path) -> tuple[list[bytes], type[BaseException] | None]:
    """The lines the standard library's gzip hands over before it stops, and why it stops."""
    out: list[bytes] = []
    try:
        with gzip.open(path, "rb") as fh:
            out.extend(fh)
    except Exception as exc:
        return out, type(exc)
    return out, None


@pytest.mark.parametrize("where", [0.3, 0.6, 0.999])
def test_a_damaged_gzip_gives_every_line_stock_gzip_gives(tmp_path: Path, where: float) -> None:
    """igzip (isal) inflates with a larger read-ahead: on damage the loader must still hand over
    every line the standard library would, and stop with the same error."""
    from analysis.load import iter_ooni_file

    lines = [
        b'{"test_name":"x","n":%d,"pad":"%s"}\n' % (i, b"%x" % (i * 7919) * 40) for i in range(5000)
    ]
    packed = bytearray(gzip.compress(b"".join(lines), compresslevel=1))
    at = int(len(packed) * where)
    packed[at : at + 8] = b"\x00\xff" * 4
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(bytes(packed))
    expected, error = _stock_gzip_lines(path)
    got: list[bytes] = []
    raised: type[BaseException] | None = None
    try:
        for _, line in iter_ooni_file(path):
            assert isinstance(line, bytes)
            got.append(line)
    except Exception as exc:
        raised = type(exc)
    assert error is not None
    assert raised is error
    assert got == expected
