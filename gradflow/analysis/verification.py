"""The paper's claims as measured checks: ``verify`` solves a model and returns a ``Report``.

Every check is a small function of measured arrays, so that each can be shown to fail on a case
built to violate it (see tests/test_verify.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .._validate import instance
from ..flow.observables import attention_diversity, ideal_diversity, target_fraction
from ..flow.phase_times import median_time, phases, summarize
from ..flow.solver import solve
from ..model import DataModel
from ..theory.oracle import area_oracle_loss
from ..theory.population import loss
from ..training.sgd import train_transformer
from .comparison import compare

CONVERGENCE_TOL = 0.02      # final loss within 2% of the area-oracle loss
MONOTONE_TOL = 1e-10        # allowed relative rise of the loss between outputs (round-off)
DIVERSITY_SHARE = 0.5       # final diversity at least half way from its t = 0 value to the ideal
DIVERSITY_MEASURABLE = 0.02  # below this gain of the ideal over the start there is nothing to learn


@dataclass
class Check:
    """One row of a report: a measured value against a threshold (``passed`` None: informational;
    ``applies`` False: the claim has nothing to test in this model, shown as N/A, never failing)."""

    name: str
    value: object
    threshold: str
    passed: bool | None
    claim: str
    applies: bool = True


# ---- the checks ---------------------------------------------------------------------------------
def check_convergence(final_loss: float, oracle_loss: float, tol: float = CONVERGENCE_TOL) -> Check:
    """The exact loss can only approach the oracle's from above; below it (beyond round-off)
    something is wrong, so the check is two-sided."""
    ratio = final_loss / oracle_loss if oracle_loss > 0 else np.inf
    ok = bool(abs(final_loss - oracle_loss) <= tol * oracle_loss + 1e-15)
    return Check("global convergence", f"exact loss {final_loss:.6g} = {ratio:.4f} x oracle {oracle_loss:.6g}",
                 f"within {tol:.0%} of the oracle", ok,
                 "gradient flow reaches near-optimal loss (the area-wide predictor)")


def check_area_wide(target: np.ndarray, ceiling: np.ndarray, eps: float) -> Check:
    frac = target_fraction(target, ceiling)[ceiling > 0]      # single-patch areas have no target
    if frac.size == 0:
        return Check("area-wide attention", "every area is a single patch", f">= {1 - eps:g}", True,
                     "not applicable: no query has another patch in its area", applies=False)
    worst = float(np.min(frac))
    return Check("area-wide attention", f"min target/ceiling {worst:.4f}", f">= {1 - eps:g}",
                 bool(worst >= 1 - eps),
                 "every masked query concentrates on the unmasked patches of its own area")


def check_phase_order(T1: np.ndarray, T2: np.ndarray, T3: np.ndarray, is_local: np.ndarray,
                      ceiling: np.ndarray | None = None) -> Check:
    """The phases of the local queries come in order: median T1 < median T2 < median T3 over the
    local queries with a target (the medians every report shows, ``summarize``; a phase not
    reached by half of them or more has no median and fails). How many queries are ordered one
    by one is reported beside it: on irregular layouts a few queries decouple together with
    (or just after) their target's growth, which the medians do not hide (docs/model.md s. 5)."""
    # T1 over every local query (each has a larger area to decouple from), T2 and T3 over those
    # with a target (a single-patch area has none to grow), as ``summarize`` takes them
    with_target = is_local & (ceiling > 0) if ceiling is not None else is_local
    n = int(with_target.sum())
    if n == 0:
        if not np.any(is_local):
            return Check("phase ordering (local)", "no local queries", "median T1 < T2 < T3", True,
                         "not applicable: every area is its cluster's largest", applies=False)
        return Check("phase ordering (local)", "no local query has a target", "median T1 < T2 < T3", True,
                     "not applicable: every local query's area is a single patch", applies=False)
    m1, m2, m3 = median_time(T1[is_local]), median_time(T2[with_target]), median_time(T3[with_target])
    ordered = (T1 < T2) & (T2 < T3)          # NaN compares False: unreached phases fail
    good = int(np.sum(ordered & with_target))
    value = (f"median T1 {m1:.4g}, T2 {m2:.4g}, T3 {m3:.4g} (NaN: not reached by half); "
             f"{good}/{n} local queries ordered one by one")
    return Check("phase ordering (local)", value, "median T1 < T2 < T3 over local queries",
                 bool(m1 < m2 < m3),
                 "global FP correlations decouple (T1) before the target local one grows (T2, T3)")


