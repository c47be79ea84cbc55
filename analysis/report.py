"""One self-contained HTML report: findings, heatmap, timelines, keywords, method, provenance.

Plots are matplotlib PNGs embedded as base64 data URIs and the style sheet is inline, so the file
opens anywhere with no network. Text is escaped; nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis import compare as cmp
from analysis import plotting
from analysis.facts import cell_states as facts_cell_states
from analysis.facts import disagreement_table, period

if TYPE_CHECKING:
    from analysis.pipeline import Analysis

MAX_HEATMAP_INPUTS = 40  # beyond this a heatmap stops being readable; blocked inputs come first
# Heatmap colours: one per state (Okabe & Ito's colour-blind-safe palette).
STATE_COLOURS = {
    "accessible": "#009E73",
    "inconclusive": "#BBBBBB",
    "down": "#999999",
    "dns": "#D55E00",
    "tcp_ip": "#E69F00",
    "tls": "#CC79A7",
    "http-failure": "#0072B2",
    "http-diff": "#56B4E9",
    "delivery": "#F0E442",
    # Beyond Okabe & Ito's eight: two of Paul Tol's muted scheme, for the issue-16 nettests.
    "quic": "#882255",
    "throttling": "#44AA99",
    "other": "#000000",
}

STYLE = """
body{font-family:sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
font-size:.9em;text-align:left}th{background:#f0f0f0}.blocked{color:#b00;font-weight:bold}
img{max-width:100%}code{background:#f4f4f4}
"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cell_states(result: Analysis) -> pd.DataFrame:
    """(target x vantage) -> the state to colour: the dominant blocking type, else access
    (from the merged counts, analysis.facts: no measurement row needed)."""
    return facts_cell_states(result.facts, set(STATE_COLOURS), cmp.BLOCKED_SHARE)


def heatmap(result: Analysis) -> str | None:
    cells = cell_states(result)
    if cells.empty:
        return None
    with plotting.pyplot() as plt:
        return _heatmap(result, cells, plt)


def _heatmap(result: Analysis, cells: pd.DataFrame, plt: Any) -> str:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    findings = result.comparison.findings
    order = findings.sort_values(["blocked", "target"], ascending=[False, True], key=None)[
        "target"
    ].tolist()[:MAX_HEATMAP_INPUTS]
    cells = cells[cells["target"].isin(order)]
    states = list(STATE_COLOURS)
    grid = cells.pivot(index="target", columns="vantage", values="state").reindex(order)
    codes = grid.apply(lambda col: col.map(lambda s: states.index(s) if isinstance(s, str) else -1))
    masked = codes.where(codes >= 0)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * grid.shape[1], 1 + 0.3 * grid.shape[0]))
    cmap = ListedColormap([STATE_COLOURS[s] for s in states])
    ax.imshow(masked.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=len(states) - 1, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=60, ha="right")
    ax.set_yticks(range(grid.shape[0]), [str(t)[:60] for t in grid.index])
    used = sorted({s for s in cells["state"]}, key=states.index)
    ax.legend(
        handles=[Patch(color=STATE_COLOURS[s], label=s) for s in used],
        bbox_to_anchor=(1.02, 1),
        loc="upper left",
    )
    ax.set_title("Inputs x vantages, coloured by blocking type")
    uri = _png(fig)
    plt.close(fig)
    return uri


def timeline(result: Analysis) -> str | None:
    t = result.comparison.timelines
    t = t[t["window"].notna()]
    if t.empty or t["window"].nunique() < 2:
        return None
    with plotting.pyplot() as plt:
        return _timeline(t, plt)


def _timeline(t: pd.DataFrame, plt: Any) -> str:
    per = t.groupby(["vantage", "window"])[["blocked", "ok"]].sum().reset_index()
    per["rate"] = per["blocked"] / (per["blocked"] + per["ok"]).replace(0, float("nan"))
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for vantage, group in per.groupby("vantage", sort=True):
        ax.plot(group["window"], group["rate"], marker="o", label=str(vantage))
    ax.set_ylabel("share of decisive measurements blocked")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Blocking rate per vantage over time")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.autofmt_xdate()
    uri = _png(fig)
    plt.close(fig)
    return uri


