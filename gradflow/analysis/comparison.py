"""Theory versus simulation: the gradient flow against Monte-Carlo trained transformers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import positive_real
from ..errors import InvalidInputError
from ..flow.observables import target_attention_along
from ..flow.solution import Solution
from ..theory.population import loss
from ..theory.state import State
from ..training.run import TrainRun

BAND_SIGMAS = 2.0   # the seed band is the MC mean +- 2 standard deviations across seeds


@dataclass(repr=False)
class ObservableComparison:
    """One observable along the runs' record times.

    flow, mc_mean, mc_std, abs_error have shape (T, ...); ``in_band`` says where the flow lies
    within mean +- 2 std across seeds (None with a single run, when there is no band). Record
    times outside the flow's span are NaN in ``flow`` and ``abs_error``.
    """

    name: str
    flow: np.ndarray
    mc_mean: np.ndarray
    mc_std: np.ndarray
    abs_error: np.ndarray
    in_band: np.ndarray | None

    @property
    def max_abs_error(self) -> float:
        return float(np.nanmax(self.abs_error)) if np.isfinite(self.abs_error).any() else np.nan

    def __repr__(self) -> str:
        return (f"<ObservableComparison {self.name} {self.flow.shape}: max |err| {self.max_abs_error:.4g}, "
                f"mean |err| {self.mean_abs_error:.4g}>")

    @property
    def mean_abs_error(self) -> float:
        return float(np.nanmean(self.abs_error)) if np.isfinite(self.abs_error).any() else np.nan

    @property
    def band_fraction(self) -> float:
        """Fraction of compared (time, query) points where the flow is inside the seed band."""
        if self.in_band is None:
            return float("nan")
        compared = np.isfinite(self.abs_error)
        return float(np.mean(self.in_band[compared])) if compared.any() else float("nan")


@dataclass(repr=False)
class Comparison:
    """Result of :func:`compare`: per observable, the flow against the MC mean over seeds."""

    t: np.ndarray
    n_runs: int
    observables: dict
    outside: int = 0         # record times outside the flow's span (not compared)

    def __getitem__(self, name: str) -> ObservableComparison:
        return self.observables[name]

    def ok(self, tol: float = 0.05) -> bool:
        """True when the MC mean target attention stays within ``tol`` of the flow at every
        compared record time and query."""
        tol = positive_real("tol", tol)
        return bool(self.observables["target_attention"].max_abs_error <= tol)

    def __repr__(self) -> str:
        return (f"<gradflow.Comparison of {self.n_runs} run(s) at {self.t.size} record times, observables "
                f"{', '.join(self.observables)}; .table() for the errors>")

    def table(self) -> str:
        head = f"{'observable':<18}{'max |err|':>11}{'mean |err|':>12}{'max MC std':>12}{'in band':>9}"
        lines = [f"flow versus {self.n_runs} Monte-Carlo run(s), {self.t.size} record times up to t = {self.t[-1]:g}",
                 head, "-" * len(head)]
        for ob in self.observables.values():
            band = "n/a" if ob.in_band is None else f"{100 * ob.band_fraction:.0f}%"
            lines.append(f"{ob.name:<18}{ob.max_abs_error:>11.4f}{ob.mean_abs_error:>12.4f}"
                         f"{np.nanmax(ob.mc_std):>12.4f}{band:>9}")
        if self.outside:
            lines.append(f"({self.outside} record time(s) outside the flow's span were not compared)")
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


def _check_runs(solution, runs) -> list:
    if isinstance(runs, TrainRun):
        runs = [runs]
    runs = list(runs)
    if not runs or not all(isinstance(r, TrainRun) for r in runs):
        raise InvalidInputError(f"runs must be a TrainRun or a non-empty sequence of them, got {runs!r}")
    if not isinstance(solution, Solution):
        raise InvalidInputError(f"solution must be a Solution, got {type(solution).__name__}")
    t = runs[0].t
    for r in runs[1:]:
        if not np.array_equal(r.t, t):
            raise InvalidInputError("runs must share their record times t (same lr, steps, record_every)")
    for r in runs:
        if r.model != solution.model:
            raise InvalidInputError("runs must be trained on the solution's model")
    if t[-1] > solution.t[-1] * (1 + 1e-12):
        raise InvalidInputError(f"solution reaches t={solution.t[-1]:g}, the runs go to t={t[-1]:g}")
    return runs


def _flow_at(solution: Solution, times: np.ndarray) -> tuple[np.ndarray, State | None]:
    """(inside, states): which times lie in the flow's span, and its states there."""
    lo, hi = solution.dense_range()
    inside = (times >= lo) & (times <= hi * (1 + 1e-12))
    if not inside.any():
        return inside, None
    ys = np.stack([solution._dense(ti) for ti in np.minimum(times[inside], hi)])
    return inside, State.from_flat(solution.reduction, ys)