def check_monotone(loss: np.ndarray, tol: float = MONOTONE_TOL) -> Check:
    rise = float(np.max(np.diff(loss)) / abs(loss[0])) if loss.size > 1 else 0.0
    return Check("monotone loss", f"max relative rise {rise:.2e}", f"<= {tol:g}", bool(rise <= tol),
                 "the loss decreases along the gradient flow")


def check_diversity(diversity: np.ndarray, ideal: float, share: float = DIVERSITY_SHARE,
                    n_patches: int | None = None) -> Check:
    """Diversity must cover ``share`` of the way from its start to that of the ideal area-wide
    attention (which is small when one area dominates: a fixed gain would be unreachable). When
    the ideal is hardly more diverse than the start (by less than 0.02, or than the 2/(P-1) that
    queries get from merely not attending to themselves), there is nothing to check."""
    d0, d1 = float(diversity[0]), float(diversity[-1])
    floor = max(DIVERSITY_MEASURABLE, 0.0 if n_patches is None else 2.0 / max(n_patches - 1, 1))
    if ideal - d0 < floor:
        return Check("attention diversity", f"{d0:.4f} -> {d1:.4f} (area-wide ideal {ideal:.4f})",
                     f"ideal >= initial + {DIVERSITY_MEASURABLE:g}", True,
                     "not applicable: the area-wide ideal is hardly more diverse than the start", applies=False)
    need = d0 + share * (ideal - d0)
    return Check("attention diversity", f"{d0:.4f} -> {d1:.4f} (area-wide ideal {ideal:.4f})",
                 f"final >= {need:.4f}, {share:.0%} of the way to the ideal", bool(d1 >= need),
                 "patches learn diverse local attention patterns, not one collapsed map")


def check_monte_carlo(max_error: float, tol: float) -> Check:
    return Check("Monte Carlo agreement", f"max |area attention error| {max_error:.4f}", f"<= {tol:g}",
                 bool(max_error <= tol), "SGD-trained transformers follow the gradient flow")


def _descent_record(sol) -> np.ndarray:
    """The losses to check for monotone descent: those the gradient pass computed at every step of
    the integrator where it left them (exact evaluations), else the loss at the output times."""
    if sol.step_loss is not None and np.isfinite(sol.step_loss).sum() >= 2:
        return sol.step_loss[np.isfinite(sol.step_loss)]
    return sol.loss


@dataclass(repr=False)
class Report:
    """Result of :func:`verify`: named checks and informational rows."""

    checks: list
    info: list

    def __repr__(self) -> str:
        failed = [c.name for c in self.checks if not c.passed]
        verdict = "all passed" if not failed else f"failed: {', '.join(failed)}"
        return f"<gradflow.Report {len(self.checks)} checks, {verdict}; .table() for the values>"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> str:
        w = max(len(c.name) for c in self.checks + self.info)
        lines = []
        for c in self.checks:
            mark = "N/A " if not c.applies else ("PASS" if c.passed else "FAIL")
            lines.append(f"{mark}  {c.name:<{w}}  {c.value}  (needs {c.threshold})\n      {'':<{w}}  {c.claim}")
        lines.append("")
        for c in self.info:
            lines.append(f"info  {c.name:<{w}}  {c.value}")
        lines.append("")
        skipped = sum(not c.applies for c in self.checks)
        lines.append(("all checks passed" if self.passed else f"{sum(not c.passed for c in self.checks)} check(s) failed")
                     + (f" ({skipped} not applicable)" if skipped else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks],
                "info": [asdict(c) for c in self.info]}


