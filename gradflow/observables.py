"""Observables of MODEL.md section 5: area masses, phase times, attention diversity, and the
area-oracle loss. They work on a ``Solution`` (per class, any P) and on a Monte-Carlo
``TrainRun`` (per position, from its projected correlations) with the same definitions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import DataModel
from .population import attention_mass
from .reduction import Reduction, position_reduction


# ---- trajectories of attention masses ---------------------------------------------------------
def _class_states(result):
    """(reduction, method, A (T,S,F), B (T,S,S), B_self (T,S)) of a Solution or a TrainRun."""
    if hasattr(result, "reduction"):                  # Solution: its own class resolution
        return result.reduction, result.method, result.A_classes, result.B_classes, result.B_self
    red = position_reduction(result.model)            # TrainRun: every position its own class
    B = np.asarray(result.B)
    diag = np.diagonal(B, axis1=1, axis2=2).copy()
    return red, "exact", np.asarray(result.A), B, diag


def _area_of_class(red: Reduction) -> np.ndarray:
    """(K, S) area label (within its cluster) of every class."""
    return red.class_feature - red.feat_lo[:, None]


def attention_masses(result):
    """Expected attention of masked queries by area, along the result's times.

    Returns
    -------
    unmasked : (T, K, S, N) mass on the unmasked keys of each area (N = most areas of a cluster)
    masked : (T, K, S) mass on masked keys (the query itself included)
    red : the Reduction whose classes S index the arrays (``red.class_of`` maps positions)
    """
    cached = getattr(result, "_attention_masses", None)
    if cached is not None:
        return cached
    red, method, A, B, Bs = _class_states(result)
    T, K, S = A.shape[0], red.n_clusters, red.n_classes
    n_areas = int((red.feat_hi - red.feat_lo).max())
    area = _area_of_class(red)
    onehot = np.zeros((K, S, n_areas))
    onehot[np.arange(K)[:, None], np.arange(S)[None, :], area] = 1.0      # key class -> its area
    unmasked = np.empty((T, K, S, n_areas))
    masked = np.empty((T, K, S))
    for i in range(T):
        unm, msk, slf = attention_mass(red, method, A[i], B[i], Bs[i])
        unmasked[i] = np.einsum("ksr,kra->ksa", unm, onehot)
        masked[i] = msk.sum(axis=2) + slf
    out = (unmasked, masked, red)
    try:
        result._attention_masses = out               # observables are read repeatedly
    except AttributeError:
        pass
    return out


# ---- phases -----------------------------------------------------------------------------------
def _crossing(t: np.ndarray, y: np.ndarray, level: float, above: bool) -> float:
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


@dataclass
class Phases:
    """Phase times per cluster and masked query position (MODEL.md section 5).

    T1 (K, P): the distractor mass on the largest other area falls to half its t = 0 value.
    T2 (K, P): the target mass reaches half its ceiling. T3 (K, P): (1 - eps) of its ceiling.
    NaN where not reached, and T2, T3 NaN for single-patch areas (ceiling 0: no target). ``is_local`` (K, P): the query's area is not its cluster's largest.
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

    def summary(self) -> str:
        """One row per cluster and query class: size, area, local, ceiling, T1, T2, T3."""
        m = self.model
        head = f"{'cluster':>7}{'class':>6}{'size':>6}{'area':>5}{'local':>6}{'ceiling':>9}{'T1':>11}{'T2':>11}{'T3':>11}"
        lines = [f"phase times (eps = {self.eps}); median over the positions of a class", head, "-" * len(head)]
        for k in range(m.n_clusters):
            for s in range(m.n_classes):
                pos = np.flatnonzero(m.class_of == s)
                p = pos[0]
                cells = [np.nanmedian(x[k, pos]) if np.any(np.isfinite(x[k, pos])) else np.nan
                         for x in (self.T1, self.T2, self.T3)]
                lines.append(f"{k:>7}{s:>6}{pos.size:>6}{m.clusters[k].areas[p]:>5}"
                             f"{'yes' if self.is_local[k, p] else 'no':>6}{self.ceiling[k, p]:>9.4f}"
                             + "".join(f"{c:>11.4g}" if np.isfinite(c) else f"{'-':>11}" for c in cells))
        return "\n".join(lines)


def local_mask(model: DataModel) -> np.ndarray:
    """(K, P) True where the position's area is not (one of) its cluster's largest."""
    out = np.empty((model.n_clusters, model.n_patches), dtype=bool)
    for k, cl in enumerate(model.clusters):
        sizes = cl.area_sizes()
        out[k] = sizes[cl.areas] < sizes.max()
    return out


def _largest_other_area(model: DataModel) -> np.ndarray:
    """(K, P) label of the largest area other than the position's own (-1 if none)."""
    out = np.full((model.n_clusters, model.n_patches), -1, dtype=np.int64)
    for k, cl in enumerate(model.clusters):
        sizes = cl.area_sizes()
        for j in range(cl.n_areas):
            others = np.where(np.arange(cl.n_areas) == j, -1, sizes)
            if cl.n_areas > 1:
                out[k, cl.areas == j] = int(np.argmax(others))
    return out


def _distractor_at_zero(result, area, oth) -> np.ndarray:
    """(K, S) distractor mass of the state at t = 0, from a Solution's dense output."""
    try:
        lo, _ = result.dense_range()
    except (AttributeError, ValueError):
        lo = None
    if lo is None or lo > 0.0:
        raise ValueError(f"phases needs the state at t = 0 to measure T1, but the result starts at "
                         f"t = {result.t[0]:g}; include t = 0 in t_eval")
    st = result.at(0.0)
    red = result.reduction
    unm = attention_mass(red, result.method, st.A_classes, st.B_classes, st.B_self)[0]
    K, S = area.shape
    out = np.full((K, S), np.nan)
    for k in range(K):
        for s in range(S):
            if oth[k, s] >= 0:
                out[k, s] = unm[k, s][area[k] == oth[k, s]].sum()
    return out


