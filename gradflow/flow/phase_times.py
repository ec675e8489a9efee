"""Phase times (docs/model.md section 5) and the one summary of them every report uses.

T1 (decoupling): the distractor mass, on the largest other area (all of them when several tie),
falls to half its t = 0 value.
T2: the target mass reaches half its ceiling. T3: it reaches (1 - eps) of its ceiling.
The times are read per (cluster, query position) from the same traces for a ``Solution`` and a
Monte-Carlo ``TrainRun``; :func:`summarize` turns them into the medians and counts that
``verify``, sweeps, scaling, the command line and the figures report.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import real, trajectory
from ..errors import InvalidInputError
from ..model import DataModel
from ..theory.population import attention_by_class, mass_by_area
from .observables import OBSERVABLE_METHOD, own_area, phase_traces, target_fraction

PHASE_NAMES = ("T1", "T2", "T3")


def crossing_time(t: np.ndarray, y: np.ndarray, level: float, above: bool) -> float:
    """First time y crosses ``level`` (upwards if ``above``), linearly interpolated; NaN if never."""
    hit = y >= level if above else y <= level
    idx = np.flatnonzero(hit)
    if idx.size == 0 or not np.isfinite(level):
        return np.nan
    i = idx[0]
    if i == 0:
        return float(t[0])
    y0, y1 = y[i - 1], y[i]
    frac = (level - y0) / (y1 - y0) if y1 != y0 else 1.0
    return float(t[i - 1] + frac * (t[i] - t[i - 1]))


def local_mask(model: DataModel) -> np.ndarray:
    """(K, P) True where the position's area is not (one of) its cluster's largest."""
    out = np.empty((model.n_clusters, model.n_patches), dtype=bool)
    for k, cl in enumerate(model.clusters):
        sizes = cl.area_sizes()
        out[k] = sizes[cl.areas] < sizes.max()
    return out


def largest_other_areas(model: DataModel) -> np.ndarray:
    """(K, P, N) True for the areas of the position's cluster that are the largest among the
    areas other than its own: all of them when several tie, so that no area label decides
    (N = most areas of a cluster; no area is marked when the cluster has a single area)."""
    n_max = max(cl.n_areas for cl in model.clusters)
    out = np.zeros((model.n_clusters, model.n_patches, n_max), dtype=bool)
    for k, cl in enumerate(model.clusters):
        sizes = cl.area_sizes()
        for j in range(cl.n_areas):
            others = np.where(np.arange(cl.n_areas) == j, -1, sizes)
            if cl.n_areas > 1:
                out[k, cl.areas == j, :cl.n_areas] = others == others.max()
    return out


@dataclass(repr=False)
class Phases:
    """Phase times per cluster and masked query position.

    T1, T2, T3 (K, P): NaN where not reached; T2, T3 are NaN for single-patch areas (ceiling 0:
    no target). ``is_local`` (K, P): the query's area is not its cluster's largest.
    ``target`` and ``distractor`` (T, K, P) are the traces the times were read from.
    """

    t: np.ndarray
    T1: np.ndarray
    T2: np.ndarray
    T3: np.ndarray
    is_local: np.ndarray
    ceiling: np.ndarray
    target: np.ndarray
    distractor: np.ndarray
    eps: float
    model: DataModel

    def summary(self) -> "PhaseSummary":
        """Medians and counts of the phase times, for local and global queries."""
        return summarize(self)

    def table(self) -> str:
        """One row per cluster and query class: size, area, local, ceiling, T1, T2, T3."""
        m = self.model
        head = (f"{'cluster':>7}{'class':>6}{'size':>6}{'area':>5}{'local':>6}{'ceiling':>9}"
                f"{'T1':>11}{'T2':>11}{'T3':>11}")
        lines = [f"phase times (eps = {self.eps}); '-' = not reached", head, "-" * len(head)]
        for k in range(m.n_clusters):
            for s in range(m.n_classes):
                pos = np.flatnonzero(m.class_of == s)
                p = pos[0]
                cells = [x[k, p] for x in (self.T1, self.T2, self.T3)]      # equal within a class
                lines.append(f"{k:>7}{s:>6}{pos.size:>6}{m.class_signatures[s, k]:>5}"
                             f"{'yes' if self.is_local[k, p] else 'no':>6}{self.ceiling[k, p]:>9.4f}"
                             + "".join(f"{c:>11.4g}" if np.isfinite(c) else f"{'-':>11}" for c in cells))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Phases(eps={self.eps}) of {self.model!r}\n{self.summary()}"


def _distractor_at_zero(result, distractor_areas) -> np.ndarray:
    """(K, S) distractor mass of the state at t = 0, from a Solution's dense output."""
    try:
        lo, _ = result.dense_range()
    except (AttributeError, ValueError):
        lo = None
    if lo is None or lo > 0.0:
        raise InvalidInputError(f"phases needs the state at t = 0 to measure T1, but the result starts at "
                                f"t = {result.t[0]:g}; include t = 0 in t_eval")
    unmasked = attention_by_class(result.at(0.0), OBSERVABLE_METHOD).unmasked
    return _distractor(mass_by_area(result.reduction, unmasked), distractor_areas)


def _distractor(by_area: np.ndarray, distractor_areas: np.ndarray) -> np.ndarray:
    """(..., K, S) mass on the distractor areas; NaN where the cluster has no other area."""
    has_other = distractor_areas.any(axis=-1)
    return np.where(has_other, np.sum(np.where(distractor_areas, by_area, 0.0), axis=-1), np.nan)