def verify(model: DataModel, *, t_max: float | None = None, method: str = "exact", mc: dict | None = None,
           eps: float = 0.05, max_wall_time: float | None = None) -> Report:
    """Solve ``model`` and check the paper's claims.

    Parameters
    ----------
    model : DataModel
    t_max : float, optional
        Length of the flow; default: until it has converged (``solve(t_max=None)``). A run too
        short to converge fails the convergence checks.
    method : {"exact", "meanfield"}
    mc : dict, optional
        ``dict(steps=..., lr=..., batch_size=..., seeds=..., tol=0.05)``: also train Monte-Carlo
        transformers and check they follow the flow (``lr * steps`` must not exceed ``t_max``).
    eps : float
        Tolerance of the area-wide check and of T3.
    max_wall_time : float, optional
        Seconds the flow may take (``solve``'s budget); a flow stopped by it fails the checks.

    Returns
    -------
    Report
    """
    instance("model", model, DataModel)
    sol = solve(model, t_max, method=method, max_wall_time=max_wall_time)
    ph = phases(sol, eps)
    div = attention_diversity(sol, at=[0, -1])        # the check compares the start and the end
    oracle = area_oracle_loss(model)
    # the oracle bounds the exact loss; a mean-field flow is judged by the exact loss of its state
    final_exact = sol.loss_at(-1) if method == "exact" else loss(sol.states[-1], "exact")
    checks = [
        check_convergence(final_exact, oracle),
        check_area_wide(sol.target_attention[-1], model.ceiling(), eps),
        check_phase_order(ph.T1, ph.T2, ph.T3, ph.is_local, ph.ceiling),
        check_monotone(_descent_record(sol)),
        check_diversity(div, ideal_diversity(model), n_patches=model.n_patches),
    ]
    if mc is not None:
        mc = dict(mc)
        tol = float(mc.pop("tol", 0.05))
        seeds = mc.pop("seeds", [0])
        seeds = range(seeds) if isinstance(seeds, int) else seeds
        runs = [train_transformer(model, seed=s, **mc) for s in seeds]
        checks.append(check_monte_carlo(compare(sol, runs)["target_attention"].max_abs_error, tol))
    if sol.status < 0:
        checks.append(Check("integration", sol.message, "status 0", False,
                            "the flow must reach its end (t_max, or convergence when t_max is None); it stopped early"))

    loc = ph.is_local
    info = [
        Check("final correlations", f"max |A| (FP) {np.abs(sol.A_classes[-1]).max():.4g}, "
              f"max |B| (PP) {np.abs(sol.B_classes[-1]).max():.4g}", "", None, ""),
    ]
    if loc.any():
        d0, t0 = ph.distractor[0][loc], ph.target[0][loc]
        gap = float(np.mean(d0 - t0))
        info.append(Check("initial masses (local)", f"distractor {np.mean(d0):.4g} vs target {np.mean(t0):.4g}: "
                          f"information gap {'positive' if gap > 0 else 'non-positive'} ({gap:+.4g})", "", None, ""))
    for group in summarize(ph).groups.values():
        info.append(Check(f"phase times ({group.name})", group.line().split(": ", 1)[1] + " (median)", "", None, ""))
    length = (f"to t = {sol.t[-1]:g} of t_max {t_max:g}" if t_max is not None else "until converged") + f": {sol.message}"
    info.append(Check("flow", f"{length}, method {method}, {sol.nfev} gradient evaluations, "
                      f"{sol.wall_time:.2f} s", "", None, ""))
    return Report(checks=checks, info=info)
