"""One figure style for every plot of the project: colour-blind safe, readable at single-column
width, byte-identical across reruns.

* Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design",
  https://jfly.uni-koeln.de/color/), distinguishable under the common colour-vision
  deficiencies. Baselines are drawn in greys with hatches, so they never compete with it.
* Sizes are in points at the printed size: figures are made exactly :data:`SINGLE_COLUMN_IN` or
  :data:`DOUBLE_COLUMN_IN` wide, laid out by matplotlib's constrained layout, in its default font.
* Output is deterministic: a fixed SVG hash salt, no creation dates in PDF/SVG.

:func:`style_context` is a ``with`` block; figures are plain :class:`matplotlib.figure.Figure`
objects on an Agg canvas (no pyplot).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fmri2img.core.errors import InputError

#: Okabe-Ito palette (Okabe & Ito 2008, https://jfly.uni-koeln.de/color/), in its usual order.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: Order in which unnamed categories (subjects, unknown decoders) take colours; yellow last
#: because it is faint on white.
CYCLE = ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "black", "yellow")

#: Fixed colours of the categories of results_table.csv (docs/contracts.md section 6), so a
#: configuration has the same colour in every figure.
DECODER_COLORS = {"ridge": "blue", "mlp": "orange", "two_stage": "bluish_green"}
TEST_SET_COLORS = {"shared1000": "blue", "imagery_vision": "sky_blue", "imagery": "vermillion"}
CONFIGURATION_COLORS = {
    "perception_only": "blue",
    "mixed": "orange",
    "adapter_linear": "bluish_green",
    "adapter_mlp": "sky_blue",
    "adapter_mlp_condition": "reddish_purple",
    "finetune": "vermillion",
}
#: Baselines are greys (not data colours) with a hatch, so they read as references.
BASELINE_STYLE = {
    "baseline_ground_truth": ("#4D4D4D", ""),
    "baseline_random": ("#BDBDBD", "//"),
    "baseline_mean_embedding": ("#8C8C8C", ".."),
}

#: Column widths in inches: a typical two-column journal layout (e.g. Elsevier/IEEE ~3.5 in
#: single column, ~7.16 in full width).
SINGLE_COLUMN_IN = 3.5
DOUBLE_COLUMN_IN = 7.16

#: Resolution of the PNG copies (print quality, 300 dpi).
PNG_DPI = 300

#: Base font size in points (captions of journals are 8-9 pt; 7 pt is the usual minimum).
FONT_SIZE_PT = 8
SMALL_FONT_SIZE_PT = 7

#: The fixed salt of SVG element ids (any constant string; it only has to be constant).
SVG_HASH_SALT = "fmri2img"

#: Output formats and the metadata that keeps them free of timestamps.
FORMAT_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}
FORMATS = tuple(FORMAT_METADATA)

#: rcParams of the project style.
RC_PARAMS = {
    "font.size": FONT_SIZE_PT,
    "axes.titlesize": FONT_SIZE_PT,
    "axes.labelsize": FONT_SIZE_PT,
    "xtick.labelsize": SMALL_FONT_SIZE_PT,
    "ytick.labelsize": SMALL_FONT_SIZE_PT,
    "legend.fontsize": SMALL_FONT_SIZE_PT,
    "legend.title_fontsize": SMALL_FONT_SIZE_PT,
    "legend.frameon": False,
    "figure.titlesize": FONT_SIZE_PT + 1,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.linewidth": 0.4,
    "grid.color": "#DDDDDD",
    "axes.axisbelow": True,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "errorbar.capsize": 1.5,
    "hatch.linewidth": 0.5,
    "savefig.dpi": PNG_DPI,
    "savefig.facecolor": "white",
    "pdf.fonttype": 42,  # TrueType: text stays editable/searchable in the PDF (journals refuse Type 3)
    "svg.fonttype": "path",  # glyphs as paths: renders the same without the font installed
    "svg.hashsalt": SVG_HASH_SALT,
}


@contextlib.contextmanager
def style_context() -> Iterator[None]:
    """Apply the project style inside a ``with`` block (restores rcParams afterwards)."""
    with matplotlib.rc_context(RC_PARAMS):
        yield


def color(name: str) -> str:
    """Hex colour of an Okabe-Ito colour name."""
    return OKABE_ITO[name]


def category_colors(kind: str, values: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(face colour, hatch) for each value of a category, stable across figures.

    Parameters
    ----------
    kind : {"decoder", "configuration", "test_set", "subject"}
        The column the values come from.
    values : sequence of str
        The values in display order; unknown ones take the next free colour of :data:`CYCLE`.
    """
    fixed = {
        "decoder": DECODER_COLORS,
        "configuration": CONFIGURATION_COLORS,
        "test_set": TEST_SET_COLORS,
    }.get(kind, {})
    used = {fixed[v] for v in values if v in fixed}
    free = itertools.cycle([c for c in CYCLE if c not in used] or list(CYCLE))
    out: dict[str, tuple[str, str]] = {}
    for value in values:
        if kind == "configuration" and value in BASELINE_STYLE:
            out[value] = BASELINE_STYLE[value]
        elif value in fixed:
            out[value] = (color(fixed[value]), "")
        else:
            out[value] = (color(next(free)), "")
    return out


def new_figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free figure on an Agg canvas, fixed size, with matplotlib's constrained layout."""
    fig = Figure(figsize=(width_in, height_in), dpi=PNG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """Validate output formats; raise :class:`InputError` naming the allowed ones."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMAT_METADATA]
    if bad or not formats:
        raise InputError(
            f"Unknown figure format(s) {bad or '(none given)'}; choose from {', '.join(FORMATS)}."
        )
    return formats
