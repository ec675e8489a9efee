"""The ladder figure: per rung, own-area attention against time (seed band) beside the flow.

Drawing only: the traces, the fitted time scales and the verdicts come from
:func:`gradflow.analysis.ladder.ladder`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis.ladder import LADDER_FLOW
from .style import (
    PALETTE,
    STYLE,
    FigureResult,
    new_figure,
    plain_log_ticks,
    save_figure,
    seeds_label,
)

GROUP_COLORS = {"local": PALETTE["blue"], "global": PALETTE["vermillion"], "all": PALETTE["blue"]}


def _mark(flag, none: str = "-") -> str:
    return none if flag is None else ("yes" if flag else "NO")


def ladder_figure(result, out_dir, name: str = "ladder") -> FigureResult:
    """One panel per rung: the flow's own-area attention of local and global queries (lines)
    and the rung's seed mean (dots) and min-max band, the rung drawn at c x its time so that it
    lies on the flow when one time scale fits; a thin dotted line shows it unscaled."""
    import matplotlib

    out_dir = Path(out_dir)
    rungs = list(result.rungs.values())
    ncols = min(3, len(rungs))
    nrows = math.ceil(len(rungs) / ncols)
    data = {}
    with matplotlib.rc_context(STYLE):
        fig = new_figure(max(2.6 * ncols + 0.4, 5.2), 2.15 * nrows + 0.9)     # one panel: room for titles, legend
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
        for ax, rung in zip(axes, rungs):
            row = rung.row
            if rung.t is None:
                ax.text(0.5, 0.5, f"{row['rung']}: no finished seed\n{row['note'][:60]}", ha="center", va="center",
                        transform=ax.transAxes, fontsize=7)
                ax.set_axis_off()
                continue
            # a factor at the edge of the searched range, or undetermined, is no time scale: unscaled
            scaled = not row["time_scale_at_edge"] and row["single_time_scale"] is not None
            c = row["time_scale"] if scaled else 1.0
            keep = rung.t > 0
            t_scaled = c * rung.t[keep]
            lo_x, hi_x = 0.5 * t_scaled.min(), 1.5 * t_scaled.max()
            flow = result.flows[rung.flow]               # the flow of the rung's own data model
            if not scaled:                               # nothing to align: show the flow's whole course
                lo_x, hi_x = min(lo_x, max(flow.t[1], 1e-3 * flow.settled)), max(hi_x, 2.0 * flow.settled)
            in_view = (flow.t >= lo_x) & (flow.t <= hi_x)
            for g, group in enumerate(flow.groups):
                color = GROUP_COLORS[group]
                ax.plot(flow.t[in_view], flow.target[in_view, g], "-", color=color, lw=1.3)
                ax.fill_between(t_scaled, rung.low[keep, g], rung.high[keep, g], color=color, alpha=0.25, lw=0)
                ax.plot(t_scaled, rung.mean[keep, g], "o", ms=2.2, color=color)
                if abs(math.log(c)) > math.log(1.1):
                    ax.plot(rung.t[keep], rung.mean[keep, g], ":", color=color, lw=0.8, alpha=0.7)
            ax.set_xscale("log")
            ax.set_xlim(lo_x, hi_x)
            plain_log_ticks(ax.xaxis)
            ax.set_ylim(-0.02, 1.02)
            head = (f"c = {c:.3g}, max dev {row['max_deviation']:.2f}" if scaled
                    else "no time scale (drawn at c = 1)")
            own = "" if rung.flow == LADDER_FLOW else " (vs its data's flow)"
            ax.set_title(f"{row['rung']}{own}: {head}\n"
                         f"phases {_mark(row['phases_ordered'], 'not reached')}, area-wide {_mark(row['area_wide'])}, "
                         f"one time scale {_mark(row['single_time_scale'])}", fontsize=7.5)
            data[row["rung"]] = {"t_scaled": t_scaled, "mean": rung.mean[keep]}
        for ax in axes[len(rungs):]:
            ax.set_axis_off()
        for ax in axes[::ncols]:
            ax.set_ylabel("own-area attention")
        for col in range(ncols):              # the lowest drawn panel of every column
            last = max(i for i in range(col, len(rungs), ncols))
            axes[last].set_xlabel("flow time (rung: c x lr x step)")
        from matplotlib.lines import Line2D
        groups = list(dict.fromkeys(g for flow in result.flows.values() for g in flow.groups))
        handles = [Line2D([], [], color=GROUP_COLORS[g], lw=1.3, label=f"flow, {g} queries") for g in groups]
        handles += [Line2D([], [], color="grey", marker="o", ls="", ms=3,
                           label=f"rung at c t: mean and band over {seeds_label(result.settings['seeds'])}"),
                    Line2D([], [], color="grey", ls=":", lw=0.8, label="rung unscaled (c = 1)")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False, fontsize=7)
        m = result.flows[LADDER_FLOW].model if LADDER_FLOW in result.flows else next(iter(result.flows.values())).model
        fig.suptitle(f"Does the theory hold beyond its model?{chr(10) if ncols == 1 else ' '}{m.n_patches} patches, "
                     f"gamma = {m.mask_ratio}, "
                     f"{result.settings['steps']} steps per run", fontsize=9)
        return save_figure(fig, out_dir, name, data)
