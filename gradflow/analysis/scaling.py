"""How the phase times grow with the number of patches: local slopes of log T against log P,
and a power law T ~ P^slope fitted only where it holds.

A power law is a straight line in log-log axes, i.e. a constant local slope d log T / d log P.
Over the sizes one can sample, the phase times of ``global_local`` are not straight lines: the
slope of T2 and T3 keeps rising with P before it settles. So ``phase_scaling`` reports the local
slopes between neighbouring sizes and fits the law only on the range the criterion of
:func:`power_law_range` selects (the largest-P points over which the local slope has settled);
where no such range exists it fits nothing and says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import is_int, positive_int, positive_real
from ..errors import InvalidInputError
from ..flow.phase_times import PHASE_NAMES, phases, summarize
from ..flow.solver import default_times, solve
from ..model.presets import preset

T_MAX_START = 1e3
T_MAX_LIMIT = 1e9
SLOPE_TOL = 0.05        # local slopes within this of each other count as one power law
MIN_FIT_POINTS = 3      # a line through two points says nothing about the law it claims
# Phase times are read by linear interpolation between output times (docs/model.md section 5);
# 20 outputs per decade (solve's default) leave reading errors of up to 3% in T2 and T3, which
# move the local slope between neighbouring sizes by up to 0.1. At 200 per decade the error is
# below 0.2% (checked against 400 per decade), so local slopes are good to about 0.01.
OUTPUTS_PER_DECADE = 200


@dataclass
class ScalingResult:
    """Phase times (median over local queries, or over all queries when none is local) per P
    (ascending), their local slopes, and the power law fitted where it holds.

    ``local_slopes[name][i]`` is d log T / d log P between ``Ps[i]`` and ``Ps[i + 1]``.
    ``fit_start[name]`` is the index of the first P of the fitted range (the range runs to the
    largest P), or None when no range passes ``power_law_range``; then ``slopes[name]`` and
    ``intervals[name]`` are NaN.
    """

    Ps: np.ndarray
    times: dict            # name -> (len(Ps),) phase time
    local_slopes: dict     # name -> (len(Ps) - 1,) local slope between neighbouring sizes
    fit_start: dict        # name -> first index of the fitted range, or None
    slopes: dict           # name -> fitted exponent on the fitted range (NaN without one)
    intervals: dict        # name -> (low, high) 95% confidence interval (NaN with < 3 points)
    intercepts: dict       # name -> log T at P = 1 of the fitted law (NaN without one)
    which: str             # "local" or "all" queries
    tol: float = SLOPE_TOL

    def fitted(self, name: str, P) -> np.ndarray:
        """The fitted law T = exp(intercept) P^slope at ``P`` (NaN without a fitted range)."""
        return np.exp(self.intercepts[name] + self.slopes[name] * np.log(np.asarray(P, float)))

    def fit_range(self, name: str) -> tuple | None:
        """(smallest P, largest P) of the range the law for ``name`` was fitted on, or None."""
        i = self.fit_start[name]
        return None if i is None else (int(self.Ps[i]), int(self.Ps[-1]))

    def table(self) -> str:
        names, w = list(self.times), 15

        def ci(n):
            lo, hi = self.intervals[n]
            return f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "-"

        head = f"{'P':>8}" + "".join(f"{n:>{w}}" for n in names) + "    local slope from the previous P"
        lines = [f"phase times versus P (median over {self.which} queries)", head.rstrip(), "-" * len(head)]
        for i, P in enumerate(self.Ps):
            row = f"{P:>8d}" + "".join(f"{self.times[n][i]:>{w}.4g}" for n in names)
            if i > 0:
                row += "   " + "".join(f"{n} {self.local_slopes[n][i - 1]:<7.3f}" if np.isfinite(self.local_slopes[n][i - 1])
                                       else f"{n} {'-':<7}" for n in names)
            lines.append(row.rstrip())
        lines.append("-" * len(head))
        lines.append(f"{'slope':>8}" + "".join(
            f"{self.slopes[n]:>{w}.3f}" if np.isfinite(self.slopes[n]) else f"{'-':>{w}}" for n in names))
        lines.append(f"{'95% CI':>8}" + "".join(f"{ci(n):>{w}}" for n in names))
        lines.append(f"{'fit on':>8}" + "".join(
            f"{'P >= %d' % self.fit_range(n)[0] if self.fit_range(n) else 'none':>{w}}" for n in names))
        lines.append(f"(the law is fitted where the local slopes of the largest-P points agree within "
                     f"{self.tol:g}, at least {MIN_FIT_POINTS} points; 'none' and '-': the slope has not settled or a time is missing)")
        return "\n".join(lines)


def _fit_line(x, y):
    """(slope, intercept, (low, high)) of log y = intercept + slope log x, least squares, with
    the slope's 95% confidence interval (NaN with fewer than 3 finite points)."""
    from scipy import (
        stats,  # imported here: scipy.stats alone costs ~0.3 s of import time
    )
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    ok = np.isfinite(ly)
    lx, ly = lx[ok], ly[ok]
    if lx.size < 2:
        return np.nan, np.nan, (np.nan, np.nan)
    fit = stats.linregress(lx, ly)
    if lx.size < 3:
        return float(fit.slope), float(fit.intercept), (np.nan, np.nan)
    half = stats.t.ppf(0.975, lx.size - 2) * fit.stderr
    return float(fit.slope), float(fit.intercept), (float(fit.slope - half), float(fit.slope + half))


