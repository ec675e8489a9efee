"""Shared look of the figures: palette, rc style, saving, and small drawing helpers.

Matplotlib is used through ``Figure`` objects only: no pyplot state, no display needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from ..io import atomic_path

# Okabe-Ito: distinguishable under the common colour-vision deficiencies
PALETTE = {"blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73", "purple": "#CC79A7",
           "orange": "#E69F00", "sky": "#56B4E9", "yellow": "#F0E442", "black": "#000000"}
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
         "savefig.dpi": 150}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


@dataclass
class FigureResult:
    """A drawn figure: its files, its size in inches, the numbers it shows, and the Figure itself
    (so that tests can check what was drawn, not only that a file exists)."""

    paths: list
    data: dict
    size: tuple
    figure: Figure | None = None


def save_figure(fig: Figure, out_dir: Path, name: str, data: dict) -> FigureResult:
    """Write ``name``.png and ``name``.pdf into ``out_dir`` atomically."""
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext)
        paths.append(path)
    return FigureResult(paths, data, tuple(fig.get_size_inches()), fig)


def representative_queries(model):
    """(local query position, global query position) representatives and the global feature."""
    sizes = model.clusters[0].area_sizes()
    areas = model.clusters[0].areas
    glob = int(np.argmax(sizes))
    local_pos = int(np.flatnonzero(areas != glob)[0])
    global_pos = int(np.flatnonzero(areas == glob)[0])
    return local_pos, global_pos, glob


def plain_log_ticks(axis) -> None:
    """Log-axis labels as plain numbers (100, not 10^2), at least three of them: the decades on a
    wide range; 1-2-5 or 1-2-3-5-7 steps within a decade or two; on a range under a factor of
    about 3, a few evenly stepped values (which the log steps would leave unlabelled)."""
    lo, hi = sorted(axis.axes.get_xlim() if axis is axis.axes.xaxis else axis.axes.get_ylim())
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for subs in ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0)):
        # counted here: LogLocator itself silently falls back to linear steps on a short range
        inside = [v for k in decades for v in np.multiply(subs, 10.0 ** k) if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
        if len(inside) >= 3:
            axis.set_major_locator(LogLocator(base=10, subs=subs))
            return
    axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))


def seeds_label(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def log_thin(t: np.ndarray, per_decade: int = 12) -> np.ndarray:
    """Indices of about ``per_decade`` records per decade of positive times ``t``: Monte-Carlo
    records are evenly spaced in t, so on a log axis they would pile up at late times into a
    solid bar hiding the flow's line."""
    t = np.asarray(t, float)
    pos = np.flatnonzero(t > 0)
    if pos.size < 2:
        return pos
    n = max(2, int(np.ceil(per_decade * np.log10(t[pos[-1]] / t[pos[0]]))) + 1)
    want = np.geomspace(t[pos[0]], t[pos[-1]], n)
    return np.unique(pos[np.searchsorted(t[pos], want).clip(0, pos.size - 1)])


def seed_band(ax, t, samples, color, label, relative: bool = False):
    """Monte-Carlo mean over seeds as dots (thinned on a log time axis) and the min-max band over
    seeds. With several seeds, the label says how wide the band is at most (absolute, or relative
    to the mean when ``relative``), since it can be too narrow to see. Returns (mean, low, high)."""
    samples = np.asarray(samples, float)
    mean, lo, hi = samples.mean(axis=0), samples.min(axis=0), samples.max(axis=0)
    n = samples.shape[0]
    if label is not None:
        label = f"{label}, mean of {seeds_label(n)}"
        if n > 1:
            width = np.nanmax((hi - lo) / np.abs(mean)) if relative else np.nanmax(hi - lo)
            label += f"\n(seeds differ by at most {100 * width:.2g}%)" if relative \
                else f"\n(seeds differ by at most {width:.2g})"
    shown = log_thin(t)
    ax.plot(np.asarray(t)[shown], mean[shown], "o", ms=2.5, color=color, alpha=0.85, label=label, zorder=3)
    if n > 1:
        ax.fill_between(t, lo, hi, color=color, alpha=0.25, lw=0)
    return mean, lo, hi
