"""The paper's figures, from the flow and from Monte-Carlo trained transformers.

``make_figures(out_dir, quick=False)`` writes six figures as PNG and PDF and returns, per figure,
the paths and the numbers drawn (so tests can check the data, not only that a file exists).
Matplotlib is used through ``Figure`` objects only: no pyplot state, no display needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm

from ..analysis.diagram import phase_diagram
from ..analysis.scaling import phase_scaling
from ..flow.observables import attention_diversity
from ..flow.phase_times import phases
from ..flow.solver import solve
from ..model.presets import global_local
from ..theory.oracle import area_oracle_loss
from ..theory.population import expected_attention
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


@dataclass
class Setup:
    """Everything the figures share: the model, its flows, and the Monte-Carlo runs."""

    quick: bool
    model: object
    exact: object
    meanfield: object
    runs: list
    t_mc: float
    scaling_Ps: list
    diagram_n_local: list
    diagram_gamma: list
    diagram_P: int


def setup(quick: bool = False, progress=None) -> Setup:
    if quick:
        P, n_local, seeds, lr, t_mc, t_max = 36, 2, 1, 0.5, 100.0, 1e4
        scaling_Ps, n_locals, gammas, diagram_P = [36, 64, 144], [1, 2, 4], [0.3, 0.5, 0.7], 36
    else:
        P, n_local, seeds, lr, t_mc, t_max = 64, 4, 3, 0.25, 1000.0, 1e4
        scaling_Ps = [36, 64, 144, 256, 576, 1024, 4096]
        n_locals, gammas, diagram_P = list(range(1, 13)), [round(0.1 * i, 1) for i in range(1, 10)], 64
    model = global_local(P, n_local=n_local, local_size=4, mask_ratio=0.5)
    exact = solve(model, t_max)
    meanfield = solve(model, t_max, method="meanfield")
    steps = int(round(t_mc / lr))
    runs = [train_transformer(model, steps=steps, lr=lr, batch_size=256, record_every=max(1, steps // 200),
                              seed=s, progress=progress) for s in range(seeds)]
    return Setup(quick, model, exact, meanfield, runs, t_mc, scaling_Ps, n_locals, gammas, diagram_P)


# ---- figure 1 ---------------------------------------------------------------------------------
def fig_correlations(s: Setup, out_dir: Path) -> FigureResult:
    m, sol = s.model, s.exact
    areas = m.clusters[0].areas
    lp, gp, glob = representative_queries(m)
    fig = new_figure(7.2, 3.0)
    axes = fig.subplots(1, 2, sharey=True)
    data = {}
    for ax, p, title in ((axes[0], lp, "local query (small area)"), (axes[1], gp, "global query (dominant area)")):
        own = areas[p]
        other_area = glob if own != glob else int(areas[lp])
        same = int(np.flatnonzero((areas == own) & (np.arange(m.n_patches) != p))[0])
        far = int(np.flatnonzero(areas == other_area)[0])
        curves = [
            ("target FP (own area's feature)", lambda A, B: A[..., p, own], PALETTE["blue"], "-"),
            ("FP to the largest other area", lambda A, B: A[..., p, other_area], PALETTE["vermillion"], "-"),
            ("PP, key in the same area", lambda A, B: B[..., p, same], PALETTE["green"], "--"),
            ("PP, key in that other area", lambda A, B: B[..., p, far], PALETTE["purple"], "--"),
            ("PP self  B[p, p]", lambda A, B: B[..., p, p], PALETTE["black"], ":"),
        ]
        mask = sol.t > 0
        for label, fn, color, ls in curves:
            flow = fn(sol.A, sol.B)
            ax.plot(sol.t[mask], flow[mask], ls, color=color, lw=1.4, label=label)
            mc = np.stack([fn(r.A, r.B) for r in s.runs])
            tm = s.runs[0].t > 0
            seed_band(ax, s.runs[0].t[tm], mc[:, tm], color, None)
            data[(title, label)] = flow
        ax.set_xscale("log")
        ax.set_xlabel("gradient-flow time t (= lr x SGD steps)")
        ax.set_title(title)
    axes[0].set_ylabel("attention correlation")
    axes[1].legend(loc="upper left", frameon=False)
    fig.suptitle(f"Attention correlations, global_local P={m.n_patches}, gamma={m.mask_ratio}\n"
                 f"flow (lines); Monte Carlo mean and seed band (dots, {seeds_label(len(s.runs))})", fontsize=9)
    return save_figure(fig, out_dir, "fig1_correlations",
                        {"target_fp_local": data[("local query (small area)", curves[0][0])]})


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


def fig_attention_maps(s: Setup, out_dir: Path) -> FigureResult:
    m, sol = s.model, s.exact
    H, W = m.grid
    areas = m.clusters[0].areas
    ph = phases(sol)
    lp, gp, _ = representative_queries(m)
    fig = new_figure(7.2, 7.6)
    axes = fig.subplots(4, 4)
    maps = {}
    for qi, (p, qname) in enumerate(((lp, "local query"), (gp, "global query"))):
        times = [0.0, ph.T1[0, p], ph.T2[0, p], ph.T3[0, p]]
        labels = ["t = 0", "T1", "T2", "T3"]
        panel = {}
        for j, tt in enumerate(times):
            if np.isfinite(tt):
                panel[(j, 0)] = sol.attention_map(int(np.argmin(np.abs(sol.t - tt))))[p]
                if tt <= s.t_mc * 1.0001:
                    run = s.runs[0]
                    i_mc = int(np.argmin(np.abs(run.t - tt)))
                    panel[(j, 1)] = expected_attention(m, run.A[i_mc], run.B[i_mc])[0, p]
                    panel[(j, "t")] = run.t[i_mc]
        # one log colour scale per query, shared by flow and Monte Carlo at every time
        vals = np.concatenate([v for key, v in panel.items() if key[1] != "t"])
        norm = LogNorm(vmin=max(vals.min(), 1e-5), vmax=vals.max())
        im = None
        for j, (tt, lab) in enumerate(zip(times, labels)):
            for row, src in enumerate(("flow", "Monte Carlo")):
                ax = axes[2 * qi + row, j]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if row == 0:
                    ax.set_title(lab if j == 0 else f"{lab} = {tt:.3g}")
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
        plain_log_ticks(cbar.ax.yaxis, short=norm.vmax / norm.vmin < 30)
    fig.suptitle("Expected attention of a masked query (x) on every patch, its area outlined\n"
                 "rows: flow and Monte Carlo (seed 0); columns: t = 0 and the query's phase times",
                 fontsize=9)
    return save_figure(fig, out_dir, "fig2_attention_maps", {"maps": maps})


# ---- figure 3 ---------------------------------------------------------------------------------
def fig_loss(s: Setup, out_dir: Path) -> FigureResult:
    m = s.model
    oracle = area_oracle_loss(m)
    fig = new_figure(4.6, 3.2)
    ax = fig.subplots()
    for sol, label, color, ls in ((s.exact, "exact flow", PALETTE["blue"], "-"),
                                  (s.meanfield, "mean-field flow", PALETTE["green"], "--")):
        mask = sol.t > 0
        ax.plot(sol.t[mask], sol.loss[mask], ls, color=color, lw=1.5, label=label)
    run_t = s.runs[0].t
    # an MC record averages the batch loss over the interval ending at it: plot at the midpoint
    mid = 0.5 * (run_t[1:] + run_t[:-1])
    mc = np.stack([r.loss[1:] for r in s.runs])
    seed_band(ax, mid, mc, PALETTE["vermillion"], f"Monte Carlo ({seeds_label(len(s.runs))}, batch loss)")
    ax.axhline(oracle, color=PALETTE["black"], ls=":", lw=1.2, label="area-oracle loss (floor)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gradient-flow time t")
    ax.set_ylabel("population loss L")
    ax.set_title(f"Loss, global_local P={m.n_patches}, gamma={m.mask_ratio}")
    ax.legend(frameon=False)
    return save_figure(fig, out_dir, "fig3_loss",
                        {"oracle": oracle, "exact": s.exact.loss, "meanfield": s.meanfield.loss,
                         "mc_mean": mc.mean(axis=0)})


# ---- figure 4 ---------------------------------------------------------------------------------
def fig_phase_scaling(s: Setup, out_dir: Path) -> FigureResult:
    res = phase_scaling("global_local", s.scaling_Ps, n_local=2 if s.quick else 4, local_size=4, mask_ratio=0.5)
    fig = new_figure(4.6, 3.4)
    ax = fig.subplots()
    Ps = res.Ps.astype(float)
    for name, color, marker in (("T1", PALETTE["vermillion"], "o"), ("T2", PALETTE["blue"], "s"),
                                ("T3", PALETTE["green"], "^")):
        T = res.times[name]
        lo, hi = res.intervals[name]
        ci = "" if not np.isfinite(lo) else f" [{lo:.2f}, {hi:.2f}]"
        ax.plot(Ps, T, marker, color=color, label=f"{name}: slope {res.slopes[name]:.2f}{ci}")
        ok = np.isfinite(T)
        coef = np.polyfit(np.log(Ps[ok]), np.log(T[ok]), 1)
        ax.plot(Ps, np.exp(np.polyval(coef, np.log(Ps))), "-", color=color, lw=1, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of patches P")
    ax.set_ylabel("phase time (median over local queries)")
    ax.set_title("Phase times versus P (global_local, gamma = 0.5)\nlines: fits T ~ P^slope, slope [95% CI]")
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.legend(frameon=False, loc="upper left")
    return save_figure(fig, out_dir, "fig4_phase_scaling", {"scaling": res})


# ---- figure 5 ---------------------------------------------------------------------------------
def fig_diversity(s: Setup, out_dir: Path) -> FigureResult:
    fig = new_figure(4.6, 3.2)
    ax = fig.subplots()
    d = attention_diversity(s.exact)
    mask = s.exact.t > 0
    ax.plot(s.exact.t[mask], d[mask], "-", color=PALETTE["blue"], lw=1.5, label="exact flow")
    mc = np.stack([attention_diversity(r) for r in s.runs])
    tm = s.runs[0].t > 0
    seed_band(ax, s.runs[0].t[tm], mc[:, tm], PALETTE["vermillion"], f"Monte Carlo ({seeds_label(len(s.runs))})")
    ph = phases(s.exact)
    for name, ls in (("T1", "--"), ("T2", "-."), ("T3", ":")):
        T = np.nanmedian(getattr(ph, name)[ph.is_local])
        ax.axvline(T, color=PALETTE["black"], ls=ls, lw=0.9, label=f"{name} (local queries)")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.0)
    ax.set_xlabel("gradient-flow time t")
    ax.set_ylabel("attention diversity")
    ax.set_title("Attention diversity: 0 = every patch attends alike")
    ax.legend(frameon=False, loc="upper left")
    return save_figure(fig, out_dir, "fig5_diversity", {"flow": d, "mc_mean": mc.mean(axis=0)})


# ---- figure 6 ---------------------------------------------------------------------------------
def fig_phase_diagram(s: Setup, out_dir: Path) -> FigureResult:
    diagram = phase_diagram(s.diagram_P, s.diagram_n_local, s.diagram_gamma)
    share, gammas, T2, two = diagram.share, diagram.gamma, diagram.T2, diagram.two_phases
    fig = new_figure(5.0, 4.1)
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
    cbar = fig.colorbar(mesh, ax=ax, label="T2 (target reaches half its ceiling)")
    plain_log_ticks(cbar.ax.yaxis, short=np.nanmax(T2) / np.nanmin(T2) < 30)
    X, Y = np.meshgrid(xs, gammas)
    tw = two[:, order]
    ax.plot(X[tw], Y[tw], "o", mfc="white", mec="black", ms=4, label="two phases (T1 < T2)")
    ax.plot(X[~tw], Y[~tw], "x", color=PALETTE["vermillion"], ms=5, mew=1.5, label="one phase")
    ax.set_xlabel("global-area share of the patches")
    ax.set_ylabel("mask ratio gamma")
    ax.set_title(f"Phase diagram, global_local P={s.diagram_P} (grey: T2 not reached)")
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    return save_figure(fig, out_dir, "fig6_phase_diagram",
                        {"share": share, "gamma": gammas, "T2": T2, "two_phases": two})


FIGURES = (fig_correlations, fig_attention_maps, fig_loss, fig_phase_scaling, fig_diversity, fig_phase_diagram)


def make_figures(out_dir, quick: bool = False, progress=None) -> dict:
    """Write the six figures (PNG and PDF) into ``out_dir``; returns name -> FigureResult."""
    import matplotlib
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = setup(quick, progress)
    results = {}
    with matplotlib.rc_context(STYLE):
        for fn in FIGURES:
            results[fn.__name__] = fn(s, out)
    return results
