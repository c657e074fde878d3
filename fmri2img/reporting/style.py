"""One figure style for every plot of the project: colour-blind safe, readable at
single-column width, and byte-identical across reruns.

* Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design",
  https://jfly.uni-koeln.de/color/), distinguishable under the common colour-vision
  deficiencies. Baselines are drawn in greys with hatches, so they never compete with it.
* Sizes are in points at the printed size: figures are made exactly
  :data:`SINGLE_COLUMN_IN` or :data:`DOUBLE_COLUMN_IN` wide, so 7-8 pt text stays 7-8 pt
  in the paper.
* Output is deterministic: a fixed SVG hash salt, no creation dates in PDF/SVG, the
  bundled DejaVu Sans font (no dependence on the fonts installed on the machine), and
  fixed-size PNGs (no ``bbox_inches="tight"``).

Nothing here touches global state, except that :func:`font_family` registers reduced
copies of the font (a family of their own) with matplotlib's font manager: :func:`style_context`
is a ``with`` block and figures are plain :class:`matplotlib.figure.Figure` objects on an
Agg canvas (no pyplot).

Speed (``make_figures`` draws 5 figures in 3 formats per ablation folder): each format is
drawn once (:func:`save_figure`), the layout is measured once (:func:`layout_panels`), tick
marks and grid lines are one artist per axis (:func:`merge_tick_marks_and_grid`), PDFs
embed a small font subset (:func:`font_family`) and PNGs are encoded as RGB (:func:`_save_png`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import fontTools
import matplotlib
import numpy as np
from fontTools import subset
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, PngImagePlugin

from fmri2img.core.errors import InputError
from fmri2img.core.files import atomic_path

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

#: zlib level of the PNGs. Level 1 encodes a 300-dpi figure in about 60% of the time of the
#: default 6 (~0.07 s instead of ~0.12 s for an RGB 2148x1575 figure, measured) for ~10%
#: larger files, still smaller than matplotlib's RGBA level-6 PNGs.
PNG_COMPRESS_LEVEL = 1
#: The ``Software`` text chunk matplotlib writes into its PNGs (kept for identical metadata).
PNG_SOFTWARE = f"Matplotlib version{matplotlib.__version__}, https://matplotlib.org/"

#: Layout (:func:`layout_panels`): room between the figure edge (or the figure legend) and
#: the panels' decorations, and between neighbouring panels' decorations, in points; the
#: values give about the spacing of matplotlib's constrained layout (3 pt pads plus 2%
#: of the figure shared between the gaps) at our sizes.
LAYOUT_EDGE_PAD_PT = 3.0
LAYOUT_GAP_PT = 10.0

#: Base font size in points (captions of journals are 8-9 pt; 7 pt is the usual minimum).
FONT_SIZE_PT = 8
SMALL_FONT_SIZE_PT = 7

#: The fixed salt of SVG element ids (any constant string; it only has to be constant).
SVG_HASH_SALT = "fmri2img"

#: Output formats and the metadata that keeps them free of timestamps.
FORMAT_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}
FORMATS = tuple(FORMAT_METADATA)

#: The figures' font: bundled with matplotlib, so the output is identical on every machine.
FONT_FAMILY = "DejaVu Sans"
#: Its files in matplotlib's ``mpl-data/fonts/ttf`` (regular; bold for panel titles).
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
#: Family and PostScript name stem of the reduced copies of :data:`FONT_FILES` (see
#: :func:`font_family`); a family of their own, so they never shadow the full font.
SUBSET_FAMILY = "DejaVu Sans fmri2img"
SUBSET_POSTSCRIPT = "DejaVuSansFmri2img"
#: Characters of the reduced copies: ASCII, Latin-1 (accented names), and the signs labels
#: and ticks use: U+2212 minus (``axes.unicode_minus``), the middle dot of panel titles,
#: dashes, ellipsis, arrows, comparison signs and the common Greek letters. Any other
#: character falls back to the full font.
SUBSET_TEXT = "".join(map(chr, [*range(0x20, 0x7F), *range(0xA0, 0x100), *range(0x391, 0x3AA),
                                *range(0x3B1, 0x3CA), 0x2013, 0x2014, 0x2018, 0x2019, 0x201C, 0x201D,
                                0x2022, 0x2026, 0x2190, 0x2191, 0x2192, 0x2193, 0x2212, 0x2248, 0x2260,
                                0x2264, 0x2265]))
#: Version of the subsetting recipe, part of the cache key of the reduced copies.
SUBSET_VERSION = 2
#: Folder of the reduced copies, under matplotlib's cache folder.
SUBSET_CACHE_DIR = "fmri2img-fonts"

#: rcParams of the project style (:func:`style_context` puts the reduced copy of the font
#: first in ``font.family``).
RC_PARAMS = {
    "font.family": FONT_FAMILY,
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
    "figure.dpi": 100,
    "savefig.dpi": PNG_DPI,
    "savefig.facecolor": "white",
    "pdf.fonttype": 42,  # TrueType: text stays editable/searchable in the PDF
    "svg.fonttype": "path",  # glyphs as paths: renders the same without the font installed
    "svg.hashsalt": SVG_HASH_SALT,
    "path.simplify": True,
}


def _subset_font(name: str) -> Path:
    """Path of the reduced copy of the bundled font file ``name``, built if not cached.

    Same outlines, metrics, hinting, kerning and ligatures as the original for the
    characters of :data:`SUBSET_TEXT`, renamed to :data:`SUBSET_FAMILY`. The file name holds
    a hash of everything it is made from, so a new matplotlib/fontTools or recipe rebuilds
    it; it is written atomically and the build is deterministic."""
    source = Path(matplotlib.get_data_path(), "fonts", "ttf", name)
    recipe = f"{SUBSET_TEXT}|{SUBSET_FAMILY}|{SUBSET_POSTSCRIPT}|{SUBSET_VERSION}|{fontTools.version}"
    key = hashlib.sha256(source.read_bytes() + recipe.encode()).hexdigest()[:16]
    target = Path(matplotlib.get_cachedir(), SUBSET_CACHE_DIR, f"{source.stem}-{key}.ttf")
    if target.is_file():
        return target
    options = subset.Options(layout_features=["*"], name_IDs=["*"], name_languages=["*"], glyph_names=True,
                             legacy_kern=True, notdef_outline=True, recommended_glyphs=True)
    # FFTM: FontForge timestamp (fontTools cannot subset it, and warns). GPOS: its kerning is
    # also in the legacy "kern" table, which text shaping (HarfBuzz) uses when GPOS is absent:
    # same advances for every pair of SUBSET_TEXT characters (checked, regular and bold), and
    # subsetting for each PDF is ~4x faster without it. MATH: only for OpenType math layout.
    options.drop_tables += ["FFTM", "GPOS", "MATH"]
    font = subset.load_font(str(source), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=SUBSET_TEXT)
    subsetter.subset(font)
    for record in font["name"].names:  # family, unique, full and PostScript names
        if record.nameID in (1, 3, 4, 6, 16):
            text = record.toUnicode().replace(FONT_FAMILY, SUBSET_FAMILY).replace("DejaVuSans", SUBSET_POSTSCRIPT)
            record.string = text
    with atomic_path(target) as tmp:
        font.save(str(tmp))
    return target


@functools.lru_cache(maxsize=None)
def font_family() -> tuple[str, ...]:
    """``font.family`` of the figures: the reduced copy of DejaVu Sans, then the full font
    (matplotlib's per-character fallback) for characters outside :data:`SUBSET_TEXT`.

    Why: PDFs embed their fonts as TrueType (``pdf.fonttype`` 42), and matplotlib subsets
    the font file with fontTools for each PDF and font. On the full DejaVu Sans (6,000
    glyphs, large GSUB/GPOS tables) that took ~0.16 s per font, two fonts per PDF, about a
    fifth of a figure's time; on the reduced copy (~300 glyphs, no GPOS) ~0.01 s. The
    copies are built once per machine (~0.5 s) in matplotlib's cache folder and registered
    with its font manager once per process (adds a family; changes nothing else). If they
    cannot be written, the full font is used: slower, same look."""
    try:
        paths = [_subset_font(name) for name in FONT_FILES]
    except OSError:
        return (FONT_FAMILY,)
    for path in paths:
        font_manager.fontManager.addfont(path)
    return (SUBSET_FAMILY, FONT_FAMILY)


@contextlib.contextmanager
def style_context() -> Iterator[None]:
    """Apply the project style inside a ``with`` block (restores rcParams afterwards)."""
    with matplotlib.rc_context({**RC_PARAMS, "font.family": list(font_family())}):
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
    """A pyplot-free figure on an Agg canvas (fixed size). No layout engine: :func:`save_figure`
    lays the panels out once with :func:`layout_panels`.

    The figure's dpi is the PNG's, so the layout is measured with the Agg renderer that then
    draws the PNG and reuses its text measurements (the dpi of the vector formats is fixed
    by their backends)."""
    fig = Figure(figsize=(width_in, height_in), dpi=PNG_DPI)
    FigureCanvasAgg(fig)
    return fig


def _tight_margins(axes: list, renderer, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Per column (left, right) and per row (top, bottom) room, in pixels, that the
    decorations of the panels (tick labels, axis labels, titles, anything unclipped) take
    beyond the panels' edges."""
    n_rows, n_cols = shape
    left, right, top, bottom = np.zeros(n_cols), np.zeros(n_cols), np.zeros(n_rows), np.zeros(n_rows)
    for ax in axes:
        spec = ax.get_subplotspec()
        rows, cols = spec.rowspan, spec.colspan
        tight, box = ax.get_tightbbox(renderer, for_layout_only=True), ax.bbox
        if tight is None:
            continue
        left[cols.start] = max(left[cols.start], box.x0 - tight.x0)
        right[cols.stop - 1] = max(right[cols.stop - 1], tight.x1 - box.x1)
        top[rows.start] = max(top[rows.start], tight.y1 - box.y1)
        bottom[rows.stop - 1] = max(bottom[rows.stop - 1], box.y0 - tight.y0)
    return left, right, top, bottom


def _place_panels(fig: Figure, axes: list, shape: tuple[int, int], margins: tuple[np.ndarray, ...],
                  top_edge: float) -> bool:
    """Set the panel positions for the given decoration margins (pixels): equal panel sizes,
    :data:`LAYOUT_GAP_PT` between neighbours' decorations, :data:`LAYOUT_EDGE_PAD_PT` to
    the figure edges, everything below ``top_edge``. False if the panels would not fit."""
    (n_rows, n_cols), (left, right, top, bottom) = shape, margins
    px = fig.dpi / 72  # pixels per point
    gap, pad = LAYOUT_GAP_PT * px, LAYOUT_EDGE_PAD_PT * px
    width, height = fig.bbox.width, fig.bbox.height
    panel_w = (width - 2 * pad - left.sum() - right.sum() - (n_cols - 1) * gap) / n_cols
    panel_h = (top_edge - pad - top.sum() - bottom.sum() - (n_rows - 1) * gap) / n_rows
    if panel_w <= 0 or panel_h <= 0:
        return False
    # left edge of each column / top edge of each row
    x0 = pad + np.cumsum(left) + np.arange(n_cols) * panel_w + np.concatenate([[0], np.cumsum(right + gap)[:-1]])
    y1 = top_edge - np.cumsum(top) - np.arange(n_rows) * panel_h - np.concatenate([[0], np.cumsum(bottom + gap)[:-1]])
    for ax in axes:
        spec = ax.get_subplotspec()
        x_left, x_right = x0[spec.colspan.start], x0[spec.colspan.stop - 1] + panel_w
        y_top, y_bottom = y1[spec.rowspan.start], y1[spec.rowspan.stop - 1] - panel_h
        ax.set_position([x_left / width, y_bottom / height, (x_right - x_left) / width, (y_top - y_bottom) / height])
    return True


def layout_panels(fig: Figure) -> None:
    """Place the grid of panels of ``fig`` under its figure legend (if any) so that no
    decoration leaves the figure or overlaps a neighbour; panels get equal sizes.

    About what constrained layout gives for our grids, at a fraction of the cost: that
    measures every panel twice; here every panel is measured once. The one decoration that
    depends on the panel size is the y tick labels (the locator fits the ticks to the panel
    height): where the move changed a panel's y ticks, only its y axis is measured again and
    its column widened if the new labels need it (widening never changes a panel's height,
    so the ticks stay as they are)."""
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_subplotspec() is not None]
    if not axes:
        return
    shape = axes[0].get_subplotspec().get_gridspec().get_geometry()
    renderer = fig.canvas.get_renderer()
    top_edge = fig.bbox.height - LAYOUT_EDGE_PAD_PT * fig.dpi / 72
    for legend in fig.legends:
        top_edge = min(top_edge, legend.get_window_extent(renderer).y0 - LAYOUT_EDGE_PAD_PT * fig.dpi / 72)
    ticks = [ax.yaxis.get_majorticklocs() for ax in axes]
    margins = _tight_margins(axes, renderer, shape)
    if not _place_panels(fig, axes, shape, margins, top_edge):
        return  # decorations larger than the figure: leave the default positions
    left = margins[0]
    widened = False
    for ax, before in zip(axes, ticks, strict=True):
        if not np.array_equal(before, ax.yaxis.get_majorticklocs()):
            column, box = ax.get_subplotspec().colspan.start, ax.yaxis.get_tightbbox(renderer)
            if box is not None and ax.bbox.x0 - box.x0 > left[column]:
                left[column], widened = ax.bbox.x0 - box.x0, True
    if widened:
        _place_panels(fig, axes, shape, margins, top_edge)


