"""`censorscope report` renders a self-contained page in headless Chromium (Debian `chromium`)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis import plotting
from probes.cli import app
from tests import analysis_helpers as h
from tests import missing

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _report(tmp_path: Path) -> Path:
    h.write_store(tmp_path / "store")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        app, ["report", "--results", str(tmp_path / "store"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_report_is_self_contained(tmp_path: Path) -> None:
    text = _report(tmp_path).read_text(encoding="utf-8")
    assert "blocked at censored" in text and "dns.injected" in text
    assert text.count("data:image/png;base64,") == 2  # heatmap + timeline
    # nothing to fetch: no external scripts, styles, images or fonts
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text)


@missing.skip_if(CHROMIUM is None, "Debian package `chromium`")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert CHROMIUM is not None
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*base, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert "blocked at censored" in dom.stdout
    assert "Blocking starts and stops" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1000,1400", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables, plots: not a blank page
    # the heatmap's "dns" colour (D55E00) is on screen, so the embedded PNG was decoded
    rgb = [colour for _, colour in colours if isinstance(colour, tuple)]
    assert any(abs(r - 0xD5) < 8 and abs(g - 0x5E) < 8 and b < 8 for r, g, b, *_ in rgb)


@missing.skip_if(not plotting.cjk_families(), "Debian package `fonts-wqy-microhei`")
def test_plots_draw_chinese_keywords(recwarn: pytest.WarningsRecorder) -> None:
    """A keyword label in Chinese is drawn from the CJK fallback font, not as empty boxes
    (matplotlib warns "Glyph ... missing from font(s)" for each box it draws)."""
    with plotting.pyplot() as plt:
        fig, ax = plt.subplots()
        ax.set_yticks([0], ["六四 天安门"])
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    # Without the fallback the same label warns: the check above can fail.
    import matplotlib.pyplot as bare

    fig, ax = bare.subplots()
    ax.set_yticks([0], ["六四"])
    fig.savefig(io.BytesIO(), format="png")
    bare.close(fig)
    assert [w for w in recwarn if "missing from font" in str(w.message)]


def test_heatmap_names_the_new_blocking_types() -> None:
    """quic_sni's `quic` and download's `throttling` get colours of their own, not "other"."""
    import pandas as pd

    from analysis import report
    from analysis.facts import Facts, cell_states

    cells = pd.DataFrame(
        {
            "target": ["q.example", "t.example", "x.example"],
            "vantage": ["cn"] * 3,
            "blocking": ["quic", "throttling", "made-up"],
            "blocked": [3, 3, 3],
            "ok": [0, 0, 0],
            "down": [0, 0, 0],
        }
    )
    states = cell_states(Facts(cells=cells), set(report.STATE_COLOURS))
    assert states["state"].tolist() == ["quic", "throttling", "other"]


def test_cell_states_pick_the_dominant_type_then_access() -> None:
    """Per (target, vantage): the most frequent blocking type (ties: first in sorted order)
    when the blocked share reaches the threshold, else accessible, down, inconclusive; a
    threshold of 0 does not call a cell with nothing blocked blocked."""
    import pandas as pd

    from analysis import report
    from analysis.facts import Facts, cell_states

    rows = [  # target, vantage, blocking, blocked, ok, down
        ("a", "cn", "dns", 2, 0, 0),
        ("a", "cn", "tcp_ip", 3, 0, 0),
        ("a", "cn", None, 0, 1, 0),  # 5 of 6 blocked: tcp_ip dominates
        ("b", "cn", "dns", 1, 0, 0),
        ("b", "cn", "http-diff", 1, 0, 0),
        ("b", "cn", None, 0, 2, 0),  # 2 of 4 blocked, tie: dns sorts first
        ("c", "cn", "dns", 1, 0, 0),
        ("c", "cn", None, 0, 9, 0),  # 1 of 10: accessible
        ("d", "cn", None, 0, 0, 4),  # down
        ("e", "cn", None, 0, 0, 0),  # inconclusive
        ("e", "ru", None, 0, 3, 0),
    ]
    cells = pd.DataFrame(rows, columns=["target", "vantage", "blocking", "blocked", "ok", "down"])
    known = set(report.STATE_COLOURS)
    states = cell_states(Facts(cells=cells), known, 0.5)
    assert states.to_dict("list") == {
        "target": ["a", "b", "c", "d", "e", "e"],
        "vantage": ["cn", "cn", "cn", "cn", "cn", "ru"],
        "state": ["tcp_ip", "dns", "accessible", "down", "inconclusive", "accessible"],
    }
    at_zero = cell_states(Facts(cells=cells), known, 0.0)["state"].tolist()
    assert at_zero == ["tcp_ip", "dns", "dns", "down", "inconclusive", "accessible"]
