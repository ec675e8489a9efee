"""Shared look of the figures: palette, rc style, saving, and small drawing helpers.

Matplotlib is used through ``Figure`` objects only: no pyplot state, no display needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

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
    """A drawn figure: its files, its size in inches, and the numbers it shows (for tests)."""

    paths: list
    data: dict
    size: tuple


def save_figure(fig: Figure, out_dir: Path, name: str, data: dict) -> FigureResult:
    """Write ``name``.png and ``name``.pdf into ``out_dir`` atomically."""
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext)
        paths.append(path)
    return FigureResult(paths, data, tuple(fig.get_size_inches()))


def representative_queries(model):
    """(local query position, global query position) representatives and the global feature."""
    sizes = model.clusters[0].area_sizes()
    areas = model.clusters[0].areas
    glob = int(np.argmax(sizes))
    local_pos = int(np.flatnonzero(areas != glob)[0])
    global_pos = int(np.flatnonzero(areas == glob)[0])
    return local_pos, global_pos, glob


def plain_log_ticks(axis, short: bool = False) -> None:
    """Log-axis labels as plain numbers (100, not 10^2). On a short range (about a decade) label
    1-2-3-5-7 steps, which the decades alone would leave nearly unlabelled."""
    if short:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def seeds_label(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def seed_band(ax, t, samples, color, label):
    """MC mean as markers and the min-max band over seeds."""
    mean = samples.mean(axis=0)
    ax.plot(t, mean, "o", ms=2.5, color=color, alpha=0.8, label=label)
    if samples.shape[0] > 1:
        ax.fill_between(t, samples.min(axis=0), samples.max(axis=0), color=color, alpha=0.25, lw=0)
    return mean


