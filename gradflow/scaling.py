"""How the phase times grow with the number of patches: fits of log T against log P."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .observables import phases
from .presets import PRESETS, preset_model
from .solver import solve

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
    from scipy import stats     # imported here: scipy.stats alone costs ~0.3 s of import time
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


def phase_scaling(preset_fn, Ps, *, t_max: float | None = None, method: str = "exact",
                  eps: float = 0.05, **kw) -> ScalingResult:
    """Solve a preset family over P and fit log T against log P for T1, T2, T3.

    Parameters
    ----------
    preset_fn : callable or str
        ``preset_fn(P, **kw)`` returns a DataModel, or a preset name (``presets.preset_model``:
        "global_local", or "balanced" on a sqrt(P) x sqrt(P) grid of four areas).
    Ps : sequence of int
    t_max : float, optional
        Length of every flow; default: grown tenfold from 1e3 until every query reaches T3.
    method, eps : as in ``solve`` and ``phases``.
    **kw : passed to ``preset_fn``.
    """
    if isinstance(preset_fn, str):
        name = preset_fn
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        preset_fn = lambda P, **kwargs: preset_model(name, P, **kwargs)   # noqa: E731
    Ps = list(Ps)
    if len(Ps) < 2 or any(isinstance(P, bool) or not isinstance(P, (int, np.integer)) or P < 1 for P in Ps) \
            or len(set(Ps)) != len(Ps):
        raise ValueError(f"Ps must hold at least two distinct positive integers, got {Ps!r}")
    Ps = np.asarray(Ps, dtype=np.int64)
    names = ("T1", "T2", "T3")
    times = {n: np.full(Ps.size, np.nan) for n in names}
    which = "local"
    for i, P in enumerate(Ps):
        model = preset_fn(int(P), **kw)
        horizon = T_MAX_START if t_max is None else float(t_max)
        while True:
            ph = phases(solve(model, horizon, method=method), eps)
            if t_max is not None or np.all(np.isfinite(ph.T3)) or horizon >= T_MAX_LIMIT:
                break
            horizon *= 10.0
        sel = ph.is_local if ph.is_local.any() else np.ones_like(ph.is_local)
        if not ph.is_local.any():
            which = "all"
        for n in names:
            vals = getattr(ph, n)[sel]
            times[n][i] = np.nanmedian(vals) if np.isfinite(vals).any() else np.nan
    slopes, intervals = {}, {}
    for n in names:
        slopes[n], intervals[n] = fit_power_law(Ps, times[n])
    return ScalingResult(Ps=Ps, times=times, slopes=slopes, intervals=intervals, which=which)