def phases(result, eps: float = 0.05) -> Phases:
    """Phase times T1, T2, T3 of a ``Solution`` or a ``TrainRun`` (MODEL.md section 5).

    Parameters
    ----------
    result : Solution or TrainRun
    eps : float
        T3 is when the target mass reaches (1 - eps) of its ceiling.
    """
    if not (0.0 < eps < 1.0):
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    model = result.model
    unmasked, _, red = attention_masses(result)
    c = red.class_of
    K, P = model.n_clusters, model.n_patches
    t = np.asarray(result.t, dtype=np.float64)
    area = _area_of_class(red)                                       # (K, S)
    other = _largest_other_area(model)                               # (K, P)
    ceiling = model.ceiling()
    # per class, then expanded: the same times for every position of a class
    S = red.n_classes
    rep = np.zeros(S, dtype=np.int64)
    rep[c[::-1]] = np.arange(P)[::-1]
    target = np.take_along_axis(unmasked, area[None, :, :, None], axis=3)[..., 0]      # (T, K, S)
    oth = other[:, rep]                                                                  # (K, S)
    distractor = np.where(oth[None] >= 0,
                          np.take_along_axis(unmasked, np.maximum(oth, 0)[None, :, :, None], axis=3)[..., 0],
                          np.nan)
    # T1 is measured against the distractor mass at t = 0, which the output times may not hold
    d0 = distractor[0]
    if t[0] != 0.0:
        d0 = _distractor_at_zero(result, area, oth)
    T1 = np.full((K, S), np.nan)
    T2 = np.full((K, S), np.nan)
    T3 = np.full((K, S), np.nan)
    for k in range(K):
        for s in range(S):
            ceil = ceiling[k, rep[s]]
            T1[k, s] = _crossing(t, distractor[:, k, s], 0.5 * d0[k, s], above=False)
            if ceil > 0:        # a single-patch area has no target: T2, T3 stay NaN
                T2[k, s] = _crossing(t, target[:, k, s], 0.5 * ceil, above=True)
                T3[k, s] = _crossing(t, target[:, k, s], (1.0 - eps) * ceil, above=True)
    return Phases(t=t, T1=T1[:, c], T2=T2[:, c], T3=T3[:, c], is_local=local_mask(model),
                  ceiling=ceiling, target=target[:, :, c], distractor=distractor[:, :, c],
                  eps=float(eps), model=model)


# ---- attention diversity ----------------------------------------------------------------------
def _diversity_one(per_key: np.ndarray, self_w: np.ndarray, sizes: np.ndarray) -> float:
    """1 - mean over pairs p != p' of sum_q min(w_p(q), w_p'(q)), from class-level maps.

    per_key[s, r]: weight of one key of class r (r != the query) for a query of class s;
    self_w[s]: weight of the query on itself. Exact for any class sizes, O(S^3).
    """
    S = sizes.size
    n = sizes.astype(np.float64)
    P = n.sum()
    total = 0.0
    for s in range(S):
        for s2 in range(S):
            pairs = n[s] * n[s2] - (n[s] if s == s2 else 0.0)
            if pairs <= 0:
                continue
            # keys other than p and p': generic members of every class
            generic = n - (np.arange(S) == s) - (np.arange(S) == s2)
            ov = np.sum(generic * np.minimum(per_key[s], per_key[s2]))
            ov += min(self_w[s], per_key[s2, s])        # key q = p
            ov += min(per_key[s, s2], self_w[s2])       # key q = p'
            total += pairs * ov
    return 1.0 - total / (P * (P - 1.0))


def attention_diversity(result) -> np.ndarray:
    """(T,) attention diversity (MODEL.md section 5), per cluster, weighted by probability.

    0 means every masked query attends to the same keys (e.g. Q = 0); values near 1 mean
    disjoint attention patterns.
    """
    red, method, A, B, Bs = _class_states(result)
    T = A.shape[0]
    out = np.zeros(T)
    if red.sizes.sum() < 2:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(red.mprime > 0, 1.0 / red.mprime, 0.0)
    for i in range(T):
        unm, msk, slf = attention_mass(red, method, A[i], B[i], Bs[i])
        for k in range(red.n_clusters):
            out[i] += red.probs[k] * _diversity_one((unm[k] + msk[k]) * inv, slf[k], red.sizes)
    return out


# ---- the area oracle --------------------------------------------------------------------------
def area_oracle_loss(model: DataModel) -> float:
    """Exact expected loss of the ideal area-wide predictor.

    The oracle predicts for a masked patch the average of the unmasked patches of its own area
    (zero when there are none). Patches of an area share the amplitude, so the average is x_p
    exactly whenever one of the C - 1 others is unmasked; the loss is 1/2 z^2 with probability
    gamma^(C-1): L_oracle = sum_k pi_k sum_p gamma^C E[z^2] / 2.
    """
    g = model.mask_ratio
    total = 0.0
    for k, cl in enumerate(model.clusters):
        C = cl.area_sizes()[cl.areas]
        ez2 = np.array([a.moment2() for a in cl.amplitudes])[cl.areas]
        total += model.probs[k] * np.sum(g ** C * 0.5 * ez2)
    return float(total)
