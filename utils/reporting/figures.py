"""Matplotlib as the figures use it: the file-only Agg backend, fonts that fall back to an installed font with the
characters the default one lacks (class names in another script), and saving with one warning for characters
that no font has."""
import logging
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from utils.core.io import save_figure  # noqa: E402

log = logging.getLogger("trust-ser")
WIDE_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Microsoft YaHei",
              "Arial Unicode MS")
_reported: set[str] = set()


def _fall_back_to_wide_fonts() -> None:
    installed = {f.name for f in font_manager.fontManager.ttflist}
    found = [name for name in WIDE_FONTS if name in installed]
    if found:
        plt.rcParams["font.family"] = ["sans-serif", *found]


_fall_back_to_wide_fonts()
# said once by save_png instead, for characters no font has (matplotlib warns at every layout of every figure)
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")


def save_png(fig, path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_figure(path, fig, dpi=110, bbox_inches="tight")
    missing = []
    for warning in caught:
        glyph = re.match(r"Glyph (\d+) .* missing from font", str(warning.message))
        if glyph:
            missing.append(chr(int(glyph.group(1))))
        else:
            warnings.warn(warning.message, warning.category)
    new = sorted(set(missing) - _reported)
    if new:
        _reported.update(new)
        log.warning(f"{path}: no installed font has {' '.join(new)}, drawn as boxes; install one that does "
                    f"(e.g. Noto Sans CJK), it is then used for them")
