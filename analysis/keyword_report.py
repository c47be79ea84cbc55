"""The report's keyword section: which keywords are filtered where, how, since when, with evidence.

Written for a reader who will cite it: one row per filtered (keyword, placement or channel,
nettest) with the vantages where it passed every finding gate, the mechanism (the evidence the
nettest recorded: `tcp.rst_injected.path`, `delivery.dropped`, ...), the first blocked
measurement, the delivery rate with its Wilson interval at each vantage and the minimal
combination keyword isolation found; each row links to its evidence (the earliest blocked
measurements, by uid and report) further down the page.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from analysis import compare as cmp
from analysis.keywords import KeywordFindings


def _text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp):
        return f"{value:%Y-%m-%d %H:%M}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _cell(value: Any, raw: bool = False) -> str:
    return f"<td>{_text(value) if raw else html.escape(_text(value))}</td>"


def _head(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"


def _filtered_table(result: KeywordFindings) -> tuple[str, list[tuple[int, Any]]]:
    findings = result.findings
    filtered = findings[findings["blocked_at"].notna()].reset_index(drop=True)
    if filtered.empty:
        return "<p>No keyword passed the finding gates at any vantage.</p>", []
    rows = []
    anchors: list[tuple[int, Any]] = []
    for i, row in enumerate(filtered.itertuples(index=False)):
        anchor = f"kw-evidence-{i}"
        anchors.append((i, row))
        link = f"<a href='#{anchor}'>{int(row.blocked)} blocked tests</a>"
        rows.append(
            "<tr>"
            + f"<td class='blocked'>{html.escape(_text(row.keyword))}</td>"
            + _cell(f"{row.where} ({row.where_kind})")
            + _cell(row.test_name)
            + _cell(str(row.blocked_at).replace(";", ", "))
            + _cell(row.mechanism)
            + _cell(row.since)
            + _cell(row.delivery)
            + _cell(row.isolated)
            + _cell(link, raw=True)
            + "</tr>"
        )
    head = _head(
        "keyword",
        "placement / channel",
        "nettest",
        "filtered at",
        "mechanism",
        "since",
        "delivered / decisive per vantage (95% Wilson)",
        "isolated combination",
        "evidence",
    )
    return f"<table id='keyword-findings'>{head}{''.join(rows)}</table>", anchors


def _others(result: KeywordFindings) -> str:
    findings = result.findings
    rest = findings[findings["blocked_at"].isna()]
    if rest.empty:
        return ""
    rows = "".join(
        "<tr>"
        + _cell(r.keyword)
        + _cell(r.where)
        + _cell(r.test_name)
        + _cell(r.finding)
        + _cell(r.delivery)
        + "</tr>"
        for r in rest.itertuples(index=False)
    )
    head = _head("keyword", "placement / channel", "nettest", "finding", "delivery per vantage")
    return (
        f"<details><summary>{len(rest)} other (keyword, placement or channel) results: "
        f"delivered, suggestive or inconclusive</summary><table>{head}{rows}</table></details>"
    )


def _isolations(result: KeywordFindings) -> str:
    iso = result.isolations
    if iso.empty:
        return "<p>No keyword isolation results in these data.</p>"
    rows = "".join(
        "<tr>"
        + _cell(r.message)
        + _cell(r.rule if isinstance(r.rule, str) else "none found")
        + _cell(r.channel)
        + _cell(r.vantage)
        + _cell(r.tests)
        + _cell("yes" if r.complete else f"no ({_text(r.stopped_by)})")
        + _cell(r.time)
        + _cell(r.measurement_uid)
        + "</tr>"
        for r in iso.itertuples(index=False)
    )
    head = _head(
        "message",
        "minimal combination",
        "channel",
        "vantage",
        "tests",
        "complete",
        "when",
        "measurement",
    )
    return f"<table id='keyword-isolations'>{head}{rows}</table>"


def _matrix(result: KeywordFindings) -> str:
    """Sender region x receiver region per keyword (message_delivery between accounts)."""
    matrix = result.matrix
    if matrix.empty:
        return ""
    rows = "".join(
        "<tr>"
        + _cell(r.keyword)
        + _cell(r.channel)
        + _cell(r.sender_region)
        + _cell(r.receiver_region)
        + (
            f"<td class='blocked'>{int(r.delivered)}/{int(r.tries)}</td>"
            if r.delivered < r.tries - r.inconclusive
            else _cell(f"{int(r.delivered)}/{int(r.tries)}")
        )
        + _cell(f"{r.delivery_low:.2f}-{r.delivery_high:.2f}" if pd.notna(r.delivery_low) else "")
        + _cell(r.vantages)
        + "</tr>"
        for r in matrix.itertuples(index=False)
    )
    head = _head("keyword", "channel", "sender registered in", "receiver registered in",
                 "delivered / tries", "rate (95% Wilson)", "sent from vantages")  # fmt: skip
    return (
        "<h3>Delivery matrix (accounts by region)</h3><p>message_delivery between accounts: "
        "whether a message arrives depends on where the platform has the sender and the "
        "receiver registered, whichever network each uses (every vantage pooled).</p>"
        f"<table id='keyword-delivery-matrix'>{head}{rows}</table>"
    )


def _evidence(result: KeywordFindings, anchors: list[tuple[int, Any]]) -> str:
    if not anchors:
        return ""
    ev = result.evidence
    out = ["<h3>Evidence</h3>"]
    for i, row in anchors:
        mine = ev[
            (ev["keyword"] == row.keyword)
            & (ev["where"] == row.where)
            & (ev["test_name"] == row.test_name)
        ]
        items = "".join(
            "<tr>"
            + _cell(e.vantage)
            + _cell(e.time)
            + _cell(e.outcome)
            + _cell(e.blocking_detail)
            + _cell(e.measurement_uid)
            + _cell(e.report_id)
            + "</tr>"
            for e in mine.itertuples(index=False)
        )
        head = _head("vantage", "time", "outcome", "evidence", "measurement_uid", "report_id")
        title = html.escape(f"{row.keyword} [{row.where}] ({row.test_name})")
        out.append(
            f"<div id='kw-evidence-{i}'><h4>{title}</h4>"
            f"<p>Gates passed: {html.escape(_text(row.gates))}. The earliest blocked "
            f"measurements:</p><table>{head}{items}</table></div>"
        )
    return "".join(out)


def section(result: KeywordFindings | None, gates: cmp.Gates | None = None) -> str:
    """The HTML of the keyword section (a paragraph when there are no keyword measurements)."""
    if result is None or result.findings.empty:
        return "<p>No keyword measurements in these data.</p>"
    g = gates or cmp.Gates()
    findings = result.findings
    keywords = findings["keyword"].nunique()
    filtered = findings[findings["blocked_at"].notna()]
    table, anchors = _filtered_table(result)
    return "\n".join(
        [
            f"<p id='keyword-summary'>{keywords} keywords or combinations tested in "
            f"{len(findings)} (keyword, placement or channel, nettest) pairs; "
            f"<b>{len(filtered)} filtered at one vantage or more</b>. A keyword is filtered at a "
            f"vantage when at least {g.blocked_share:.0%} of its decisive tests there were "
            f"blocked, it had at least {g.min_measurements} of them, its Benjamini-Hochberg "
            f"q-value (Fisher's exact test against the other vantages) is below "
            f"{g.fdr_alpha:g} and its Wilson interval clears the most open vantage's: the gates "
            "of the web findings. Each placement (http_keyword) and channel (message_delivery) "
            "is a finding of its own.</p>",
            table,
            _others(result),
            _matrix(result),
            "<h3>Minimal combinations (keyword isolation)</h3>",
            _isolations(result),
            _evidence(result, anchors),
        ]
    )
