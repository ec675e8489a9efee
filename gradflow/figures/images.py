"""Pictures of what the theory predicts on photographs (drawing only: the numbers come from
``gradflow.analysis.image_flows`` and ``gradflow.analysis.areas``).

Per image, one row: the photograph with its patch grid and area boundaries (areas numbered);
the expected attention of the masked query (x) at t = 0, T1, T2, T3 and the end of the flow,
over the photograph, the query's area outlined; and the own-area attention of every area (as a
fraction of its ceiling) along the flow. Across images: T2 against area size and amplitude.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm

from ..analysis.image_flows import MOMENTS, ImageFlow
from ..flow.observables import target_fraction
from ..model.images import area_boundaries
from .style import (
    PALETTE,
    STYLE,
    FigureResult,
    new_figure,
    plain_log_ticks,
    save_figure,
)

AREA_COLORS = (PALETTE["blue"], PALETTE["vermillion"], PALETTE["green"], PALETTE["purple"], PALETTE["orange"],
               PALETTE["sky"], PALETTE["black"], "#8C6D31", "#7F7F7F", "#B5CF6B", "#393B79", "#E7969C")
PANEL = 1.75            # inches per image panel


def area_color(j: int) -> str:
    return AREA_COLORS[j % len(AREA_COLORS)]


def _time(t: float) -> str:
    """3 significant digits, without exponents up to 10^6."""
    return f"{t:.3g}" if t < 1000 else (f"{t:.0f}" if t < 1e6 else f"{t:.2g}")


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _photo(ax, image: np.ndarray, grid, grey: bool = False) -> None:
    """The photograph in patch coordinates (patch (r, c) spans [c, c+1] x [r, r+1]), at its own
    aspect ratio."""
    gh, gw = grid
    shown = image.mean(axis=2, keepdims=True).repeat(3, axis=2) if grey else image
    ax.imshow(shown.astype(np.uint8), extent=(0, gw, gh, 0), interpolation="bilinear")
    ax.set_aspect((image.shape[0] / gh) / (image.shape[1] / gw))
    ax.set_xlim(0, gw)
    ax.set_ylim(gh, 0)
    _bare(ax)


def _interior_patch(mask: np.ndarray) -> tuple[int, int]:
    """The patch of an area farthest from its boundary (ties: first in row-major order)."""
    from scipy.ndimage import distance_transform_cdt
    depth = distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1]
    r, c = np.unravel_index(np.argmax(depth), mask.shape)
    return int(r), int(c)


def _draw_areas(ax, labels: np.ndarray, numbers: bool) -> np.ndarray:
    gh, gw = labels.shape
    grid_lines = [[(c, 0), (c, gh)] for c in range(1, gw)] + [[(0, r), (gw, r)] for r in range(1, gh)]
    ax.add_collection(LineCollection(grid_lines, colors="white", linewidths=0.3, alpha=0.45))
    segs = area_boundaries(labels)
    ax.add_collection(LineCollection(segs, colors="black", linewidths=2.2))
    ax.add_collection(LineCollection(segs, colors="white", linewidths=1.0))
    if numbers:
        for j in range(int(labels.max()) + 1):
            r, c = _interior_patch(labels == j)
            ax.text(c + 0.5, r + 0.5, str(j), ha="center", va="center", fontsize=7, fontweight="bold",
                    color="white", bbox=dict(boxstyle="circle,pad=0.15", fc=area_color(j), ec="white", lw=0.6))
    return segs


def _outline_area(ax, mask: np.ndarray, color: str) -> None:
    """Outline of one area (its outer and inner edges) in patch coordinates."""
    segs = area_boundaries(mask.astype(np.int64))
    gh, gw = mask.shape
    # edges on the grid border
    for r, c in zip(*np.nonzero(mask)):
        if r == 0:
            segs = np.append(segs, [[(c, 0), (c + 1, 0)]], axis=0)
        if r == gh - 1:
            segs = np.append(segs, [[(c, gh), (c + 1, gh)]], axis=0)
        if c == 0:
            segs = np.append(segs, [[(0, r), (0, r + 1)]], axis=0)
        if c == gw - 1:
            segs = np.append(segs, [[(gw, r), (gw, r + 1)]], axis=0)
    ax.add_collection(LineCollection(segs, colors=color, linewidths=1.4))


def _row(fig, axes, flow: ImageFlow, k: int, first_row: bool) -> dict:
    """Draw image k in one row of 7 axes; return the numbers drawn."""
    grid = flow.grid
    gh, gw = grid
    labels = flow.labels(k)
    image = flow.images[k]
    p = int(flow.query[k])
    qr, qc = divmod(p, gw)
    name = flow.names[k]

    ax = axes[0]
    _photo(ax, image, grid)
    segs = _draw_areas(ax, labels, numbers=True)
    ax.plot(qc + 0.5, qr + 0.5, "x", color="white", ms=6, mew=2.4)
    ax.plot(qc + 0.5, qr + 0.5, "x", color=PALETTE["vermillion"], ms=5, mew=1.3)
    ax.set_title(f"{name}: {int(labels.max()) + 1} areas" if not first_row else
                 f"{name}\n{gh}x{gw} patches, {int(labels.max()) + 1} areas")

    maps = flow.query_attention[k]                        # (5, P)
    times = flow.moment_times[k]
    shown = np.where(np.arange(maps.shape[1]) == p, np.nan, maps)   # the query itself is not a key to show
    finite = shown[np.isfinite(shown)]
    vmax = float(finite.max())
    norm = LogNorm(vmin=max(float(finite.min()), vmax * 1e-3), vmax=vmax)
    own = labels == labels[qr, qc]
    im = None
    # columns in time order (T1 may come after T2, as for global queries); unreached phases last
    order = sorted(range(len(MOMENTS)), key=lambda m: (MOMENTS[m] == "end", not np.isfinite(times[m]),
                                                       times[m] if np.isfinite(times[m]) else 0.0))
    for column, m in enumerate(order):
        moment = MOMENTS[m]
        ax = axes[1 + column]
        _photo(ax, image, grid, grey=True)
        t = times[m]
        label = "t = 0" if m == 0 else (f"end, t = {_time(t)}" if moment == "end" else f"{moment} = {_time(t)}")
        if not np.isfinite(t):
            ax.set_title(f"{moment} not reached")
            continue
        ax.set_title(label)
        im = ax.imshow(np.clip(shown[m], norm.vmin, None).reshape(grid), extent=(0, gw, gh, 0), cmap="magma",
                       norm=norm, alpha=0.62, interpolation="nearest")
        ax.set_aspect((image.shape[0] / gh) / (image.shape[1] / gw))    # imshow reset it
        _outline_area(ax, own, PALETTE["sky"])
        ax.plot(qc + 0.5, qr + 0.5, "x", color="white", ms=6, mew=2.4)
        ax.plot(qc + 0.5, qr + 0.5, "x", color=PALETTE["vermillion"], ms=5, mew=1.3)
        ax.set_xlim(0, gw)
        ax.set_ylim(gh, 0)
    if im is not None:
        cbar = fig.colorbar(im, ax=list(axes[1:6]), shrink=0.85, pad=0.01, aspect=14)
        cbar.set_label("attention weight", fontsize=7)
        cbar.ax.tick_params(labelsize=6)
        plain_log_ticks(cbar.ax.yaxis)

    ax = axes[6]
    # (T, P) own-area attention / ceiling, along the traces the phase times were read from
    frac = target_fraction(flow.ph.target[:, k, :], flow.ph.ceiling[k][None])
    t = flow.ph.t
    curves = {}
    for j in range(int(labels.max()) + 1):
        pos = np.flatnonzero(labels.ravel() == j)
        if np.all(np.isnan(frac[:, pos])):
            continue                                        # a single-patch area: no target
        curve = np.nanmean(frac[:, pos], axis=1)
        curves[j] = curve
        ax.plot(t[1:], curve[1:], color=area_color(j), lw=2.0 if j == labels[qr, qc] else 1.1,
                label=f"{j} ({pos.size})")
    for level, text in ((0.5, "T2"), (1 - flow.ph.eps, "T3")):
        ax.axhline(level, color="0.5", lw=0.7, ls=":")
        ax.text(0.98, level, text, fontsize=6, color="0.4", va="bottom", ha="right",
                transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(t[1], t[-1])
    ax.set_xlabel("t")
    ax.set_title("own-area attention / ceiling")
    ax.legend(title="area (patches)", fontsize=5.5, title_fontsize=6, ncol=2, loc="upper left",
              bbox_to_anchor=(0.0, 0.93),
              handlelength=1.0, columnspacing=0.6, frameon=False)
    return {"labels": labels, "boundaries": segs, "query": p, "times": times, "attention": maps, "curves": curves,
            "norm": (norm.vmin, norm.vmax), "columns": [MOMENTS[m] for m in order]}


def draw_images(flow: ImageFlow, out_dir, which=None, name: str = "images") -> FigureResult:
    """One row per image of ``which`` (indices; default all) into ``out_dir``/``name``.png/.pdf."""
    import matplotlib
    which = list(range(len(flow.names))) if which is None else list(which)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(STYLE):
        fig = new_figure(7 * PANEL + 0.9, PANEL * 1.08 * len(which) + 0.5)
        axes = np.atleast_2d(fig.subplots(len(which), 7, gridspec_kw={"width_ratios": [1] * 6 + [1.25]}))
        data = {}
        for row, k in enumerate(which):
            data[flow.names[k]] = _row(fig, axes[row], flow, k, row == 0)
        fig.suptitle(f"Expected attention of a masked query (x; its area outlined in blue) over the photograph, "
                     f"at t = 0 and its phase times ({flow.solution.method} flow, mask ratio "
                     f"{flow.model.mask_ratio:g}, {len(flow.names)} images in the model)", fontsize=8.5)
        return save_figure(fig, out, name, data)


def draw_learned_last(flow: ImageFlow, out_dir, name: str = "images_t2") -> FigureResult:
    """T2 of every area of every image against its size and its amplitude."""
    import matplotlib
    table = flow.area_table()
    result = flow.learned_last()
    c = table.columns
    has = c["size"] >= 2
    reached = has & np.isfinite(c["T2"])
    missing = has & ~np.isfinite(c["T2"])
    top = float(np.nanmax(c["T2"][reached])) * 1.6 if reached.any() else 1.0
    with matplotlib.rc_context(STYLE):
        fig = new_figure(7.4, 3.1)
        axes = fig.subplots(1, 2, sharey=True)
        panels = (("size", "area size (patches)", "amplitude", "viridis"),
                  ("amplitude", "area amplitude (contrast rule)", "size", "cividis"))
        for ax, (xname, xlabel, cname, cmap) in zip(axes, panels):
            norm = LogNorm(vmin=c[cname][has].min(), vmax=c[cname][has].max())
            sc = ax.scatter(c[xname][reached], c["T2"][reached], c=c[cname][reached], cmap=cmap, norm=norm, s=16,
                            edgecolors="black", linewidths=0.3)
            if missing.any():
                ax.scatter(c[xname][missing], np.full(missing.sum(), top), c=c[cname][missing], cmap=cmap,
                           norm=norm, marker="^", s=22, edgecolors="black", linewidths=0.3,
                           label="T2 not reached")
                ax.legend(loc="upper left" if xname == "size" else "lower left", fontsize=7)   # where no points are
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            rho, pval = result.spearman[xname]
            ax.set_title(f"rank correlation with T2: rho = {rho:+.2f} (p = {pval:.1g})")
            plain_log_ticks(ax.xaxis)
            plain_log_ticks(ax.yaxis)
            cbar = fig.colorbar(sc, ax=ax, pad=0.01, aspect=25)
            cbar.set_label(f"area {cname}", fontsize=7)
            plain_log_ticks(cbar.ax.yaxis)
        if result.regression:
            b_size, b_amp = result.regression["log size"][0], result.regression["log amplitude"][0]
            axes[1].text(0.97, 0.97, f"least squares over the areas:\nT2 ~ size^{b_size:.2f} x amplitude^{b_amp:.2f}\n"
                         f"R^2 = {result.r_squared:.2f}", transform=axes[1].transAxes, ha="right", va="top",
                         fontsize=7, bbox=dict(fc="white", ec="0.7", lw=0.5))
        axes[0].set_ylabel("T2 (own-area attention at half its ceiling)")
        fig.suptitle(f"Which areas are learned last: T2 of {int(has.sum())} areas of {len(flow.names)} images",
                     fontsize=9)
        data = {"size": c["size"][has], "amplitude": c["amplitude"][has], "T2": c["T2"][has],
                "spearman": result.spearman}
        return save_figure(fig, Path(out_dir), name, data)


__all__ = ["area_color", "draw_images", "draw_learned_last"]