# Gauss-Legendre rule on [0, 1] for the flow's mean loss over a record interval
_GL_X, _GL_W = np.polynomial.legendre.leggauss(6)
_GL_X, _GL_W = 0.5 * (_GL_X + 1.0), 0.5 * _GL_W


def _flow_interval_losses(solution: Solution, t: np.ndarray, step: np.ndarray) -> np.ndarray:
    """(T,) the flow's loss averaged the way a run records its loss: the mean of the batch losses
    of the steps since the previous record, each taken at the state before its step (t = lr k
    for steps k = s_{i-1} .. s_i - 1). That mean is the flow's loss averaged over
    [t_{i-1} - lr/2, t_i - lr/2] (midpoint rule), taken here by a 6-point Gauss-Legendre rule;
    the half step before t = 0 counts at the loss of t = 0. An interval of at most 6 steps is
    averaged exactly, at each step's start. NaN at the first record and where the interval
    leaves the flow's span.
    (The flow's loss at the interval's midpoint, compared before, sits below such a mean wherever
    the loss curves upward: 0.37 against 0.57 over t = 0 .. 50 of the README's 2 x 3 model.)"""
    out = np.full(t.size, np.nan)
    lo, hi = solution.dense_range()
    for i in range(1, t.size):
        n = step[i] - step[i - 1]
        if n <= 0 or step[i] <= 0:
            continue
        lr = t[i] / step[i]
        if n <= _GL_W.size:                         # few steps: the mean itself, exactly
            starts = lr * np.arange(step[i - 1], step[i])
            if starts[0] < lo or starts[-1] > hi * (1 + 1e-12):
                continue
            out[i] = float(np.mean(_losses_at(solution, starts, hi)))
            continue
        a, b = t[i - 1] - 0.5 * lr, t[i] - 0.5 * lr
        start = max(a, 0.0)
        if start < lo or b > hi * (1 + 1e-12) or b <= start:
            continue
        values = _losses_at(solution, list(start + (b - start) * _GL_X) + ([0.0] if a < 0.0 else []), hi)
        total = (b - start) * float(np.dot(_GL_W, values[:_GL_W.size]))
        if a < 0.0:                                 # the first step's half cell before t = 0
            total += -a * values[-1]
        out[i] = total / (b - a)
    return out


def _losses_at(solution: Solution, times, hi: float) -> list:
    states = State.from_flat(solution.reduction, np.stack([solution._dense(min(x, hi)) for x in times]))
    return [loss(states[j], solution.method) for j in range(len(times))]


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
        Observables "target_attention" (T, K, P), "target_fp" (T, K, P) (A[p, f(k, area_k(p))])
        and "loss" (T,) (the MC loss averaged over each record interval against the flow's loss
        averaged over the same steps; NaN at t = 0). The flow is compared only where it is defined:
        a loaded solution that starts after t = 0 leaves earlier records out, and says so.
        Runs without projected correlations (PyTorch rungs with ``A`` None) have no "target_fp":
        it is left out, and their "target_attention" is the attention measured on their
        evaluation batch.
    """
    runs = _check_runs(solution, runs)
    t = runs[0].t
    model, reduction = solution.model, solution.reduction
    inside, states = _flow_at(solution, t)
    if states is None:
        raise InvalidInputError(f"no record time lies in the flow's span {solution.dense_range()}")
    T, K, P = t.size, model.n_clusters, model.n_patches
    flow_att = np.full((T, K, P), np.nan)
    flow_att[inside] = target_attention_along(states)[:, :, reduction.class_of]
    flow_fp = np.full((T, K, P), np.nan)
    flow_fp[inside] = _target_fp(model, states.A)
    flow_loss = _flow_interval_losses(solution, t, runs[0].step)

    obs = {"target_attention": _compare_one("target_attention", flow_att,
                                            np.stack([r.target_attention for r in runs]))}
    if all(r.A is not None for r in runs):       # feature-position correlations exist
        obs["target_fp"] = _compare_one("target_fp", flow_fp, np.stack([_target_fp(r.model, r.A) for r in runs]))
    obs["loss"] = _compare_one("loss", flow_loss, np.stack([r.loss for r in runs]))
    return Comparison(t=t, n_runs=len(runs), observables=obs, outside=int((~inside).sum()))
