"""Keyword findings (issue 15 item 1): per keyword, placement or channel, vantage and period.

The store holds real http_keyword, message_delivery and keyword_isolation measurements
(tests/keyword_store.py): "falun" is reset by a keyword censor at the cn vantage in every
placement and dropped by the cn relay; "tiananmen+1989+square" is dropped by the cn relay's
`tiananmen+1989` rule, which isolation finds; "weather" is delivered everywhere.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.compare import Gates
from analysis.keywords import TABLES
from analysis.load import Filters, load
from analysis.pipeline import run
from analysis.report import render
from probes.cli import app
from probes.store import ResultsStore
from tests import keyword_store as ks


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keyword-store")
    ks.write_keyword_store(root)
    return root


def _by_key(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    return frame.set_index(list(columns)).sort_index()


def test_loader_keeps_placements_and_channels(store: Path) -> None:
    loaded = load([store])
    m = loaded.measurements
    md = m[(m["test_name"] == "message_delivery") & m["keyword"].notna()]
    assert set(md["channel"].dropna()) == {"relay"}
    hk = m[m["test_name"] == "http_keyword"]
    assert set(hk["placement"]) == {"path,sni"}
    rows = loaded.keyword_rows
    # one row per (measurement, placement) for http_keyword, per measurement for the channel;
    # isolation's own tests are not keyword-list monitoring and are left out
    per_vantage = ks.REPEATS * ks.DAYS
    http = rows[rows["test_name"] == "http_keyword"]
    assert len(http) == 2 * 2 * len(ks.PLACEMENTS) * per_vantage
    delivery = rows[rows["test_name"] == "message_delivery"]
    assert len(delivery) == 2 * 3 * per_vantage
    assert set(delivery["where"]) == {"relay"} and set(delivery["where_kind"]) == {"channel"}


def test_each_placement_and_channel_is_a_finding(store: Path) -> None:
    result = run([store], [], Filters(), None)
    assert result.keywords is not None
    findings = _by_key(result.keywords.findings, "keyword", "where", "test_name")
    n = ks.REPEATS * ks.DAYS
    expected = {
        ("falun", "path", "http_keyword"): "tcp.rst_injected.path",
        ("falun", "sni", "http_keyword"): "tls.sni_reset.sni",
        ("falun", "relay", "message_delivery"): "delivery.dropped",
        (ks.COMBINATION, "relay", "message_delivery"): "delivery.dropped",
    }
    for key, mechanism in expected.items():
        row = findings.loc[key]
        assert row["finding"] == "blocked at cn", key
        assert row["gates"] == "cn: share;n;q;wilson"
        assert row["mechanism"] == mechanism
        assert row["since"] == pd.Timestamp(ks.START)
        assert row["delivery"].startswith(f"cn 0/{n} delivered (0.00-0.28); open {n}/{n}")
        assert len(row["evidence"].split(";")) == 5
    for where, test in (("path", "http_keyword"), ("sni", "http_keyword"),
                        ("relay", "message_delivery")):  # fmt: skip
        assert findings.loc[("weather", where, test), "finding"] == "accessible everywhere"
    assert findings.loc[(ks.COMBINATION, "relay", "message_delivery"), "isolated"] == (
        "tiananmen+1989"
    )
    vantages = _by_key(result.keywords.vantages, "keyword", "where", "test_name", "vantage")
    path_cn = vantages.loc[("falun", "path", "http_keyword", "cn")]
    assert (path_cn["tries"], path_cn["reset"], path_cn["delivered"]) == (n, n, 0)
    assert path_cn["residual_observed"] == n  # the censor kept resetting the endpoint
    assert path_cn["delivery_rate"] == 0.0 and path_cn["delivery_high"] < 0.3
    relay_cn = vantages.loc[("falun", "relay", "message_delivery", "cn")]
    assert (relay_cn["dropped"], relay_cn["delivered"]) == (n, 0)
    relay_open = vantages.loc[("falun", "relay", "message_delivery", "open")]
    assert relay_open["delivered"] == n and relay_open["delivery_low"] > 0.7
    windows = result.keywords.windows
    per_day = windows[(windows["keyword"] == "falun") & (windows["vantage"] == "cn")]
    assert set(per_day["tries"]) == {ks.REPEATS} and per_day["window"].nunique() == ks.DAYS


def test_isolated_combination_is_linked_to_its_message(store: Path) -> None:
    result = run([store], [], Filters(), None)
    assert result.keywords is not None
    iso = result.keywords.isolations
    assert iso[["message", "rule", "channel", "vantage", "complete"]].values.tolist() == [
        ["tiananmen 1989 square", "tiananmen+1989", "relay", "cn", True]
    ]
    assert 0 < int(iso["tests"].iloc[0]) <= 12


def test_gates_of_the_web_findings_apply(store: Path) -> None:
    """Fewer measurements than the n gate: a lead, never a finding."""
    result = run([store], [], Filters(), None, gates=Gates(min_measurements=1000))
    assert result.keywords is not None
    findings = result.keywords.findings
    falun = findings[(findings["keyword"] == "falun") & (findings["where"] == "path")]
    assert falun["finding"].tolist() == ["suggestive at cn (missed: n)"]


@pytest.mark.parametrize("engine", ["stream", "dask"])
def test_every_engine_writes_the_same_keyword_tables(
    store: Path, tmp_path: Path, engine: str
) -> None:
    if engine == "dask":
        pytest.importorskip("dask.distributed", reason="the `dask` extra is not installed")
    outputs = {}
    for name in ("pandas", engine):
        out = tmp_path / name
        result = CliRunner().invoke(
            app, ["analyze", "--results", str(store), "--out", str(out), "--engine", name]
        )
        assert result.exit_code == 0, result.output
        assert "keywords: 7 (keyword, placement or channel) findings, 4 filtered" in result.output
        outputs[name] = {t: (out / f"{t}.csv").read_bytes() for t in TABLES}
    assert outputs["pandas"] == outputs[engine]


def test_report_has_a_keyword_section_with_evidence(store: Path) -> None:
    result = run([store], [], Filters(), None)
    page = render(result)
    section = page[page.index("<h2 id='keywords'>") :]
    assert "4 filtered at one vantage or more" in section
    assert "tcp.rst_injected.path" in section and "delivery.dropped" in section
    assert "<td>tiananmen+1989</td>" in section
    assert "<a href='#kw-evidence-0'>" in section and "<div id='kw-evidence-0'>" in section
    uid = result.keywords.evidence["measurement_uid"].iloc[0] if result.keywords else ""
    assert uid and uid in section


def test_publish_writes_the_keyword_findings(store: Path, tmp_path: Path) -> None:
    from frictionless import Package

    out = tmp_path / "dataset"
    result = CliRunner().invoke(
        app, ["publish", "--results", str(store), "--out", str(out), "--drop-asn", "cn"]
    )
    assert result.exit_code == 0, result.output
    package = json.loads((out / "datapackage.json").read_text())
    names = [r["name"] for r in package["resources"]]
    # Every keyword table with rows (this store has no accounts: no delivery matrix).
    assert all(t in names for t in TABLES if t != "keyword_delivery_matrix")
    assert "keyword_delivery_matrix" not in names
    report = Package(str(out / "datapackage.json")).validate()
    assert report.valid, report.flatten(["type", "note"])
    findings = pd.read_csv(out / "keyword_findings.csv")
    filtered = findings[findings["blocked_at"].notna()]
    assert sorted(filtered["where"]) == ["path", "relay", "relay", "sni"]
    assert "keyword_findings.csv" in (out / "SHA256SUMS").read_text()
    assert "4 filtered somewhere" in (out / "README.md").read_text()
    # --drop-asn: no file names the cn vantage's network, not even inside a report id (the
    # keyword evidence and isolation tables, raw lines, datapackage sources); the findings
    # re-derived from raw/ equal the published ones.
    [asn] = {m.probe_asn for m in ResultsStore(store).iter_measurements() if m.vantage == "cn"}
    for path in out.rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            assert f"_{asn[2:]}_".encode() not in data and asn.encode() not in data, path
    measurements = pd.read_parquet(out / "data" / "measurements")
    assert not measurements["report_id"].str.contains(f"_{asn[2:]}_").any()
    verified = CliRunner().invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output


def test_isolation_runs_alone_still_make_the_keyword_section(tmp_path: Path) -> None:
    """A store holding only an isolate run (its tests are not keyword-list monitoring): the
    report still shows the minimal combination and the message it came from."""
    import asyncio

    from backend.helper import RelayConfig
    from probes.channels.relay import RelayChannel
    from probes.commands.isolate import run_isolation
    from probes.nettests.keyword_isolation import DeliveryTester
    from tests.loopback.keyword_censor import run_helper

    text = "今天读到法轮功的新闻"
    config = RelayConfig(token="iso-t0ken", rules=(("法轮功",),), action="reject")
    with run_helper("127.0.0.7", relay=config) as (base, _):
        asyncio.run(
            run_isolation(
                DeliveryTester(RelayChannel(base, token="iso-t0ken"), 0.25, 0.02),
                [],
                results=tmp_path,
                vantage="cn",
                text=text,
            )
        )
    result = run([tmp_path], [], Filters(), None)
    assert result.keywords is not None and result.keywords.findings.empty
    assert result.keywords.isolations[["message", "rule"]].values.tolist() == [[text, "法轮功"]]
    page = render(result)
    section = page[page.index("<h2 id='keywords'>") :]
    assert "isolation runs only" in section and f"<td>{text}</td>" in section