def fit_power_law(x, y):
    """Least-squares slope of log y against log x with its 95% confidence interval."""
    slope, _, interval = _fit_line(x, y)
    return slope, interval


def local_slopes(x, y) -> np.ndarray:
    """d log y / d log x between neighbouring points (NaN where a y is not finite)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return np.diff(ly) / np.diff(lx)


def power_law_range(x, y, tol: float = SLOPE_TOL, min_points: int = MIN_FIT_POINTS) -> int | None:
    """Where a power law y ~ x^s holds: the first index of the longest run of largest-x points
    whose local slopes (between neighbours) all lie within ``tol`` of each other.

    The law is sought at the large-x end because that is the asymptotic regime the exponent
    describes. Returns None when fewer than ``min_points`` points qualify (the slope is still
    changing across every such tail, or the largest-x values are not finite).

    Parameters
    ----------
    x : array_like
        Increasing positive values (e.g. the numbers of patches).
    y : array_like
        Positive values; NaN (e.g. a phase not reached) ends the run.
    tol : float
        Largest spread (max - min) of the local slopes inside the range.
    min_points : int
        Fewest points a fitted range may have (at least 2).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.ndim != 1 or x.shape != y.shape or np.any(np.diff(x) <= 0) or np.any(x <= 0):
        raise InvalidInputError(f"x must be increasing positive values and y of the same shape, got {x!r}, {y!r}")
    tol = positive_real("tol", tol)
    min_points = positive_int("min_points", min_points)
    if min_points < 2:
        raise InvalidInputError(f"min_points must be at least 2, got {min_points}")
    s = local_slopes(x, np.where(y > 0, y, np.nan))
    if not (np.isfinite(y[-1]) and y[-1] > 0):
        return None
    start = x.size - 1                       # the run is Ps[start:]; grow it leftwards
    lo = hi = None
    while start > 0 and np.isfinite(s[start - 1]):
        v = s[start - 1]
        new_lo, new_hi = (v, v) if lo is None else (min(lo, v), max(hi, v))
        if new_hi - new_lo > tol:
            break
        lo, hi, start = new_lo, new_hi, start - 1
    return start if x.size - start >= min_points else None


def _phases_until_reached(model, t_max, method, eps, per_decade):
    """Phases of a flow to ``t_max``; without one, grown tenfold from 1e3 until every query
    reaches T3 (or 1e9)."""
    horizon = T_MAX_START if t_max is None else float(t_max)
    while True:
        sol = solve(model, horizon, method=method, t_eval=default_times(horizon, per_decade))
        ph = phases(sol, eps)
        if t_max is not None or np.all(np.isfinite(ph.T3[ph.ceiling > 0])) or horizon >= T_MAX_LIMIT:
            return ph
        horizon *= 10.0


def phase_scaling(preset_fn, Ps, *, t_max: float | None = None, method: str = "exact",
                  eps: float = 0.05, tol: float = SLOPE_TOL, per_decade: int = OUTPUTS_PER_DECADE,
                  **options) -> ScalingResult:
    """Solve a preset family over P, and fit log T against log P for T1, T2, T3 where the law holds.

    Parameters
    ----------
    preset_fn : str or callable
        A preset name (``gradflow.presets.preset(name, P=P, **options)``) or a function
        ``preset_fn(P=P, **options)`` returning a DataModel.
    Ps : sequence of int
        At least two distinct sizes (reported in ascending order).
    t_max : float, optional
        Length of every flow; default: grown tenfold from 1e3 until every query reaches T3.
    method, eps : as in ``solve`` and ``phases``.
    tol : float
        Criterion of
        ``gradflow.analysis.scaling.power_law_range``: the fitted range is the longest tail of largest
        sizes (at least 3) whose local slopes agree within ``tol``.
    per_decade : int
        Output times per decade of t from which the phase times are read (see
        ``OUTPUTS_PER_DECADE``).
    **options : passed to the preset.
    """
    build = (lambda P: preset(preset_fn, P=P, **options)) if isinstance(preset_fn, str) \
        else (lambda P: preset_fn(P=P, **options))
    Ps = list(Ps)
    if len(Ps) < 2 or any(not is_int(P) or P < 1 for P in Ps) or len(set(Ps)) != len(Ps):
        raise InvalidInputError(f"Ps must hold at least two distinct positive integers, got {Ps!r}")
    tol = positive_real("tol", tol)
    per_decade = positive_int("per_decade", per_decade)
    Ps = np.sort(np.asarray(Ps, dtype=np.int64))
    times = {n: np.full(Ps.size, np.nan) for n in PHASE_NAMES}
    which = "local"
    for i, P in enumerate(Ps):
        summary = summarize(_phases_until_reached(build(int(P)), t_max, method, eps, per_decade))
        which = summary.primary
        for n in PHASE_NAMES:
            times[n][i] = summary.time(n)
    local, start, slopes, intervals, intercepts = {}, {}, {}, {}, {}
    for n in PHASE_NAMES:
        local[n] = local_slopes(Ps, times[n])
        start[n] = power_law_range(Ps, times[n], tol)
        if start[n] is None:
            slopes[n], intercepts[n], intervals[n] = np.nan, np.nan, (np.nan, np.nan)
        else:
            slopes[n], intercepts[n], intervals[n] = _fit_line(Ps[start[n]:], times[n][start[n]:])
    return ScalingResult(Ps=Ps, times=times, local_slopes=local, fit_start=start, slopes=slopes,
                         intervals=intervals, intercepts=intercepts, which=which, tol=tol)
