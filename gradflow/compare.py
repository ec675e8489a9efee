"""Theory versus simulation: the gradient flow against Monte-Carlo trained transformers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .montecarlo import TrainRun
from .solver import Solution, observe

BAND_SIGMAS = 2.0   # the seed band is the MC mean +- 2 standard deviations across seeds


@dataclass
class ObservableComparison:
    """One observable along the runs' record times.

    flow, mc_mean, mc_std, abs_error have shape (T, ...); ``in_band`` says where the flow lies
    within mean +- 2 std across seeds (None with a single run, when there is no band).
    """

    name: str
    flow: np.ndarray
    mc_mean: np.ndarray
    mc_std: np.ndarray
    abs_error: np.ndarray
    in_band: np.ndarray | None

    @property
    def max_abs_error(self) -> float:
        return float(np.nanmax(self.abs_error))

    @property
    def mean_abs_error(self) -> float:
        return float(np.nanmean(self.abs_error))

    @property
    def band_fraction(self) -> float:
        """Fraction of (time, query) points where the flow is inside the seed band."""
        return float("nan") if self.in_band is None else float(np.mean(self.in_band))


@dataclass
class Comparison:
    """Result of :func:`compare`: per observable, the flow against the MC mean over seeds."""

    t: np.ndarray
    n_runs: int
    observables: dict

    def __getitem__(self, name: str) -> ObservableComparison:
        return self.observables[name]

    def ok(self, tol: float = 0.05) -> bool:
        """True when the MC mean area attention stays within ``tol`` of the flow at every
        record time and query."""
        return self.observables["area_attention"].max_abs_error <= tol

    def table(self) -> str:
        head = f"{'observable':<16}{'max |err|':>11}{'mean |err|':>12}{'max MC std':>12}{'in band':>9}"
        lines = [f"flow versus {self.n_runs} Monte-Carlo run(s), {self.t.size} record times up to t = {self.t[-1]:g}",
                 head, "-" * len(head)]
        for ob in self.observables.values():
            band = "n/a" if ob.in_band is None else f"{100 * ob.band_fraction:.0f}%"
            lines.append(f"{ob.name:<16}{ob.max_abs_error:>11.4f}{ob.mean_abs_error:>12.4f}"
                         f"{np.nanmax(ob.mc_std):>12.4f}{band:>9}")
        return "\n".join(lines)


def _target_fp(model, A):
    """(T, K, P) correlation of every position with the feature of its own area, per cluster."""
    out = np.empty(A.shape[:1] + (model.n_clusters, model.n_patches))
    idx = np.arange(model.n_patches)
    for k, cl in enumerate(model.clusters):
        out[:, k] = A[:, idx, model.feature_index(k, 0) + cl.areas]
    return out


def _compare_one(name, flow, samples):
    mean = samples.mean(axis=0)
    n = samples.shape[0]
    std = samples.std(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)
    err = np.abs(mean - flow)
    in_band = None if n < 2 else err <= BAND_SIGMAS * std + 1e-12
    return ObservableComparison(name, flow, mean, std, err, in_band)


def compare(solution: Solution, runs) -> Comparison:
    """Compare a gradient-flow solution with one or several Monte-Carlo runs.

    Parameters
    ----------
    solution : Solution
        From :func:`gradflow.solve` on the same model, reaching at least the runs' last time.
    runs : TrainRun or sequence of TrainRun
        Runs with the same record times (typically the same arguments, different seeds).

    Returns
    -------
    Comparison
        Observables "area_attention" (T, K, P), "target_fp" (T, K, P) (A[p, f(k, area_k(p))])
        and "loss" (T,) (the MC loss averaged over each record interval against the flow loss at
        the interval's midpoint; NaN at t = 0).
    """
    if isinstance(runs, TrainRun):
        runs = [runs]
    runs = list(runs)
    if not runs or not all(isinstance(r, TrainRun) for r in runs):
        raise ValueError(f"runs must be a TrainRun or a non-empty sequence of them, got {runs!r}")
    if not isinstance(solution, Solution):
        raise ValueError(f"solution must be a Solution, got {type(solution).__name__}")
    t = runs[0].t
    for r in runs[1:]:
        if not np.array_equal(r.t, t):
            raise ValueError("runs must share their record times t (same lr, steps, record_every)")
    spec = solution.model.to_dict()
    for r in runs:
        if r.model.to_dict() != spec:
            raise ValueError("runs must be trained on the solution's model")
    if t[-1] > solution.t[-1] * (1 + 1e-12):
        raise ValueError(f"solution reaches t={solution.t[-1]:g}, the runs go to t={t[-1]:g}")

    red, method = solution.reduction, solution.method
    ys = np.stack([solution._dense(ti) for ti in np.minimum(t, solution.t[-1])])
    _, target = observe(red, method, ys)
    flow_att = target[:, :, red.class_of]
    A_cls, B_cls, B_self = red.unpack(ys)
    flow_fp = _target_fp(solution.model, red.expand(A_cls, B_cls, B_self)[0])
    mid = np.concatenate([[0.0], 0.5 * (t[1:] + t[:-1])])
    flow_loss, _ = observe(red, method, np.stack([solution._dense(ti) for ti in mid]))
    flow_loss[0] = np.nan

    obs = {
        "area_attention": _compare_one("area_attention", flow_att,
                                       np.stack([r.area_attention for r in runs])),
        "target_fp": _compare_one("target_fp", flow_fp,
                                  np.stack([_target_fp(r.model, r.A) for r in runs])),
        "loss": _compare_one("loss", flow_loss, np.stack([r.loss for r in runs])),
    }
    return Comparison(t=t, n_runs=len(runs), observables=obs)