def _merge_axis(ax, axis, transform: str) -> None:
    """:func:`merge_tick_marks_and_grid` for one axis (``transform``: "x" or "y")."""
    ticks = axis.get_major_ticks()
    if not ticks:
        return
    mark, grid = ticks[0].tick1line, ticks[0].gridline  # every major tick is styled like the first
    # the ticks matplotlib draws: those within the view interval (its own tolerance, in scale space)
    locs = np.asarray(axis.get_majorticklocs(), dtype=float)
    scale = axis.get_transform()
    low, high = sorted(scale.transform(np.asarray(axis.get_view_interval(), dtype=float)))
    where = scale.transform(locs)
    locs = locs[(where >= low - (high - low) * 1e-10) & (where <= high + (high - low) * 1e-10)]
    if not len(locs):
        return
    along, across = (ax.get_xaxis_transform, 0) if transform == "x" else (ax.get_yaxis_transform, 1)

    def xy(data: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (data, fixed) if across == 0 else (fixed, data)

    if mark.get_visible():
        ax.add_artist(Line2D(*xy(locs, np.zeros(len(locs))), transform=along("tick1"), linestyle="none",
                           marker=mark.get_marker(), markersize=mark.get_markersize(),
                           markeredgewidth=mark.get_markeredgewidth(), markeredgecolor=mark.get_markeredgecolor(),
                           zorder=axis.get_zorder(), clip_on=False))
    if grid.get_visible():
        gap = np.full(len(locs), np.nan)
        ends = np.tile([0.0, 1.0, np.nan], len(locs))
        ax.add_artist(Line2D(*xy(np.column_stack([locs, locs, gap]).ravel(), ends), transform=along("grid"),
                           color=grid.get_color(), linewidth=grid.get_linewidth(), linestyle=grid.get_linestyle(),
                           alpha=grid.get_alpha(), zorder=axis.get_zorder()))
    axis.set_tick_params(which="major", tick1On=False, gridOn=False)


def merge_tick_marks_and_grid(fig: Figure) -> None:
    """Draw each axis's major tick marks as one marker line and its grid lines as one
    polyline, once the layout is final.

    matplotlib draws every tick mark and every grid line as an artist of its own, in every
    format; for a 3x3 grid of panels the axes' skeleton (ticks, grid, labels) was most of
    the drawing time. Merged, each is one path per format, at the same places and in the
    same style (the first tick's: ticks share their style); matplotlib still draws the tick
    labels, at the same distance from the axis. Minor ticks and the top/right ticks are left
    to matplotlib."""
    for ax in fig.axes:
        if ax.axison:
            for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
                if axis.get_visible():
                    _merge_axis(ax, axis, name)


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """Validate output formats; raise :class:`InputError` naming the allowed ones."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMAT_METADATA]
    if bad or not formats:
        raise InputError(
            f"Unknown figure format(s) {bad or '(none given)'}; choose from {', '.join(FORMATS)}."
        )
    return formats


def pin_empty_axis_labels(fig: Figure) -> None:
    """Give every axis label without text a fixed position.

    matplotlib places an axis label clear of its tick labels by measuring all of them (and
    those of the sibling Axes) at every draw and layout pass, even when the label is empty;
    a pinned label skips that, and an empty label draws nothing wherever it is."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if not axis.label.get_text():
                axis.set_label_coords(0.0, 0.0)


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for each format, atomically and deterministically.

    The layout is computed once (:func:`layout_panels`, or the figure's own layout engine,
    without a full draw) and then frozen: with no layout engine left, ``savefig`` draws each
    format once (with one, even a placeholder, it draws every format twice, the first pass
    only to lay it out). Returns the written paths in the order of ``formats``.
    """
    stem = Path(stem)
    formats = check_formats(formats)
    written = []
    with style_context():
        pin_empty_axis_labels(fig)
        engine = fig.get_layout_engine()
        if engine is not None:  # a figure made elsewhere: its own layout, once
            engine.execute(fig)
            fig.set_layout_engine(None)  # None, not "none": "none" leaves a placeholder engine
        else:
            layout_panels(fig)
        merge_tick_marks_and_grid(fig)
        for fmt in formats:
            target = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(target) as tmp:
                if fmt == "png":
                    _save_png(fig, tmp)
                else:
                    fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=FORMAT_METADATA[fmt])
            written.append(target)
    return written


def _save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a :data:`PNG_DPI` PNG: matplotlib's Agg rendering, encoded as RGB.

    matplotlib's own PNG writer always encodes RGBA at zlib level 6, which took ~40% of the
    PNG time. Our figures are opaque (white background), so dropping the alpha channel is
    lossless and leaves a quarter less to compress; :data:`PNG_COMPRESS_LEVEL` does the rest.
    A figure with any transparent pixel keeps its alpha channel."""
    raw = io.BytesIO()
    fig.savefig(raw, format="rgba", dpi=PNG_DPI)
    width = int(fig.get_figwidth() * PNG_DPI)  # as Agg sizes its canvas: int(inches * dpi)
    pixels = np.frombuffer(raw.getbuffer(), dtype=np.uint8).reshape(-1, width, 4)
    image = Image.frombuffer("RGBA", (width, pixels.shape[0]), pixels, "raw", "RGBA", 0, 1)
    if pixels[..., 3].min() == 255:
        image = image.convert("RGB")
    info = PngImagePlugin.PngInfo()
    for key, value in {"Software": PNG_SOFTWARE, **FORMAT_METADATA["png"]}.items():
        info.add_text(key, value)
    image.save(path, format="png", dpi=(PNG_DPI, PNG_DPI), pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
