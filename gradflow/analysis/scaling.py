"""How the phase times grow with the number of patches: fits of log T against log P."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import is_int
from ..errors import InvalidInputError
from ..flow.phase_times import PHASE_NAMES, phases, summarize
from ..flow.solver import solve
from ..model.presets import preset

T_MAX_START = 1e3
T_MAX_LIMIT = 1e9


@dataclass
class ScalingResult:
    """Phase times (median over local queries, or over all queries when none is local) per P,
    and the fitted exponents of T ~ P^slope with 95% confidence intervals."""

    Ps: np.ndarray
    times: dict            # name -> (len(Ps),) phase time
    slopes: dict           # name -> fitted exponent
    intervals: dict        # name -> (low, high) 95% confidence interval (NaN with < 3 points)
    which: str             # "local" or "all" queries

    def table(self) -> str:
        head = f"{'P':>8}" + "".join(f"{n:>15}" for n in self.times)
        lines = [f"phase times versus P (median over {self.which} queries)", head, "-" * len(head)]
        for i, P in enumerate(self.Ps):
            lines.append(f"{P:>8d}" + "".join(f"{self.times[n][i]:>15.4g}" for n in self.times))
        lines.append("-" * len(head))
        lines.append(f"{'slope':>8}" + "".join(f"{self.slopes[n]:>15.3f}" for n in self.times))
        lines.append(f"{'95% CI':>8}" + "".join(
            f"{'[%.2f, %.2f]' % self.intervals[n]:>15}" for n in self.times))
        return "\n".join(lines)


def fit_power_law(x, y):
    """Least-squares slope of log y against log x with its 95% confidence interval."""
    from scipy import (
        stats,  # imported here: scipy.stats alone costs ~0.3 s of import time
    )
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    ok = np.isfinite(ly)
    lx, ly = lx[ok], ly[ok]
    if lx.size < 2:
        return np.nan, (np.nan, np.nan)
    fit = stats.linregress(lx, ly)
    if lx.size < 3:
        return float(fit.slope), (np.nan, np.nan)
    half = stats.t.ppf(0.975, lx.size - 2) * fit.stderr
    return float(fit.slope), (float(fit.slope - half), float(fit.slope + half))


def _phases_until_reached(model, t_max, method, eps):
    """Phases of a flow to ``t_max``; without one, grown tenfold from 1e3 until every query
    reaches T3 (or 1e9)."""
    horizon = T_MAX_START if t_max is None else float(t_max)
    while True:
        ph = phases(solve(model, horizon, method=method), eps)
        if t_max is not None or np.all(np.isfinite(ph.T3[ph.ceiling > 0])) or horizon >= T_MAX_LIMIT:
            return ph
        horizon *= 10.0


def phase_scaling(preset_fn, Ps, *, t_max: float | None = None, method: str = "exact",
                  eps: float = 0.05, **options) -> ScalingResult:
    """Solve a preset family over P and fit log T against log P for T1, T2, T3.

    Parameters
    ----------
    preset_fn : str or callable
        A preset name (``gradflow.presets.preset(name, P=P, **options)``) or a function
        ``preset_fn(P=P, **options)`` returning a DataModel.
    Ps : sequence of int
    t_max : float, optional
        Length of every flow; default: grown tenfold from 1e3 until every query reaches T3.
    method, eps : as in ``solve`` and ``phases``.
    **options : passed to the preset.
    """
    build = (lambda P: preset(preset_fn, P=P, **options)) if isinstance(preset_fn, str) \
        else (lambda P: preset_fn(P=P, **options))
    Ps = list(Ps)
    if len(Ps) < 2 or any(not is_int(P) or P < 1 for P in Ps) or len(set(Ps)) != len(Ps):
        raise InvalidInputError(f"Ps must hold at least two distinct positive integers, got {Ps!r}")
    Ps = np.asarray(Ps, dtype=np.int64)
    times = {n: np.full(Ps.size, np.nan) for n in PHASE_NAMES}
    which = "local"
    for i, P in enumerate(Ps):
        summary = summarize(_phases_until_reached(build(int(P)), t_max, method, eps))
        which = summary.primary
        for n in PHASE_NAMES:
            times[n][i] = summary.time(n)
    slopes, intervals = {}, {}
    for n in PHASE_NAMES:
        slopes[n], intervals[n] = fit_power_law(Ps, times[n])
    return ScalingResult(Ps=Ps, times=times, slopes=slopes, intervals=intervals, which=which)
