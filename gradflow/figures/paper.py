"""The paper's figures, from the flow and from Monte-Carlo trained transformers.

``make_figures(out_dir, quick=False)`` writes six figures as PNG and PDF and returns, per figure,
the paths, the numbers drawn and the Figure (so tests can check what is drawn, not only that a
file exists). The science they show (phase times, power-law fits and their ranges, the phase
diagram) is computed in ``gradflow.analysis`` and the layers below; this module only draws it.
Matplotlib is used through ``Figure`` objects only: no pyplot state, no display needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm

from ..analysis.diagram import phase_diagram
from ..analysis.scaling import phase_scaling
from ..flow.observables import OBSERVABLE_METHOD, attention_diversity
from ..flow.phase_times import largest_other_areas, phases, summarize
from ..flow.solver import solve
from ..io import check_output_paths, output_dir
from ..model.presets import global_local
from ..theory.oracle import area_oracle_loss
from ..theory.per_position import expected_attention
from ..theory.population import attention_maps, loss
from ..training.sgd import train_transformer
from .style import (
    PALETTE,
    STYLE,
    FigureResult,
    new_figure,
    plain_log_ticks,
    representative_queries,
    save_figure,
    seed_band,
    seeds_label,
)

PHASE_MEANING = {"T1": "decoupling", "T2": "target at half its ceiling", "T3": "target at 95% of its ceiling"}


@dataclass
class Setup:
    """Everything the figures share: the model, its flows, and the Monte-Carlo runs."""

    quick: bool
    model: object
    exact: object
    meanfield: object
    runs: list
    exact_at_runs: object     # the exact flow at the runs' record times
    t_mc: float
    lr: float
    scaling_Ps: list
    diagram_n_local: list
    diagram_gamma: list
    diagram_P: int


def setup(quick: bool = False, progress=None) -> Setup:
    if quick:
        # two seeds, so that the quick figures show (and tests check) a seed band
        P, n_local, seeds, lr, t_mc, t_max, records = 36, 2, 2, 0.5, 100.0, 1e4, 100
        # a factor 4 between sizes, up to where a flow to t = 1e4 still reaches every T3
        scaling_Ps = [64, 256, 1024, 4096, 16384]
        n_locals, gammas, diagram_P = [1, 2, 4], [0.3, 0.5, 0.7], 36
    else:
        P, n_local, seeds, lr, t_mc, t_max, records = 64, 4, 3, 0.25, 1000.0, 1e4, 200
        # solves cost the same at every P (class reduction), so the sizes reach far enough for the
        # local slopes of T2 and T3 to settle
        scaling_Ps = [36, 64, 144, 256, 576, 1024, 2304, 4096, 9216, 16384, 36864, 65536]
        n_locals, gammas, diagram_P = list(range(1, 13)), [round(0.1 * i, 1) for i in range(1, 10)], 64
    model = global_local(P, n_local=n_local, local_size=4, mask_ratio=0.5)
    exact = solve(model, t_max)
    meanfield = solve(model, t_max, method="meanfield")
    steps = int(round(t_mc / lr))
    runs = [train_transformer(model, steps=steps, lr=lr, batch_size=256, record_every=max(1, steps // records),
                              seed=s, progress=progress) for s in range(seeds)]
    exact_at_runs = solve(model, float(runs[0].t[-1]), t_eval=runs[0].t)
    return Setup(quick, model, exact, meanfield, runs, exact_at_runs, t_mc, lr, scaling_Ps, n_locals, gammas,
                 diagram_P)


def _mc_note(s: Setup) -> str:
    return f"SGD lr {s.lr:g}, batch 256, {seeds_label(len(s.runs))}"


# ---- figure 1 ---------------------------------------------------------------------------------
def _query_curves(m, p):
    """The correlations figure 1 follows for query position p (cluster 0), as functions of
    per-position (A, B), and the largest other areas of p (several when they tie)."""
    areas = m.clusters[0].areas
    own = int(areas[p])
    tied = np.flatnonzero(largest_other_areas(m)[0, p, :m.clusters[0].n_areas])
    f_own, f_other = m.feature_index(0, own), m.feature_index(0, int(tied[0]))
    same = int(np.flatnonzero((areas == own) & (np.arange(m.n_patches) != p))[0])
    far = int(np.flatnonzero(areas == tied[0])[0])
    return tied, {
        "target": lambda A, B: A[..., p, f_own],
        "distractor": lambda A, B: A[..., p, f_other],
        "pp_same": lambda A, B: B[..., p, same],
        "pp_other": lambda A, B: B[..., p, far],
        "pp_self": lambda A, B: B[..., p, p],
    }


def fig_correlations(s: Setup, out_dir: Path) -> FigureResult:
    m, sol, ref = s.model, s.exact, s.exact_at_runs
    lp, gp, glob = representative_queries(m)
    n_seeds = len(s.runs)
    fig = new_figure(7.2, 7.6)
    axes = fig.subplots(3, 2, sharex=True)
    mask = sol.t > 0
    t_mc = s.runs[0].t
    tm = t_mc > 0
    data = {"bands": {}, "lines": {}, "n_seeds": n_seeds}
    for col, (p, title) in enumerate(((lp, "local query (small area)"), (gp, "global query (dominant area)"))):
        tied, fn = _query_curves(m, p)
        flow = {k: f(sol.A, sol.B) for k, f in fn.items()}
        if len(tied) > 1:
            # several largest other areas tie (the global query: every local area); the figure
            # shows one of them and says whether the others' curves are the same
            fs = [m.feature_index(0, int(a)) for a in tied]
            equal = np.abs(sol.A[:, p, fs] - sol.A[:, p, fs[:1]]).max() <= 1e-9 * np.abs(sol.A[:, p, fs]).max()
            other, short = "a local area", "local-area"
            tie_note = f"\n({len(tied)} tied areas{', equal curves' if equal else ''})"
        else:
            other, short = ("the global area", "global-area") if int(tied[0]) == glob \
                else ("the largest other area", "other-area")
            tie_note = ""
        # self and the other-area key can lie within a line width of each other: the self curve
        # is a wide pale band drawn first, the other curve a dashed line on top of it
        gap = np.abs(flow["pp_self"] - flow["pp_other"]).max()
        styles = {   # label, colour, line style, width, alpha, z-order
            "target": ("target FP (own area's feature)", PALETTE["blue"], "-", 1.5, 1.0, 2),
            "distractor": (f"FP to {other}'s feature{tie_note}", PALETTE["vermillion"], "-", 1.5, 1.0, 2),
            "pp_same": ("PP, same-area key", PALETTE["green"], "-", 1.5, 1.0, 2),
            "pp_self": ("PP, self B[p, p] (wide)", PALETTE["black"], "-", 4.5, 0.3, 1),
            "pp_other": (f"PP, {short} key (dashed),\nat most {gap:.2g} from self", PALETTE["purple"], "--",
                         1.5, 1.0, 3),
        }
        for row, keys in ((0, ("target", "distractor")), (1, ("pp_same", "pp_self", "pp_other"))):
            ax = axes[row, col]
            for k in keys:
                label, color, ls, lw, alpha, z = styles[k]
                line, = ax.plot(sol.t[mask], flow[k][mask], ls, color=color, lw=lw, alpha=alpha, zorder=z,
                                label=label)
                data["lines"][(title, k)] = (line.get_linestyle(), line.get_linewidth(), line.get_zorder())
                seed_band(ax, t_mc[tm], np.stack([fn[k](r.A, r.B)[tm] for r in s.runs]), color, None)
            # where the curves are not: they all start at 0 and part late, up and down
            ax.legend(loc="upper left" if row == 0 or col == 0 else "lower left", frameon=False)
        data[f"target_fp_{title.split()[0]}"] = flow["target"]
        # Monte Carlo minus flow at the record times: here the seed band has room to show
        ax = axes[2, col]
        for k, label in (("target", "target FP"), ("distractor", f"FP to {other}")):
            color = styles[k][1]
            dev = np.stack([fn[k](r.A, r.B)[tm] - fn[k](ref.A, ref.B)[tm] for r in s.runs])
            mean, lo, hi = seed_band(ax, t_mc[tm], dev, color, None)
            ax.plot(t_mc[tm], mean, "-", color=color, lw=0.8, label=label)
            data["bands"][(title, k)] = (t_mc[tm], mean, lo, hi)
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.legend(loc="upper left", frameon=False)
        axes[0, col].set_title(title)
        ax.set_xscale("log")
        ax.set_xlabel("gradient-flow time t (= lr x SGD steps)")
    axes[0, 0].set_ylabel("feature-position (FP)\ncorrelation")
    axes[1, 0].set_ylabel("position-position (PP)\ncorrelation")
    axes[2, 0].set_ylabel("FP: Monte Carlo minus flow")
    band = f"band: min-max over the {n_seeds} seeds" if n_seeds > 1 else "a single seed: no band"
    axes[2, 0].set_title(f"Monte Carlo minus flow at each record; line: mean over seeds, {band}",
                         fontsize=8, loc="left")
    fig.suptitle(f"Attention correlations, global_local P={m.n_patches}, gamma={m.mask_ratio}\n"
                 f"lines: exact flow; dots: Monte-Carlo mean ({_mc_note(s)})", fontsize=9)
    return save_figure(fig, out_dir, "fig1_correlations", data)


# ---- figure 2 ---------------------------------------------------------------------------------
def _outline(ax, area_mask: np.ndarray, color: str) -> None:
    H, W = area_mask.shape
    for r in range(H):
        for c in range(W):
            if not area_mask[r, c]:
                continue
            for dr, dc, seg in ((-1, 0, ([c - .5, c + .5], [r - .5, r - .5])), (1, 0, ([c - .5, c + .5], [r + .5, r + .5])),
                                (0, -1, ([c - .5, c - .5], [r - .5, r + .5])), (0, 1, ([c + .5, c + .5], [r - .5, r + .5]))):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < H and 0 <= cc < W and area_mask[rr, cc]):
                    ax.plot(*seg, color=color, lw=1.6)


def phase_columns(ph, p: int) -> list:
    """[(label, time)] for query position p (cluster 0): t = 0, then its phase times in time
    order (the phases of a global query need not come in the order T1, T2, T3); phases not
    reached (NaN) come last."""
    cols = [(n, float(getattr(ph, n)[0, p])) for n in ("T1", "T2", "T3")]
    cols.sort(key=lambda c: (not np.isfinite(c[1]), c[1] if np.isfinite(c[1]) else 0.0))
    return [("t = 0", 0.0)] + cols


def fig_attention_maps(s: Setup, out_dir: Path) -> FigureResult:
    m, sol = s.model, s.exact
    H, W = m.grid
    areas = m.clusters[0].areas
    ph = phases(sol)
    lp, gp, _ = representative_queries(m)
    n_tied = int(largest_other_areas(m)[0, gp].sum())
    fig = new_figure(7.2, 7.9)
    axes = fig.subplots(4, 4)
    maps, columns = {}, {}
    for qi, (p, qname) in enumerate(((lp, "local query"), (gp, "global query"))):
        cols = phase_columns(ph, p)
        columns[qname] = cols
        panel = {}
        for j, (lab, tt) in enumerate(cols):
            if np.isfinite(tt):
                # the flow's state at the phase time itself (dense output), not the nearest record
                panel[(j, 0)] = attention_maps(sol.at(tt), OBSERVABLE_METHOD, clusters=[0])[0][p]
                if tt <= s.runs[0].t[-1] * 1.0001:
                    run = s.runs[0]
                    i_mc = int(np.argmin(np.abs(run.t - tt)))
                    panel[(j, 1)] = expected_attention(m, run.A[i_mc], run.B[i_mc])[0, p]
                    panel[(j, "t")] = run.t[i_mc]
        # one log colour scale per query, shared by flow and Monte Carlo at every time
        vals = np.concatenate([v for key, v in panel.items() if key[1] != "t"])
        norm = LogNorm(vmin=max(vals.min(), 1e-5), vmax=vals.max())
        im = None
        for j, (lab, tt) in enumerate(cols):
            for row, src in enumerate(("flow", "Monte Carlo")):
                ax = axes[2 * qi + row, j]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if row == 0:
                    ax.set_title(lab if j == 0 else (f"{lab} = {tt:.3g}" if np.isfinite(tt) else f"{lab}: not reached"))
                if j == 0:
                    ax.set_ylabel(f"{qname}\n{src}")
                mp = panel.get((j, row))
                if mp is None:
                    ax.text(0.5, 0.5, "not reached" if row == 0 else "beyond the\nMonte-Carlo run",
                            ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.4")
                    continue
                im = ax.imshow(np.clip(mp, norm.vmin, None).reshape(H, W), cmap="viridis", norm=norm)
                _outline(ax, (areas == areas[p]).reshape(H, W), PALETTE["orange"])
                r, c = divmod(p, W)
                ax.plot(c, r, "x", color=PALETTE["vermillion"], ms=7, mew=2)
                maps[(qname, lab, src)] = mp
                if row == 1:     # the nearest Monte-Carlo record, which may differ a little
                    ax.text(0.98, 0.02, f"t = {panel[(j, 't')]:.3g}", transform=ax.transAxes,
                            ha="right", va="bottom", fontsize=7, color="white")
        cbar = fig.colorbar(im, ax=axes[2 * qi:2 * qi + 2, :], shrink=0.8, pad=0.02,
                            label="expected attention weight")
        plain_log_ticks(cbar.ax.yaxis)
    fig.suptitle("Expected attention of a masked query (x) on every patch, its area outlined; rows: flow and\n"
                 "Monte Carlo (seed 0, nearest record); columns: t = 0 and the query's phase times in time order\n"
                 f"T1: the largest other area's mass halves (for the global query: the {n_tied} tied local "
                 "areas together);\nT2, T3: the target reaches half and 95% of its ceiling", fontsize=8.5)
    return save_figure(fig, out_dir, "fig2_attention_maps", {"maps": maps, "columns": columns})


# ---- figure 3 ---------------------------------------------------------------------------------
def fig_loss(s: Setup, out_dir: Path) -> FigureResult:
    m = s.model
    oracle = area_oracle_loss(m)
    mf = s.meanfield
    # the loss the mean-field flow descends is its own approximation; the oracle bounds the exact
    # loss, so its state is also shown under the exact loss (docs/model.md section 5)
    mf_exact = np.array([loss(mf.states[i], "exact") for i in range(mf.t.size)])
    fig = new_figure(4.8, 3.4)
    ax = fig.subplots()
    mask = s.exact.t > 0
    # the mean-field state's exact loss stays close to the exact flow's: that flow is a wide pale
    # line drawn first, the other a dotted line on top of it
    gap = np.max(np.abs(mf_exact / s.exact.loss - 1.0))
    ax.plot(s.exact.t[mask], s.exact.loss[mask], "-", color=PALETTE["blue"], lw=3.5, alpha=0.45, zorder=1,
            label="exact flow (wide pale line)")
    ax.plot(mf.t[mask], mf.loss[mask], "--", color=PALETTE["green"], lw=1.5,
            label="mean-field flow: its own mean-field loss")
    ax.plot(mf.t[mask], mf_exact[mask], ":", color=PALETTE["green"], lw=1.8, zorder=3,
            label=f"mean-field flow: exact loss of its state\n(dotted; within {100 * gap:.0f}% of the exact flow)")
    run_t = s.runs[0].t
    # an MC record averages the batch loss over the interval ending at it: plot at the midpoint
    mid = 0.5 * (run_t[1:] + run_t[:-1])
    mc = np.stack([r.loss[1:] for r in s.runs])
    mean, _, _ = seed_band(ax, mid, mc, PALETTE["vermillion"], "Monte Carlo batch loss", relative=True)
    ax.axhline(oracle, color=PALETTE["black"], ls="-", lw=0.8, label="area-oracle loss (floor of the exact loss)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gradient-flow time t")
    ax.set_ylabel("loss")
    ax.set_title(f"Loss, global_local P={m.n_patches}, gamma={m.mask_ratio}\nMonte Carlo: {_mc_note(s)}")
    ax.legend(frameon=False, loc="lower left")
    return save_figure(fig, out_dir, "fig3_loss",
                        {"oracle": oracle, "exact": s.exact.loss, "meanfield": mf.loss,
                         "meanfield_exact": mf_exact, "meanfield_exact_gap": gap, "mc_mean": mean})


# ---- figure 4 ---------------------------------------------------------------------------------
def fig_phase_scaling(s: Setup, out_dir: Path) -> FigureResult:
    res = phase_scaling("global_local", s.scaling_Ps, n_local=4, local_size=4, mask_ratio=0.5)
    fig = new_figure(7.2, 4.3)
    ax, axs = fig.subplots(1, 2)
    Ps = res.Ps.astype(float)
    mids = np.sqrt(Ps[1:] * Ps[:-1])
    drawn = {}
    # at large P, T3 exceeds T2 by only a few hundred time units: T2's fitted line is wide and pale,
    # T3's a dashed line drawn on top of it (line style, width, alpha, z-order)
    fit_style = {"T1": ("-", 1.2, 1.0, 2), "T2": ("-", 4.0, 0.4, 1), "T3": ("--", 1.3, 1.0, 3)}
    for name, color, marker in (("T1", PALETTE["vermillion"], "o"), ("T2", PALETTE["blue"], "s"),
                                ("T3", PALETTE["green"], "^")):
        T, i0 = res.times[name], res.fit_start[name]
        ls, lw, alpha, z = fit_style[name]
        fitted = np.zeros(Ps.size, dtype=bool)
        if i0 is not None:
            fitted[i0:] = True
        ax.plot(Ps[fitted], T[fitted], marker, color=color, ms=5)
        ax.plot(Ps[~fitted], T[~fitted], marker, color=color, mfc="white", ms=5)
        local, = axs.plot(mids, res.local_slopes[name], marker + "-", color=color, ms=4, lw=1)
        entry = {"local_P": local.get_xdata(), "local_slope": local.get_ydata()}
        head = f"{name} ({PHASE_MEANING[name]})"
        if i0 is None:
            label = f"{head}: no power law, the local slope has not settled"
        else:
            line, = ax.plot(Ps[i0:], res.fitted(name, Ps[i0:]), ls, color=color, lw=lw, alpha=alpha, zorder=z)
            lo, hi = res.intervals[name]
            ci = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""
            n_fit = Ps.size - i0
            label = (f"{head}: slope {res.slopes[name]:.3f}{ci} on P = {int(Ps[i0])}..{int(Ps[-1])}"
                     + (f" (only {n_fit} points: wide CI)" if n_fit < 4 else ""))
            axs.fill_between([Ps[i0], Ps[-1]], lo if np.isfinite(lo) else res.slopes[name],
                             hi if np.isfinite(hi) else res.slopes[name], color=color, alpha=0.2, lw=0)
            axs.plot([Ps[i0], Ps[-1]], [res.slopes[name]] * 2, "-", color=color, lw=2.5, alpha=0.5)
            entry.update(fit_P=line.get_xdata(), fit_T=line.get_ydata())
        if name == "T3":
            label += f"\n    (T3 / T2 at P = {int(Ps[-1])}: {T[-1] / res.times['T2'][-1]:.3f})"
        ax.plot([], [], ls, marker=marker, color=color, ms=5, lw=lw, alpha=max(alpha, 0.6), label=label)
        drawn[name] = entry
    for ref in (0.0, 1.0):
        axs.axhline(ref, color="0.5", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of patches P")
    ax.set_ylabel("phase time (median over local queries)")
    ax.set_title("phase times; filled: points of the fit,\nline: the fitted law T ~ P^slope", fontsize=8)
    axs.set_xscale("log")
    axs.set_xlabel("number of patches P")
    axs.set_ylabel("local slope  d log T / d log P")
    axs.set_title("local slope between neighbouring P;\nband: fitted slope, 95% CI, over the fitted P", fontsize=8)
    for a in (ax, axs):
        plain_log_ticks(a.xaxis)
    plain_log_ticks(ax.yaxis)
    fig.suptitle(f"Phase times versus P (global_local, 4 local areas of 4 patches, gamma = 0.5); the law is "
                 f"fitted on the\nlargest P whose local slopes agree within {res.tol:g} (at least 3 points)",
                 fontsize=9)
    fig.legend(loc="outside lower center", frameon=False, ncols=1)
    return save_figure(fig, out_dir, "fig4_phase_scaling", {"scaling": res, "drawn": drawn})


# ---- figure 5 ---------------------------------------------------------------------------------
def fig_diversity(s: Setup, out_dir: Path) -> FigureResult:
    fig = new_figure(4.8, 3.3)
    ax = fig.subplots()
    d = attention_diversity(s.exact)
    mask = s.exact.t > 0
    ax.plot(s.exact.t[mask], d[mask], "-", color=PALETTE["blue"], lw=1.5, label="exact flow")
    mc = np.stack([attention_diversity(r) for r in s.runs])
    tm = s.runs[0].t > 0
    mean, _, _ = seed_band(ax, s.runs[0].t[tm], mc[:, tm], PALETTE["vermillion"], "Monte Carlo")
    summary = summarize(phases(s.exact))
    marks = {}
    for name, ls in (("T1", "--"), ("T2", "-."), ("T3", ":")):
        T = summary.time(name)
        marks[name] = (T, float(np.interp(T, s.exact.t, d)))
        ax.axvline(T, color=PALETTE["black"], ls=ls, lw=0.9, label=f"{name} = {T:.3g} (median, local queries)")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.0)
    ax.set_xlabel("gradient-flow time t")
    ax.set_ylabel("attention diversity")
    ax.set_title(f"Attention diversity, global_local P={s.model.n_patches} (0: every patch attends alike)")
    ax.legend(frameon=False, loc="upper left")
    return save_figure(fig, out_dir, "fig5_diversity", {"flow": d, "mc_mean": mean, "at_phases": marks})


# ---- figure 6 ---------------------------------------------------------------------------------
def fig_phase_diagram(s: Setup, out_dir: Path) -> FigureResult:
    diagram = phase_diagram(s.diagram_P, s.diagram_n_local, s.diagram_gamma)
    share, gammas, T2, two = diagram.share, diagram.gamma, diagram.T2, diagram.two_phases
    fig = new_figure(5.0, 4.3)
    ax = fig.subplots()
    ax.grid(False)
    # cells centred on the sampled values
    def edges(v):
        mid = 0.5 * (v[1:] + v[:-1])
        return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    order = np.argsort(share)
    xs = share[order]
    Z = np.ma.masked_invalid(T2[:, order])
    ax.set_facecolor("#BBBBBB")                                    # "not reached"
    mesh = ax.pcolormesh(edges(xs), edges(gammas), Z, cmap="viridis",
                         norm=LogNorm(vmin=np.nanmin(T2), vmax=np.nanmax(T2)))
    cbar = fig.colorbar(mesh, ax=ax, label="T2 (median time the target of a local query\nreaches half its ceiling)")
    plain_log_ticks(cbar.ax.yaxis)
    X, Y = np.meshgrid(xs, gammas)
    tw = two[:, order]
    if tw.any():
        ax.plot(X[tw], Y[tw], "o", mfc="white", mec="black", ms=4, label="two phases: T1 < T2 for every local query")
    if (~tw).any():
        ax.plot(X[~tw], Y[~tw], "x", color=PALETTE["vermillion"], ms=5, mew=1.5, label="one phase (some T2 <= T1)")
    ax.set_xlabel("global-area share of the patches")
    ax.set_ylabel("mask ratio gamma")
    # the share is set by the number of local areas: name it on a second axis
    top = ax.secondary_xaxis("top", functions=(lambda x: (1 - x) * s.diagram_P / 4,
                                               lambda n: 1 - np.asarray(n) * 4 / s.diagram_P))
    top.set_xlabel("local areas (4 patches each)")
    top.set_xticks(s.diagram_n_local)
    grey = " (grey: T2 not reached)" if np.isnan(T2).any() else ""
    ax.set_title(f"Phase diagram, global_local P={s.diagram_P}{grey}")
    fig.legend(loc="outside lower center", ncols=1, frameon=False)
    return save_figure(fig, out_dir, "fig6_phase_diagram",
                        {"share": share, "gamma": gammas, "T2": T2, "two_phases": two})


FIGURES = (fig_correlations, fig_attention_maps, fig_loss, fig_phase_scaling, fig_diversity, fig_phase_diagram)


# the files the figures write (each as .png and .pdf), checked before any work
FIGURE_NAMES = ("fig1_correlations", "fig2_attention_maps", "fig3_loss", "fig4_phase_scaling", "fig5_diversity",
                "fig6_phase_diagram")
FIGURE_FORMATS = ("png", "pdf")


def figure_paths(out_dir) -> list:
    """Every file ``make_figures`` writes into ``out_dir``."""
    return [Path(out_dir) / f"{name}.{ext}" for name in FIGURE_NAMES for ext in FIGURE_FORMATS]


def make_figures(out_dir, quick: bool = False, progress=None) -> dict:
    """Write the six figures (PNG and PDF) into ``out_dir``; returns name -> FigureResult.

    The directory and every file it will hold are checked before any work (OutputPathError)."""
    import matplotlib
    out = output_dir(out_dir, "figures directory")
    check_output_paths(figure_paths(out), "figure")
    s = setup(quick, progress)
    results = {}
    with matplotlib.rc_context(STYLE):
        for fn in FIGURES:
            results[fn.__name__] = fn(s, out)
    return results