def _table(frame: pd.DataFrame, columns: list[str], limit: int = 200) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in frame[columns].head(limit).itertuples(index=False):
        cells = []
        for value in row:
            text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else value
            if isinstance(text, float):
                text = f"{text:.3g}"
            klass = ' class="blocked"' if str(text).startswith("blocked at") else ""
            cells.append(f"<td{klass}>{html.escape(str(text))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>... and {len(frame) - limit} more rows.</p>" if len(frame) > limit else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def _keywords(result: Analysis) -> str:
    from analysis.keyword_report import section

    return section(result.keywords, result.gates)


MAX_DISAGREEMENT_ROWS = 50


def _disagreement_section(result: Analysis) -> list[str]:
    table = disagreement_table(result.facts)
    kept = result.facts.probe_evidence
    out = ["<h2 id='disagreements'>Where the analysis and the probe disagree</h2>"]
    if kept:
        out.append(
            f"<p>{kept} verdicts rest on a fingerprint the probe matched and the analysis was "
            "not given (kept as the probe's evidence).</p>"
        )
    if table.empty:
        out.append("<p>The re-derived verdicts agree with the probes' on every measurement.</p>")
        return out
    out.append(
        f"<p class='blocked'>{int(table['n'].sum())} measurements got another verdict than "
        "their probe stored; the reason names the evidence on each side.</p>"
    )
    out.append(_table(table.head(MAX_DISAGREEMENT_ROWS), list(table.columns)))
    return out


def _provenance_line(result: Analysis) -> str:
    """Versions, the probes' lists, and how many measurements arrived late (analysis.bulk),
    from the merged facts (analysis.facts), as every engine gives them."""
    from analysis.verdicts import RULES_VERSION
    from probes import __version__

    n_late = result.facts.late
    lists = sorted(result.facts.probe_lists)
    return (
        f"censorscope {__version__}, analysis rules version {RULES_VERSION}; fingerprints given "
        f"to the analysis: {result.fingerprints_used}; lists the probes measured with: "
        + ("; ".join(lists) if lists else "not recorded")
        + f". {n_late} measurements arrived late (more than 24 hours after they were made; "
        "counted in the period they were made)."
    )


def render(result: Analysis) -> str:
    """The report as one HTML string."""
    facts = result.facts
    findings = result.comparison.findings
    n_blocked = int(findings["blocked_at"].notna().sum()) if len(findings) else 0
    measured = period(facts) or "no timestamps"
    heat, line = heatmap(result), timeline(result)
    changes = result.comparison.changes
    events = changes[changes["event"].notna()] if len(changes) else changes
    gates = result.gates or cmp.Gates()
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>censorscope report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>censorscope report</h1>",
        f"<p id='summary'>{facts.n} measurements from {len(facts.vantages)} vantages, "
        f"{measured}; {len(findings)} inputs, <b>{n_blocked} blocked somewhere</b>.</p>",
        "<h2>Findings</h2>",
        _table(
            findings.sort_values(["blocked", "target"], ascending=[False, True]),
            [
                "target",
                "test_name",
                "finding",
                "gates",
                "blocking_type",
                "blocking_detail",
                "blocking_fingerprint",
                "n",
                "blocked",
                "inconclusive",
                "disagreements",
                "min_q_value",
            ],
        ),
        *_disagreement_section(result),
        "<h2>Inputs by vantage</h2>",
        f"<img alt='heatmap of inputs by vantages' src='{heat}'>" if heat else "<p>No data.</p>",
        "<h2>Over time</h2>",
        f"<img alt='blocking rate timeline' src='{line}'>"
        if line
        else "<p>Fewer than two time windows: no timeline.</p>",
        "<h3>Blocking starts and stops</h3>",
        _table(events, ["target", "vantage", "event", "start", "end", "windows"])
        if len(events)
        else "<p>No change points.</p>",
        "<h2 id='keywords'>Keyword filtering</h2>",
        _keywords(result),
        "<h2>Method</h2>",
        "<ul>",
        "<li>Verdicts are re-derived from each measurement's raw observations "
        "(web_connectivity: OONI's v0.4 procedure); other nettests keep the probe's verdict.</li>",
        f"<li>A vantage blocks an input (each nettest apart) when at least "
        f"{gates.blocked_share:.0%} of its decisive measurements (blocked or accessible) are "
        f"blocked, it has at least {gates.min_measurements} of them, its Benjamini-Hochberg "
        f"q-value is below {gates.fdr_alpha:g}, and its Wilson interval lies above the most open "
        "other vantage's; a share that misses another gate is only <i>suggestive</i>. Down and "
        "inconclusive measurements are not counted.</li>",
        f"<li>Rates carry {cmp.CONFIDENCE:.0%} Wilson score intervals; differences between a "
        "vantage and the others use Fisher's exact test with Benjamini-Hochberg correction.</li>",
        f"<li>Blocking starts/stops only after {cmp.MIN_RUN_WINDOWS} consecutive windows in the "
        "new state; shorter runs are treated as noise.</li>",
        "</ul>",
        "<h2>Provenance</h2>",
        f"<p id='provenance'>{html.escape(_provenance_line(result))}</p>",
        f"<p>{len(result.loaded.sources)} source files; {result.loaded.n_problems} malformed "
        "lines skipped.</p><ul>",
        *(f"<li><code>{html.escape(s)}</code></li>" for s in result.loaded.sources[:50]),
        "</ul></body></html>",
    ]
    return "\n".join(parts)
