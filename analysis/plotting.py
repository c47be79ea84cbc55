"""matplotlib for the report: headless, and with a CJK font behind DejaVu Sans.

Keyword lists are largely Chinese; DejaVu Sans has no CJK glyphs, so without a fallback the
report's labels came out as empty boxes. matplotlib (>= 3.6) falls back glyph by glyph through
the families listed in ``font.family``; we list the CJK families installed on this machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Free CJK families as Debian/Ubuntu package them (fonts-wqy-microhei is in
# lab/DEBIAN_PACKAGES.txt), in order of preference.
CJK_FAMILIES = (
    "WenQuanYi Micro Hei",
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
)
# Where those packages put their files: matplotlib's font cache may predate the install.
CJK_FILES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)


def cjk_families() -> list[str]:
    """The CJK families matplotlib can use here (registering known files it has not cached)."""
    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    if not known.intersection(CJK_FAMILIES):
        for path in CJK_FILES:
            if Path(path).is_file():
                with contextlib.suppress(Exception):  # an unreadable font file: no fallback
                    font_manager.fontManager.addfont(path)
        known = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in CJK_FAMILIES if name in known]


@contextlib.contextmanager
def pyplot() -> Iterator[Any]:
    """matplotlib.pyplot with the Agg backend and the CJK fallback, for one figure's life."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"font.family": ["DejaVu Sans", *cjk_families()]}):
        yield plt