def phases(result, eps: float = 0.05, traces: str = "auto") -> Phases:
    """Phase times T1, T2, T3 of a ``Solution`` or a ``TrainRun`` (docs/model.md section 5).

    Parameters
    ----------
    result : Solution or TrainRun
    eps : float
        T3 is when the target mass reaches (1 - eps) of its ceiling.
    traces : {"auto", "outputs", "steps"}
        Where the attention traces are sampled: the output times, or a large exact flow's step
        ends (free; ``observables.phase_traces`` says which "auto" takes).
    """
    trajectory("result", result)
    eps = real("eps", eps, low=0.0, high=1.0, low_open=True, high_open=True)
    model = result.model
    t, (by_area, _, reduction) = phase_traces(result, traces)
    c = reduction.class_of
    K, S = reduction.n_clusters, reduction.n_classes
    rep = reduction.representative()
    distractor_areas = largest_other_areas(model)[:, rep]               # (K, S, N)
    ceiling = model.ceiling()
    target = own_area(by_area, reduction)                                                 # (T, K, S)
    distractor = _distractor(by_area, distractor_areas)                                    # (T, K, S)
    # T1 is measured against the distractor mass at t = 0, which the output times may not hold
    d0 = distractor[0] if t[0] == 0.0 else _distractor_at_zero(result, distractor_areas)
    T1 = np.full((K, S), np.nan)
    T2 = np.full((K, S), np.nan)
    T3 = np.full((K, S), np.nan)
    for k in range(K):
        for s in range(S):
            ceil = ceiling[k, rep[s]]
            T1[k, s] = crossing_time(t, distractor[:, k, s], 0.5 * d0[k, s], above=False)
            if ceil > 0:        # a single-patch area has no target: T2, T3 stay NaN
                T2[k, s] = crossing_time(t, target[:, k, s], 0.5 * ceil, above=True)
                T3[k, s] = crossing_time(t, target[:, k, s], (1.0 - eps) * ceil, above=True)
    return Phases(t=t, T1=T1[:, c], T2=T2[:, c], T3=T3[:, c], is_local=local_mask(model),
                  ceiling=ceiling, target=target[:, :, c], distractor=distractor[:, :, c],
                  eps=float(eps), model=model)


# ---- the one summary ----------------------------------------------------------------------------
def median_time(times: np.ndarray) -> float:
    """Median over queries, a query that never reached the phase counting as t = infinity:
    NaN ("not reached") when half of them or more did not reach it."""
    times = np.asarray(times, dtype=np.float64).ravel()
    if times.size == 0:
        return np.nan
    value = float(np.median(np.where(np.isfinite(times), times, np.inf)))
    return value if np.isfinite(value) else np.nan


@dataclass(frozen=True)
class GroupTimes:
    """Phase times of one group of queries (local or global)."""

    name: str                 # "local" or "global"
    n_queries: int            # (cluster, position) pairs in the group
    median: dict              # phase name -> median time (NaN: not reached by half or more)
    reached: dict             # phase name -> (queries that reached it, queries that have it)

    def line(self) -> str:
        parts = []
        for name in PHASE_NAMES:
            got, have = self.reached[name]
            if have == 0:
                parts.append(f"{name} -")
            elif got == have:
                parts.append(f"{name} {self.median[name]:.4g}")
            elif np.isfinite(self.median[name]):
                parts.append(f"{name} {self.median[name]:.4g} ({got}/{have} reached)")
            else:
                parts.append(f"{name} not reached ({got}/{have})")
        return f"{self.name} queries ({self.n_queries}): " + ", ".join(parts)


@dataclass(frozen=True)
class PhaseSummary:
    """What every report says about phases: median times per group and target fractions.

    ``primary`` is the group the headline numbers come from: the local queries, or all queries
    when no area is smaller than its cluster's largest (e.g. ``balanced``).
    """

    groups: dict              # "local" / "global" / "all" -> GroupTimes
    primary: str
    min_target_fraction: float    # over queries that have a target, at the last time
    mean_target_fraction: float

    def time(self, name: str) -> float:
        """Median phase time ``name`` of the primary group (NaN: not reached)."""
        return self.groups[self.primary].median[name]

    def __repr__(self) -> str:
        return f"<gradflow.PhaseSummary {self.groups[self.primary].line()}>"

    def __str__(self) -> str:
        lines = [g.line() for g in self.groups.values()]
        if np.isfinite(self.min_target_fraction):
            lines.append(f"target attention / ceiling at the end: min {self.min_target_fraction:.4f}, "
                         f"mean {self.mean_target_fraction:.4f}")
        else:
            lines.append("target attention / ceiling: no query has a target (every area is one patch)")
        return "\n".join(lines)


def _group(name: str, ph: Phases, sel: np.ndarray) -> GroupTimes:
    has_target = ph.ceiling > 0
    median, reached = {}, {}
    for tn in PHASE_NAMES:
        # T1 needs another area to decouple from; T2, T3 need a target (an area of 2+ patches)
        have = sel & (np.isfinite(ph.distractor[0]) if tn == "T1" else has_target)
        vals = getattr(ph, tn)[have]
        median[tn] = median_time(vals)
        reached[tn] = (int(np.isfinite(vals).sum()), int(have.sum()))
    return GroupTimes(name, int(sel.sum()), median, reached)


def summarize(ph: Phases) -> PhaseSummary:
    """Median phase times of local and global queries and the final target fractions."""
    groups = {}
    if ph.is_local.any():
        groups["local"] = _group("local", ph, ph.is_local)
        if (~ph.is_local).any():
            groups["global"] = _group("global", ph, ~ph.is_local)
        primary = "local"
    else:
        groups["all"] = _group("all", ph, np.ones_like(ph.is_local))
        primary = "all"
    frac = target_fraction(ph.target[-1], ph.ceiling)[ph.ceiling > 0]
    lo, mean = (float(frac.min()), float(frac.mean())) if frac.size else (np.nan, np.nan)
    return PhaseSummary(groups, primary, lo, mean)
