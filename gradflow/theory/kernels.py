"""Numba kernels: the exact and mean-field expected loss, its gradient, and expected attention.

They evaluate docs/model.md section 4 (derived step by step in derivations/README.md) for one
masked query class at a time. For a query of class s in cluster k, key class r of area j(r) has

    masked weight     beta_r      = exp(B[s, r])
    unmasked weight   alpha_{r,a} = exp(B[s, r] + z_a A[s, f(r)])      (atom a of its area)
    own weight        c           = exp(B_self[s])

and with t = e^sigma on the grid of ``quadrature``, per area j and atom a,

    log Phi_j = log sum_a w_a prod_{r in j} phi_r^{m'_r}         (phi_r = gamma e^{-t beta} + (1-gamma) e^{-t alpha})
    E1_j      = E_post[z t mu_j],   E2_j = E_post[(t mu_j)^2 + t^2 var_j]
    G         = e^{-t c} prod_j Phi_j
    E[loss]   = 1/2 E z0^2 + int G ( -E1_{j0} + 1/2 sum_j E2_j ) d sigma.

Per key, ``key_primitives`` gives log phi = log psi - shift in a form that needs one exp and
cannot overflow, and the tilted probabilities u, w = 1 - u; the moments (t mu, t^2 var, the
masked mass) and their derivatives along log alpha and log beta are SymPy's (``_generated``),
written in (ta, tb, u, w). A query's (atom, key) pairs sit in a grid of lanes by columns
(``QueryKeys``): per node one vectorised pass over each lane stores (ta, tb, u, w) of every pair
(``TA``, ``TB``, ``U``, ``W``) for the gradient and attention passes and adds its moments and
psi^m' to its column; the sums per (area, atom) are then sums of a few column sums, with one
log per column. Logs of products of bounded factors, never products of large numbers: nothing
over- or underflows.
Gradients returned are per entry of the per-position matrices (the derivative of L with respect
to one A[p, f] or B[p, q]).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from ._generated import (
    exact_key_derivatives,
    exact_key_moments,
    meanfield_key_derivatives,
    meanfield_key_moments,
    meanfield_other_share_grad,
    meanfield_query_terms,
)
from . import numba_cache
from .quadrature import T_CAP, g_stop, grid, node
from .vector_math import exp_nonpositive, log_normal_positive

EXACT = 0
MEANFIELD = 1
CLOSED_FORM = 2      # mean field with point-mass amplitudes: a rational function, no t-integral
METHODS = {"exact": EXACT, "meanfield": MEANFIELD}
# the method passed on inside the kernels as a run-time int64, never as a literal: every query
# kernel is then compiled once, whichever caller reaches it first
EXACT_RUNTIME = np.int64(EXACT)


class QueryKeys(NamedTuple):
    """The (atom, key) pairs one masked query sees, in a lane layout (built once per query).

    The pairs sit in a grid of L lanes by ``n_cols`` columns (every per-pair array is
    (L, n_cols); L is 4, 2 or 1, the most that pads the pairs by at most ``LANE_PADDING``: a
    model of a few large classes gets one lane and no padding). A *segment* is one (area j, atom a) of the query's cluster; its pairs are the keys of
    area j with atom a's weights and fill whole columns: columns ``seg_col[q]`` ..
    ``seg_multi[q] - 1`` hold the keys of small classes (m' = 1 .. SMALL_M, whose psi^m' the
    column multiplies), columns ``seg_multi[q]`` .. ``seg_col[q + 1] - 1`` the keys of larger
    classes (one log each); the slots left over are neutral
    padding pairs (weights 0: they add exactly nothing to any sum). Every pass over the pairs is
    then a long loop over the columns of one lane (a contiguous row), which LLVM vectorises, and a segment's sums are
    sums of a few per-column sums: no short loop over a segment's keys, which would not vectorise.
    Segments of area j are ``area_seg[j]`` .. ``area_seg[j + 1] - 1``, one per atom in order. Only
    key classes with m' > 0 appear. Linear weights are 0 where e^{log weight} is not safely
    finite, which sends ``_scaled`` to its log-space branch; ``linear`` says that no weight needs it.
    """

    pair_class: np.ndarray   # (L, n_cols) int64: the class r of the pair's key; -1 for padding
    pair_m: np.ndarray       # (L, n_cols) m'_r (1 for padding)
    pair_z: np.ndarray       # (L, n_cols) amplitude z_a of the pair's atom
    log_alpha: np.ndarray    # (L, n_cols) unmasked log weight B[s, r] + z_a A[s, f(r)] (-inf for padding)
    alpha: np.ndarray        # (L, n_cols)
    log_beta: np.ndarray     # (L, n_cols) masked log weight B[s, r] (-inf for padding)
    beta: np.ndarray         # (L, n_cols)
    seg_col: np.ndarray      # (NS + 1,) int64: the columns of segment q are seg_col[q] .. seg_col[q + 1] - 1
    seg_multi: np.ndarray    # (NS,) int64: of those, seg_multi[q] .. hold the keys with m' > 1
    area_seg: np.ndarray     # (N + 1,) int64
    linear: bool             # every weight safely finite in linear form


class AreaTerms(NamedTuple):
    """Per-area sums of one query at one node of the t-grid (j indexes the cluster's areas, q its
    segments: atom a of area j is segment q = area_seg[j] + a)."""

    log_phi: np.ndarray      # (N,) log Phi_j
    e1: np.ndarray           # (N,) E_post[z t mu_j]
    e2: np.ndarray           # (N,) E_post[(t mu_j)^2 + t^2 var_j]
    log_post: np.ndarray     # (NS,) log prod_r phi_r^{m'_r} of every atom, with its log weight
    top: np.ndarray          # (NS,) the largest log_post of the segment's area
    post: np.ndarray         # (NS,) posterior probability of every atom
    t_mu: np.ndarray         # (NS,) t mu_j given the atom
    t2_var: np.ndarray       # (NS,) t^2 var_j given the atom
    t_masked: np.ndarray     # (NS,) t times the tilted masked weight of the area, given the atom


# ---- scalar helpers ---------------------------------------------------------------------------
# what the kernels keep per pair at a node (rows of ``stored``), for the gradient and attention
# passes
TA, TB, U, W = 0, 1, 2, 3
N_STORED = 4
# what they keep per column at a node (rows of ``columns``): the column's sums of m' shift,
# m' M, m' V, m' Qm and the log of its product of psi
COL_SHIFT, COL_LOG_PSI, COL_M, COL_V, COL_Q = 0, 1, 2, 3, 4
N_COLUMN = 5
LANES = (4, 2, 1)   # pairs per column, tried in order: a segment's sums are over ~1/L as many columns as keys
LANE_PADDING = 0.15  # ... unless the padding of whole columns adds more than this share of pairs
SMALL_M = 4         # keys of classes of up to this many (m') go into the columns' products as psi^m'
# LLVM may reorder the sums of the pair loops (and fuse multiply-adds) so as to vectorise them
VECTOR_FLAGS = {"reassoc", "contract"}


@njit(cache=True, error_model="numpy", inline="always")
def key_primitives(method, ta, tb, gamma, one_minus_gamma):
    """(shift, psi, u, w) of one key with log phi = psi_log = -shift + log psi.

    Exact: phi = gamma e^{-tb} + (1-gamma) e^{-ta} = e^{-min(ta, tb)} psi with psi in
    [min(gamma, 1-gamma), 1], so psi needs one exp and never under- or overflows; u and w = 1 - u
    are the tilted probabilities of the unmasked and masked state, each from its own branch so
    that neither loses relative precision. Mean field: log phi = -(gamma tb + (1-gamma) ta)
    exactly (psi = 1) and the counts do not tilt (u = 1 - gamma, w = gamma).
    """
    if method == MEANFIELD:
        return gamma * tb + one_minus_gamma * ta, 1.0, one_minus_gamma, gamma
    if ta <= tb:
        e = math.exp(ta - tb)
        psi = one_minus_gamma + gamma * e
        inv = 1.0 / psi
        return ta, psi, one_minus_gamma * inv, gamma * e * inv
    e = math.exp(tb - ta)
    psi = gamma + one_minus_gamma * e
    inv = 1.0 / psi
    return tb, psi, one_minus_gamma * e * inv, gamma * inv


@njit(cache=True, error_model="numpy", inline="always")
def key_moments(method, ta, tb, u, w, gamma):
    """(M, V, Qm): the key's tilted unmasked mean, variance and masked mass (SymPy's)."""
    if method == MEANFIELD:
        return meanfield_key_moments(ta, tb, u, w, gamma)
    return exact_key_moments(ta, tb, u, w, gamma)


@njit(cache=True, error_model="numpy", inline="always")
def key_derivatives(method, ta, tb, u, w, gamma):
    """(dL_a, dL_b, dM_a, dM_b, dV_a, dV_b) along log alpha and log beta (SymPy's)."""
    if method == MEANFIELD:
        return meanfield_key_derivatives(ta, tb, u, w, gamma)
    return exact_key_derivatives(ta, tb, u, w, gamma)


@njit(cache=True, error_model="numpy")
def logaddexp(a, b):
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(cache=True, error_model="numpy")
def _linear(log_w):
    """e^{log_w} where it is safely finite, else 0 (a flag for _scaled to stay in logs)."""
    return math.exp(log_w) if -600.0 < log_w < 600.0 else 0.0


@njit(cache=True, error_model="numpy")
def _scaled(t, sigma, log_w, lin):
    """t * e^{log_w}, capped: a product when both factors are safely finite (saves an exp)."""
    if lin > 0.0 and -600.0 < sigma < 600.0:
        return min(t * lin, T_CAP)
    return min(math.exp(sigma + log_w), T_CAP)


# ---- one query: its pairs, grid, per-area sums --------------------------------------------------
@njit(cache=True, error_model="numpy", inline="always")
def _columns(n_keys, lanes):
    """Columns of ``lanes`` lanes that hold ``n_keys`` pairs."""
    return (n_keys + lanes - 1) // lanes


@njit(cache=True, error_model="numpy", inline="always")
def _small(m):
    """Whether a key class of m' keys goes into the columns' products (``psi_power``)."""
    return 0.0 < m <= SMALL_M and m == math.floor(m)


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS, inline="always")
def psi_power(psi, m):
    """psi^m for m' = 1 .. SMALL_M, branch-free (larger classes never use it: their column's
    product is not read)."""
    p2 = psi * psi
    return psi if m == 1.0 else (p2 if m == 2.0 else (p2 * psi if m == 3.0 else p2 * p2))


@njit(cache=True, error_model="numpy")
def query_keys(reduction, A, B, B_self, s, k):
    """The (atom, key) pairs of query class s in cluster k (``QueryKeys``) and the bounds of D.

    Returns (QueryKeys, log c, log D_min, log D_max): the bounds of D over all masks and atoms
    set the t-grid of the integrals.
    """
    first, stop = reduction.feature_start[k], reduction.feature_stop[k]
    n_areas = stop - first
    # sizes: per area the columns of the keys of small classes and of the others, times the area's
    # atoms, for every number of lanes; the most lanes that pad little
    cols = np.zeros(len(LANES), np.int64)
    n_segments = 0
    largest_area = 0
    for f in range(first, stop):
        largest_area = max(largest_area, reduction.area_stop[f] - reduction.area_start[f])
        small = 0
        multi = 0
        for ii in range(reduction.area_start[f], reduction.area_stop[f]):
            m = reduction.other_keys[s, reduction.keys_by_area[k, ii]]
            if _small(m):
                small += 1
            elif m > 0.0:
                multi += 1
        for i in range(len(LANES)):
            cols[i] += reduction.n_atoms[f] * (_columns(small, LANES[i]) + _columns(multi, LANES[i]))
        n_segments += reduction.n_atoms[f]
    pick = len(LANES) - 1                                      # one lane: no padding
    for i in range(len(LANES) - 1, -1, -1):
        if cols[i] * LANES[i] <= (1.0 + LANE_PADDING) * cols[len(LANES) - 1]:
            pick = i
    n_lanes, n_cols = LANES[pick], cols[pick]
    shape = (n_lanes, n_cols)
    # padding pairs: no class, m' = 1, weights 0 (ta = tb = 0: psi = 1 and every moment 0)
    pair_class = np.full(shape, -1, np.int64)
    pair_m = np.ones(shape)
    pair_z = np.ones(shape)
    log_alpha = np.full(shape, -np.inf)
    alpha = np.zeros(shape)
    log_beta = np.full(shape, -np.inf)
    beta = np.zeros(shape)
    seg_col = np.empty(n_segments + 1, np.int64)
    seg_multi = np.empty(n_segments, np.int64)
    area_seg = np.empty(n_areas + 1, np.int64)
    log_c = B_self[s]
    lo = log_c                  # log D_min, log D_max: in logs (always safe) ...
    hi = log_c
    d_min = 0.0                 # ... and in linear form while every weight is safely finite
    d_max = 0.0
    linear = -600.0 < log_c < 600.0
    all_linear = True
    col = 0
    q = 0
    # one exp per key and one per atom, not one per (atom, key) pair: alpha = beta e^{z_a A} where
    # all three are safely finite (else alpha from its log, and 0 past the range)
    tilt = np.empty(reduction.atom_z.shape[1])     # e^{z_a A[s, f]} of the area's atoms
    # the area's keys with m' > 0 in column order (small classes first): class, m', B[s, r], e^{B}
    key_r = np.empty(largest_area, np.int64)
    key_m = np.empty(largest_area)
    key_lb = np.empty(largest_area)
    key_beta = np.empty(largest_area)
    for f in range(first, stop):
        area_seg[f - first] = q
        n_keys = 0
        n_small = 0
        for small_classes in (True, False):
            for ii in range(reduction.area_start[f], reduction.area_stop[f]):
                r = reduction.keys_by_area[k, ii]
                m = reduction.other_keys[s, r]
                if m > 0.0 and _small(m) == small_classes:
                    key_r[n_keys] = r
                    key_m[n_keys] = m
                    key_lb[n_keys] = B[s, r]
                    key_beta[n_keys] = _linear(B[s, r])
                    n_keys += 1
            if small_classes:
                n_small = n_keys
        # the atoms' tilts, and the extreme log and linear weights over atoms of every key: its
        # beta or its alpha of the atom with the smallest (largest) z_a A
        za_lo = 0.0
        za_hi = 0.0
        tilt_lo = 1.0
        tilt_hi = 1.0
        tilts_finite = True
        for a in range(reduction.n_atoms[f]):
            za = reduction.atom_z[f, a] * A[s, f]
            tilt[a] = _linear(za)
            za_lo = min(za_lo, za)
            za_hi = max(za_hi, za)
            tilt_lo = min(tilt_lo, tilt[a])
            tilt_hi = max(tilt_hi, tilt[a])
            tilts_finite = tilts_finite and tilt[a] > 0.0
        for a in range(reduction.n_atoms[f]):
            z = reduction.atom_z[f, a]
            seg_col[q] = col
            col_small = col + _columns(n_small, n_lanes)
            seg_multi[q] = col_small
            for i in range(n_keys):
                # the slot-th key of its group goes to lane slot % L of the group's column slot // L
                slot = i if i < n_small else i - n_small
                lane, c = slot % n_lanes, (col if i < n_small else col_small) + slot // n_lanes
                lb = key_lb[i]
                la = lb + z * A[s, f]
                pair_class[lane, c] = key_r[i]
                pair_m[lane, c] = key_m[i]
                pair_z[lane, c] = z
                log_beta[lane, c] = lb
                beta[lane, c] = key_beta[i]
                log_alpha[lane, c] = la
                alpha[lane, c] = (key_beta[i] * tilt[a] if key_beta[i] > 0.0 and tilt[a] > 0.0
                                  and -600.0 < la < 600.0 else _linear(la))
                if beta[lane, c] == 0.0 or alpha[lane, c] == 0.0:
                    all_linear = False
            col = col_small + _columns(n_keys - n_small, n_lanes)
            q += 1
        # D bounds from the keys of the area (each key's smallest and largest weight over atoms)
        for i in range(n_keys):
            m, lb, b = key_m[i], key_lb[i], key_beta[i]
            amin = lb + za_lo
            amax_r = lb + za_hi
            if linear and -600.0 < amin and amax_r < 600.0:      # every weight of this key safely finite
                if b > 0.0 and tilts_finite:
                    # exp is monotone: the smallest (largest) linear weight is b times the
                    # smallest (largest) tilt, or b itself
                    d_min += m * (b * tilt_lo)
                    d_max += m * (b * tilt_hi)
                else:
                    w_min = _linear(lb)
                    w_max = w_min
                    for a in range(reduction.n_atoms[f]):
                        w = _linear(lb + reduction.atom_z[f, a] * A[s, f])
                        w_min = min(w_min, w)
                        w_max = max(w_max, w)
                    d_min += m * w_min
                    d_max += m * w_max
            else:
                if linear:              # switch to logs, carrying the linear sums over
                    lo = logaddexp(lo, math.log(d_min)) if d_min > 0.0 else lo
                    hi = logaddexp(hi, math.log(d_max)) if d_max > 0.0 else hi
                    linear = False
                lm = math.log(m)
                lo = logaddexp(lo, lm + amin)
                hi = logaddexp(hi, lm + amax_r)
    seg_col[n_segments] = col
    area_seg[n_areas] = q
    keys = QueryKeys(pair_class, pair_m, pair_z, log_alpha, alpha, log_beta, beta, seg_col, seg_multi, area_seg,
                     all_linear)
    if linear:
        c = math.exp(log_c)
        return keys, log_c, math.log(c + d_min), math.log(c + d_max)
    return keys, log_c, lo, hi


@njit(cache=True, error_model="numpy", inline="always")
def new_area_terms(n_areas, n_segments):
    return AreaTerms(np.empty(n_areas), np.empty(n_areas), np.empty(n_areas), np.empty(n_segments),
                     np.empty(n_segments), np.empty(n_segments), np.empty(n_segments), np.empty(n_segments),
                     np.empty(n_segments))


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS, inline="always")
def exact_pair_linear(t, alpha, beta, gamma, one_minus_gamma):
    """(ta, tb, psi, u, w) of one pair, exact method, weights safely finite: log phi =
    -min(ta, tb) + log psi, as ``key_primitives``, but branch-free and without libm calls so that
    loops over pairs vectorise."""
    ta = min(t * alpha, T_CAP)
    tb = min(t * beta, T_CAP)
    e = exp_nonpositive(-abs(ta - tb))
    unmasked_low = ta <= tb
    part_a = one_minus_gamma * (1.0 if unmasked_low else e)     # (1-gamma) e^{-ta} / e^{-min}
    part_b = gamma * (e if unmasked_low else 1.0)               # gamma e^{-tb} / e^{-min}
    psi = part_a + part_b
    inv = 1.0 / psi
    return ta, tb, psi, part_a * inv, part_b * inv


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS, inline="always")
def _keep_pair(method, gamma, m, ta, tb, shift, psi, u, w, lane, c, stored, columns):
    """Store one pair's (ta, tb, u, w) and add its share to its column: m' shift, psi^m', m' M,
    m' V, m' Qm."""
    stored[lane, TA, c] = ta
    stored[lane, TB, c] = tb
    stored[lane, U, c] = u
    stored[lane, W, c] = w
    mean, variance, masked = key_moments(method, ta, tb, u, w, gamma)
    columns[COL_SHIFT, c] += m * shift
    columns[COL_LOG_PSI, c] *= psi_power(psi, m)
    columns[COL_M, c] += m * mean
    columns[COL_V, c] += m * variance
    columns[COL_Q, c] += m * masked


@njit(cache=True, error_model="numpy", _nrt=False, fastmath=VECTOR_FLAGS)
def exact_lane_linear(t, gamma, alpha, beta, pair_m, lane, stored, columns):
    """The pairs of one lane at t, exact method, every weight safely finite: (ta, tb, u, w) into
    ``stored[lane]``, their moments added to the column sums and psi multiplied into the column's
    product (whose log ``column_logs`` takes). One long loop over the columns that LLVM
    vectorises (arrays indexed by lane and column: a row offset in a flat index, lane * n_cols +
    c, kept it from vectorising)."""
    one_minus_gamma = 1.0 - gamma
    for c in range(columns.shape[1]):
        ta, tb, psi, u, w = exact_pair_linear(t, alpha[lane, c], beta[lane, c], gamma, one_minus_gamma)
        _keep_pair(EXACT_RUNTIME, gamma, pair_m[lane, c], ta, tb, min(ta, tb), psi, u, w, lane, c, stored, columns)


@njit(cache=True, error_model="numpy", _nrt=False)
def lane_general(method, t, sigma, gamma, keys, lane, stored, columns):
    """As ``exact_lane_linear`` for any method and any weights (logs where need be)."""
    one_minus_gamma = 1.0 - gamma
    for c in range(columns.shape[1]):
        ta = _scaled(t, sigma, keys.log_alpha[lane, c], keys.alpha[lane, c])
        tb = _scaled(t, sigma, keys.log_beta[lane, c], keys.beta[lane, c])
        shift, psi, u, w = key_primitives(method, ta, tb, gamma, one_minus_gamma)
        _keep_pair(method, gamma, keys.pair_m[lane, c], ta, tb, shift, psi, u, w, lane, c, stored, columns)


@njit(cache=True, error_model="numpy", _nrt=False)
def pair_pass(method, t, sigma, gamma, keys, stored, columns, logs):
    """Every pair at t into ``stored`` (L, N_STORED, n_cols) and its column's sums into
    ``columns`` (lane by lane; the vectorised form when the method is exact and every weight
    safely finite); with ``logs`` (``column_logs_safe``), the log of each column's product of psi."""
    n_cols = columns.shape[1]
    for c in range(n_cols):
        columns[COL_SHIFT, c] = 0.0
        columns[COL_LOG_PSI, c] = 1.0
        columns[COL_M, c] = 0.0
        columns[COL_V, c] = 0.0
        columns[COL_Q, c] = 0.0
    fast = keys.linear and method == EXACT
    for lane in range(stored.shape[0]):
        if fast:
            exact_lane_linear(t, gamma, keys.alpha, keys.beta, keys.pair_m, lane, stored, columns)
        else:
            lane_general(method, t, sigma, gamma, keys, lane, stored, columns)
    if logs:
        column_logs(columns)


@njit(cache=True, error_model="numpy", _nrt=False, fastmath=VECTOR_FLAGS)
def column_logs(columns):
    """The columns' products of psi replaced by their logs, in one vectorised loop (one log per
    column, not one per key)."""
    for c in range(columns.shape[1]):
        columns[COL_LOG_PSI, c] = log_normal_positive(columns[COL_LOG_PSI, c])


@njit(cache=True, error_model="numpy", inline="always")
def column_logs_safe(gamma, lanes):
    """Whether a column's product of ``lanes`` factors psi^m' >= min(gamma, 1 - gamma)^SMALL_M
    stays a normal number (with 4 lanes: min(gamma, 1 - gamma) > 1e-19), so that its log may be
    taken."""
    return lanes * SMALL_M * math.log(min(gamma, 1.0 - gamma)) > -690.0


@njit(cache=True, error_model="numpy", inline="always")
def _log_psi(method, stored, lane, c, gamma):
    """log psi of one pair again from its (ta, tb)."""
    return math.log(key_primitives(method, stored[lane, TA, c], stored[lane, TB, c], gamma, 1.0 - gamma)[1])


@njit(cache=True, error_model="numpy", _nrt=False)
def segment_sums(method, gamma, keys, stored, columns, logs, sums):
    """Per segment q: sums[:, q] = (sum m' shift, sum m' log psi, sum m' M, sum m' V, sum m' Qm).

    Sums of the segment's column sums; log psi from the columns' logs of keys of small classes
    (when ``logs``, else one log per key) and one log per key of a larger class (few)."""
    for q in range(keys.seg_multi.size):
        c0, c_multi, c1 = keys.seg_col[q], keys.seg_multi[q], keys.seg_col[q + 1]
        shift = 0.0
        mu = 0.0
        var = 0.0
        hidden = 0.0
        log_psi = 0.0
        for c in range(c0, c1):
            shift += columns[COL_SHIFT, c]
            mu += columns[COL_M, c]
            var += columns[COL_V, c]
            hidden += columns[COL_Q, c]
            log_psi += columns[COL_LOG_PSI, c] if logs and c < c_multi else 0.0
        for c in range(c0 if not logs else c_multi, c1):   # small classes without column logs; larger classes
            for lane in range(stored.shape[0]):
                if keys.pair_class[lane, c] >= 0:
                    log_psi += keys.pair_m[lane, c] * _log_psi(method, stored, lane, c, gamma)
        sums[0, q] = shift
        sums[1, q] = log_psi
        sums[2, q] = mu
        sums[3, q] = var
        sums[4, q] = hidden


@njit(cache=True, error_model="numpy", inline="always")
def area_terms(method, reduction, k, sigma, keys, terms, work):
    """Fill ``terms`` at t = e^sigma for every area of cluster k; returns sum_j log Phi_j.

    Per pair (ta, tb, u, w) go to ``work.stored`` and the column sums to ``work.columns``,
    per segment their sums to ``work.sums``; per area and atom, log prod_r phi_r^{m'_r} =
    sum_r m'_r (log psi_r - shift_r); the atoms' posterior comes from one log-sum-exp per area
    (``area_posteriors``).
    """
    gamma = reduction.mask_ratio
    pair_pass(method, math.exp(sigma), sigma, gamma, keys, work.stored, work.columns, work.logs)
    sums = work.sums
    segment_sums(method, gamma, keys, work.stored, work.columns, work.logs, sums)
    first = reduction.feature_start[k]
    for j in range(keys.area_seg.size - 1):
        f = first + j
        q0 = keys.area_seg[j]
        for a in range(keys.area_seg[j + 1] - q0):
            q = q0 + a
            z = reduction.atom_z[f, a]
            terms.t_mu[q] = z * sums[2, q]
            terms.t2_var[q] = z * z * sums[3, q]
            terms.t_masked[q] = sums[4, q]
            terms.log_post[q] = reduction.atom_log_weight[f, a] + sums[1, q] - sums[0, q]
    return area_posteriors(reduction, k, keys, terms)


@njit(cache=True, error_model="numpy", _nrt=False, fastmath=VECTOR_FLAGS)
def posterior_weights(log_post, top, post):
    """post[q] = e^{log_post[q] - top[q]} for every segment, in one vectorised loop (a libm exp
    per atom and node was ~10% of a gradient with continuous amplitudes)."""
    for q in range(post.size):
        post[q] = exp_nonpositive(log_post[q] - top[q])


@njit(cache=True, error_model="numpy", inline="always")
def area_posteriors(reduction, k, keys, terms):
    """Every area's log Phi_j, its atoms' posterior and E1_j, E2_j (``atom_posterior``) from
    ``terms.log_post``, ``t_mu``, ``t2_var``; returns sum_j log Phi_j."""
    for j in range(keys.area_seg.size - 1):
        q0, q1 = keys.area_seg[j], keys.area_seg[j + 1]
        top = -np.inf
        for q in range(q0, q1):
            top = max(top, terms.log_post[q])
        for q in range(q0, q1):
            terms.top[q] = top
    posterior_weights(terms.log_post, terms.top, terms.post)
    first = reduction.feature_start[k]
    total = 0.0
    for j in range(keys.area_seg.size - 1):
        total += atom_posterior(reduction, first + j, j, keys.area_seg[j], keys.area_seg[j + 1] - keys.area_seg[j],
                                terms)
    return total


@njit(cache=True, error_model="numpy", inline="always")
def atom_posterior(reduction, f, j, q0, nat, terms):
    """Area j's log Phi_j = log sum_a w_a prod_r phi_r^{m'_r} (from ``terms.log_post`` and the
    weights e^{log_post - top} in ``terms.post`` of its segments q0 .. q0 + nat - 1), the atoms'
    posterior probabilities (into ``terms.post``), and E1_j, E2_j under that posterior; returns
    log Phi_j."""
    if nat == 1:   # point mass: the posterior is the atom itself, no exp/log needed
        lphi = terms.log_post[q0]
        terms.post[q0] = 1.0
        terms.log_phi[j] = lphi
        terms.e1[j] = reduction.atom_z[f, 0] * terms.t_mu[q0]
        terms.e2[j] = terms.t_mu[q0] * terms.t_mu[q0] + terms.t2_var[q0]
        return lphi
    norm = 0.0
    acc1 = 0.0
    acc2 = 0.0
    for a in range(nat):
        weight = terms.post[q0 + a]
        norm += weight
        tm = terms.t_mu[q0 + a]
        acc1 += weight * reduction.atom_z[f, a] * tm
        acc2 += weight * (tm * tm + terms.t2_var[q0 + a])
    lphi = terms.top[q0] + math.log(norm)
    for a in range(nat):
        terms.post[q0 + a] /= norm
    terms.log_phi[j] = lphi
    terms.e1[j] = acc1 / norm
    terms.e2[j] = acc2 / norm
    return lphi


class QueryWork(NamedTuple):
    """Scratch arrays of one query, reused at every node."""

    stored: np.ndarray       # (L, N_STORED, n_cols) per pair at the current node
    columns: np.ndarray      # (N_COLUMN, n_cols) per column at the current node
    sums: np.ndarray         # (5, NS) per segment at the current node
    coef: np.ndarray         # (3, n_cols) per column: the gradient pass's (cl, cm, cv) times the atom's weight
    acc: np.ndarray          # (L, 2, n_cols) per pair, over all nodes: the gradient's (or attention's) sums
    logs: bool               # log psi per column (``column_logs_safe``), else per key


@njit(cache=True, error_model="numpy", inline="always")
def query_setup(reduction, A, B, B_self, s, k):
    """What one masked query's integrals share: (its pairs, per-area terms, scratch, log c, and
    the t-grid's rule, sigma offset, first x, number of nodes).

    A plain tuple, unpacked at once: a NamedTuple of arrays carried through the node loop costs
    ~25% of the kernel's time (measured)."""
    keys, log_c, log_dmin, log_dmax = query_keys(reduction, A, B, B_self, s, k)
    terms = new_area_terms(keys.area_seg.size - 1, keys.seg_multi.size)
    n_cols = keys.seg_col[keys.seg_col.size - 1]
    n_lanes = keys.pair_class.shape[0]
    work = QueryWork(np.empty((n_lanes, N_STORED, n_cols)), np.empty((N_COLUMN, n_cols)),
                     np.empty((5, keys.seg_multi.size)), np.zeros((3, n_cols)), np.zeros((n_lanes, 2, n_cols)),
                     column_logs_safe(reduction.mask_ratio, n_lanes))
    rule, offset, x0, n = grid(log_dmin, log_dmax, reduction.grid_step)
    return keys, terms, work, log_c, rule, offset, x0, n


@njit(cache=True, error_model="numpy", inline="always")
def _sum_e2(terms):
    s2 = 0.0
    for j in range(terms.e2.size):
        s2 += terms.e2[j]
    return s2


# ---- one query: the three integrals -----------------------------------------------------------
@njit(cache=True, error_model="numpy")
def query_loss(method, reduction, A, B, B_self, s, k):
    """Expected loss of a masked query of class s in cluster k."""
    keys, terms, work, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k)
    j0 = reduction.key_feature[k, s] - reduction.feature_start[k]
    integral = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, reduction.grid_step, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, work)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)                   # G = e^{-tc} prod_j Phi_j
        if G < g_stop(reduction.grid_step):
            break
        integral += h * G * (-terms.e1[j0] + 0.5 * _sum_e2(terms))
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral


@njit(cache=True, error_model="numpy", _nrt=False, fastmath=VECTOR_FLAGS)
def lane_gradients(method, gamma, lane, stored, coef, acc):
    """Add the share of one node of every pair of a lane to the gradient sums: acc[lane, 0] += ga
    (moves log alpha, i.e. A), acc[lane, 1] += ga + gb (moves B), with g = cl dL + cm dM + cv dV
    (SymPy's derivatives) and (cl, cm, cv) those of the pair's column."""
    for c in range(coef.shape[1]):
        dl_a, dl_b, dm_a, dm_b, dv_a, dv_b = key_derivatives(method, stored[lane, TA, c], stored[lane, TB, c],
                                                             stored[lane, U, c], stored[lane, W, c], gamma)
        cl, cm, cv = coef[0, c], coef[1, c], coef[2, c]
        ga = cl * dl_a + cm * dm_a + cv * dv_a
        acc[lane, 0, c] += ga
        acc[lane, 1, c] += ga + cl * dl_b + cm * dm_b + cv * dv_b


@njit(cache=True, error_model="numpy")
def query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row, unmasked_by_area):
    """Expected loss of a masked query (class s, cluster k), its derivatives and its attention
    by area (which the same nodes give for a few operations per area).

    Adds d loss / d A[s, f] to ``grad_A_row`` (F,), d loss / d B[s, r], summed over the keys of
    class r, to ``grad_B_row`` (S,), and the mass on the unmasked keys of each area to
    ``unmasked_by_area`` (N,); returns (loss, d loss / d B_self[s], mass on masked keys and on
    itself), as ``query_area_attention``.
    """
    keys, terms, work, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k)
    gamma = reduction.mask_ratio
    first = reduction.feature_start[k]
    j0 = reduction.key_feature[k, s] - first
    coef = work.coef
    integral = 0.0
    d_self = 0.0
    hidden = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, reduction.grid_step, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, work)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)                   # G = e^{-tc} prod_j Phi_j, decreasing in t
        if G < g_stop(reduction.grid_step):
            break
        s2 = _sum_e2(terms)
        integrand = G * (-terms.e1[j0] + 0.5 * s2)
        integral += h * integrand
        d_self -= h * tc * integrand                     # d/d log c of G is -tc G
        hidden += h * G * tc                             # the query's own mass E[c / D]
        # a parameter acting on area j moves its factors: product rule over log Phi_j, t mu, t^2 var
        for j in range(keys.area_seg.size - 1):
            own = j == j0
            c_phi = 0.5 * (s2 - terms.e2[j]) - (0.0 if own else terms.e1[j0])
            c1 = -1.0 if own else 0.0
            for a in range(keys.area_seg[j + 1] - keys.area_seg[j]):
                q = keys.area_seg[j] + a
                wa = h * G * terms.post[q]
                z = reduction.atom_z[first + j, a]
                tm = terms.t_mu[q]
                unmasked_by_area[j] += wa * tm / z           # attention, as in query_area_attention
                hidden += wa * terms.t_masked[q]
                cl = wa * (c_phi + c1 * z * tm + 0.5 * (tm * tm + terms.t2_var[q]))
                cm = wa * z * (c1 * z + tm)
                cv = wa * 0.5 * z * z
                for c in range(keys.seg_col[q], keys.seg_col[q + 1]):
                    coef[0, c] = cl
                    coef[1, c] = cm
                    coef[2, c] = cv
        for lane in range(keys.pair_class.shape[0]):
            lane_gradients(method, gamma, lane, work.stored, coef, work.acc)
    for j in range(keys.area_seg.size - 1):
        f = first + j
        for c in range(keys.seg_col[keys.area_seg[j]], keys.seg_col[keys.area_seg[j + 1]]):
            for lane in range(keys.pair_class.shape[0]):
                r = keys.pair_class[lane, c]
                if r >= 0:
                    m = keys.pair_m[lane, c]
                    grad_A_row[f] += keys.pair_z[lane, c] * m * work.acc[lane, 0, c]
                    grad_B_row[r] += m * work.acc[lane, 1, c]
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral, d_self, hidden


@njit(cache=True, error_model="numpy", _nrt=False, fastmath=VECTOR_FLAGS)
def lane_attention(method, gamma, lane, stored, weight, acc):
    """Add the share of one node of every pair of a lane to the attention sums: acc[lane, 0] +=
    weight M (unmasked), acc[lane, 1] += weight Qm (masked), ``weight[0]`` (per column) the
    node's h G times the atom's posterior."""
    for c in range(weight.shape[1]):
        mean, _, hidden = key_moments(method, stored[lane, TA, c], stored[lane, TB, c], stored[lane, U, c],
                                      stored[lane, W, c], gamma)
        acc[lane, 0, c] += weight[0, c] * mean
        acc[lane, 1, c] += weight[0, c] * hidden


@njit(cache=True, error_model="numpy")
def query_attention(method, reduction, A, B, B_self, s, k, unmasked_row, masked_row):
    """Expected attention of a masked query (class s, cluster k).

    Adds the expected mass on the unmasked (``unmasked_row``) and masked (``masked_row``) keys of
    every class, summed over the keys of the class, and returns the mass on the query itself.
    """
    keys, terms, work, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k)
    gamma = reduction.mask_ratio
    weight = work.coef           # row 0: per column
    on_self = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, reduction.grid_step, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, work)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)                   # G = e^{-tc} prod_j Phi_j, decreasing in t
        if G < g_stop(reduction.grid_step):
            break
        on_self += h * G * tc                            # E[c / D] = int G t c d sigma
        for j in range(keys.area_seg.size - 1):
            for a in range(keys.area_seg[j + 1] - keys.area_seg[j]):
                q = keys.area_seg[j] + a
                wa = h * G * terms.post[q]
                for c in range(keys.seg_col[q], keys.seg_col[q + 1]):
                    weight[0, c] = wa
        for lane in range(keys.pair_class.shape[0]):
            lane_attention(method, gamma, lane, work.stored, weight, work.acc)
    for lane in range(keys.pair_class.shape[0]):
        for c in range(weight.shape[1]):
            r = keys.pair_class[lane, c]
            if r >= 0:
                unmasked_row[r] += keys.pair_m[lane, c] * work.acc[lane, 0, c]
                masked_row[r] += keys.pair_m[lane, c] * work.acc[lane, 1, c]
    return on_self


@njit(cache=True, error_model="numpy")
def query_area_attention(method, reduction, A, B, B_self, s, k, unmasked_by_area):
    """Expected attention of a masked query (class s, cluster k), summed per area.

    Adds to ``unmasked_by_area`` (N,) the mass on the unmasked keys of each area of the cluster and
    returns (mass on masked keys, mass on itself). One pass over the keys per node: the per-area
    sums of the loss pass are all it needs.
    """
    keys, terms, work, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k)
    first = reduction.feature_start[k]
    on_self = 0.0
    masked = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, reduction.grid_step, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, work)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)
        if G < g_stop(reduction.grid_step):
            break
        on_self += h * G * tc                            # E[c / D] = int G t c d sigma
        for j in range(keys.area_seg.size - 1):
            f = first + j
            for a in range(keys.area_seg[j + 1] - keys.area_seg[j]):
                q = keys.area_seg[j] + a
                wa = h * G * terms.post[q]
                unmasked_by_area[j] += wa * terms.t_mu[q] / reduction.atom_z[f, a]
                masked += wa * terms.t_masked[q]
    return masked, on_self


# ---- mean field with random amplitudes: the same integral, linear in t per area ---------------
# With every count at its mean, log phi_r = -t (gamma beta_r + (1-gamma) alpha_r) and t mu is
# t (1-gamma) alpha_r: per area and atom only the sums over keys C and M enter, so each node costs
# O(areas x atoms), not O(keys x atoms). Used while every weight is safely finite (|log w| < 600).
@njit(cache=True, error_model="numpy", inline="always")
def meanfield_segment_sums(reduction, keys):
    """(C, M) per segment q = (area j, atom a): C = sum_r m (gamma beta + (1-gamma) alpha_a) (log Phi
    = log w_a - t C), M = (1-gamma) sum_r m alpha_a (t mu = z t M)."""
    gamma = reduction.mask_ratio
    n_seg = keys.seg_multi.size
    C = np.zeros(n_seg)
    M = np.zeros(n_seg)
    for q in range(n_seg):
        for c in range(keys.seg_col[q], keys.seg_col[q + 1]):
            for lane in range(keys.pair_class.shape[0]):
                m = keys.pair_m[lane, c]
                C[q] += m * (gamma * keys.beta[lane, c] + (1.0 - gamma) * keys.alpha[lane, c])
                M[q] += (1.0 - gamma) * m * keys.alpha[lane, c]
    return C, M


@njit(cache=True, error_model="numpy", inline="always")
def meanfield_node(reduction, k, keys, t, C, M, terms):
    """Per-area sums of the mean-field integrand at t (as area_terms); returns sum_j log Phi_j."""
    first = reduction.feature_start[k]
    for j in range(keys.area_seg.size - 1):
        f = first + j
        q0 = keys.area_seg[j]
        for a in range(keys.area_seg[j + 1] - q0):
            # capped as the exact path caps t alpha: an atom whose t M passes T_CAP has posterior
            # e^{-t C} = 0 (C >= M), and its (t mu)^2 must stay finite, not 0 * inf = NaN
            terms.t_mu[q0 + a] = reduction.atom_z[f, a] * min(t * M[q0 + a], T_CAP)
            terms.t2_var[q0 + a] = 0.0                    # the counts are at their means
            terms.log_post[q0 + a] = reduction.atom_log_weight[f, a] - t * C[q0 + a]
    return area_posteriors(reduction, k, keys, terms)


@njit(cache=True, error_model="numpy")
def meanfield_query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row, want_grad):
    """Mean-field loss of a masked query (class s, cluster k) and, with ``want_grad``, its
    derivatives (as ``query_loss_grad``); falls back to the per-pair integral when a weight is
    not safely finite."""
    keys, terms, work, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k)
    if not keys.linear:       # (method is MEANFIELD, passed on at run time)
        unused = np.zeros(keys.area_seg.size - 1)
        if want_grad:
            return query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row, unused)[:2]
        # the loss alone through the gradient kernel: one compiled kernel less for a rare path
        F, S = reduction.n_atoms.size, reduction.other_keys.shape[0]
        return query_loss_grad(method, reduction, A, B, B_self, s, k, np.zeros(F), np.zeros(S), unused)[0], 0.0
    C, M = meanfield_segment_sums(reduction, keys)
    first = reduction.feature_start[k]
    j0 = reduction.key_feature[k, s] - first
    X = np.zeros(C.size)           # sum over nodes of wa t (cm - cl): moves alpha
    Y = np.zeros(C.size)           # sum over nodes of wa t cl: moves beta
    integral = 0.0
    d_self = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, reduction.grid_step, i)
        t = math.exp(sigma)
        sum_log_phi = meanfield_node(reduction, k, keys, t, C, M, terms)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)
        if G < g_stop(reduction.grid_step):
            break
        s2 = _sum_e2(terms)
        integrand = G * (-terms.e1[j0] + 0.5 * s2)
        integral += h * integrand
        if not want_grad:
            continue
        d_self -= h * tc * integrand
        for j in range(keys.area_seg.size - 1):
            own = j == j0
            c_phi = 0.5 * (s2 - terms.e2[j]) - (0.0 if own else terms.e1[j0])
            c1 = -1.0 if own else 0.0
            for a in range(keys.area_seg[j + 1] - keys.area_seg[j]):
                q = keys.area_seg[j] + a
                wa = h * G * terms.post[q]
                z = reduction.atom_z[first + j, a]
                tm = terms.t_mu[q]
                cl = c_phi + c1 * z * tm + 0.5 * tm * tm
                cm = z * (c1 * z + tm)
                X[q] += wa * t * (cm - cl)
                Y[q] += wa * t * cl
    if want_grad:
        gamma = reduction.mask_ratio
        for j in range(keys.area_seg.size - 1):
            f = first + j
            for a in range(keys.area_seg[j + 1] - keys.area_seg[j]):
                q = keys.area_seg[j] + a
                grad_A_row[f] += reduction.atom_z[f, a] * M[q] * X[q]
                for c in range(keys.seg_col[q], keys.seg_col[q + 1]):
                    for lane in range(keys.pair_class.shape[0]):
                        r = keys.pair_class[lane, c]
                        if r >= 0:
                            grad_B_row[r] += keys.pair_m[lane, c] * (
                                (1.0 - gamma) * keys.alpha[lane, c] * X[q] - gamma * keys.beta[lane, c] * Y[q])
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral, d_self


# ---- mean field with point-mass amplitudes: the SymPy closed form, no integral ----------------
@njit(cache=True, error_model="numpy")
def meanfield_shares(reduction, A, B, B_self, s, k):
    """log D and the area shares a_j = N_j / D of a query with every count at its mean."""
    S = reduction.other_keys.shape[0]
    gamma = reduction.mask_ratio
    log_d = B_self[s]
    for r in range(S):
        m = reduction.other_keys[s, r]
        if m <= 0.0:
            continue
        f = reduction.key_feature[k, r]
        la = B[s, r] + reduction.atom_z[f, 0] * A[s, f]
        log_d = logaddexp(log_d, math.log(m) + logaddexp(math.log(gamma) + B[s, r], math.log1p(-gamma) + la))
    first = reduction.feature_start[k]
    share = np.zeros(reduction.feature_stop[k] - first)
    for f in range(first, reduction.feature_stop[k]):
        acc = 0.0
        for i in range(reduction.area_start[f], reduction.area_stop[f]):
            r = reduction.keys_by_area[k, i]
            m = reduction.other_keys[s, r]
            if m > 0.0:
                acc += m * (1.0 - gamma) * math.exp(B[s, r] + reduction.atom_z[f, 0] * A[s, f] - log_d)
        share[f - first] = reduction.atom_z[f, 0] * acc
    return log_d, share


@njit(cache=True, error_model="numpy")
def _meanfield_terms(reduction, share, s, k):
    s2 = 0.0
    for j in range(share.size):
        s2 += share[j] * share[j]
    f0 = reduction.key_feature[k, s]
    return meanfield_query_terms(reduction.atom_z[f0, 0], share[f0 - reduction.feature_start[k]], s2)


@njit(cache=True, error_model="numpy")
def closed_form_loss(reduction, A, B, B_self, s, k):
    """Mean-field query loss for point-mass amplitudes."""
    _, share = meanfield_shares(reduction, A, B, B_self, s, k)
    return _meanfield_terms(reduction, share, s, k)[0]


@njit(cache=True, error_model="numpy")
def closed_form_loss_grad(reduction, A, B, B_self, s, k, grad_A_row, grad_B_row):
    """Mean-field query loss and its derivatives (as ``query_loss_grad``), point masses."""
    log_d, share = meanfield_shares(reduction, A, B, B_self, s, k)
    loss, d_dd, d_dn_own = _meanfield_terms(reduction, share, s, k)
    gamma = reduction.mask_ratio
    f0 = reduction.key_feature[k, s]
    first = reduction.feature_start[k]
    for r in range(reduction.other_keys.shape[0]):
        m = reduction.other_keys[s, r]
        if m <= 0.0:
            continue
        f = reduction.key_feature[k, r]
        z = reduction.atom_z[f, 0]
        d_dn = d_dn_own if f == f0 else meanfield_other_share_grad(share[f - first])
        pa = m * (1.0 - gamma) * math.exp(B[s, r] + z * A[s, f] - log_d)   # alpha-share
        pb = m * gamma * math.exp(B[s, r] - log_d)                          # beta-share
        ga = pa * (d_dd + z * d_dn)
        grad_B_row[r] += ga + pb * d_dd
        grad_A_row[f] += z * ga
    return loss, math.exp(B_self[s] - log_d) * d_dd


# ---- the population: rows of query classes and the given clusters ------------------------------
# One kernel per job and family of methods, so that a run compiles only what it uses: the exact
# kernels, or the mean-field ones (``method`` MEANFIELD or CLOSED_FORM, a run-time int64).
# ``clusters`` (int64 array) selects the clusters to sum over: all of them locally, a shard of them
# on a Dask worker. ``rows`` (int64 array) selects the query classes one call computes: each
# writes only the output rows of its own classes, so several calls on disjoint rows run at once
# on threads (``parallel.run_rows``; the kernels release the GIL). Plain loops, not Numba's
# ``prange``: they compile in a fraction of the time and need no threading layer.
@njit(cache=True, error_model="numpy", inline="always")
def _add_query(reduction, s, k, loss, d_self, grad_A_row, grad_B_row, losses, gA, gB, gS):
    """Add one query's loss and derivatives, weighted by pi_k gamma (and the class size)."""
    weight = reduction.cluster_prob[k] * reduction.mask_ratio
    losses[s] += weight * reduction.class_size[s] * loss
    gS[s] += weight * d_self
    for f in range(grad_A_row.size):
        gA[s, f] += weight * grad_A_row[f]
    for r in range(grad_B_row.size):
        if reduction.other_keys[s, r] > 0.0:
            gB[s, r] += weight * grad_B_row[r] / reduction.other_keys[s, r]


@njit(cache=True, error_model="numpy", nogil=True)
def exact_loss_rows(reduction, A, B, B_self, clusters, rows, losses):
    """losses[s] = sum_k pi_k gamma |s| E[loss of a masked query of class s], exactly, for s in ``rows``
    (L is the sum over all classes)."""
    for s in rows:
        for k in clusters:
            loss = query_loss(EXACT_RUNTIME, reduction, A, B, B_self, s, k)
            losses[s] += reduction.cluster_prob[k] * reduction.mask_ratio * reduction.class_size[s] * loss


@njit(cache=True, error_model="numpy", nogil=True)
def meanfield_loss_rows(method, reduction, A, B, B_self, clusters, rows, losses):
    """The mean-field ``exact_loss_rows`` (``method`` MEANFIELD, or CLOSED_FORM for point-mass
    amplitudes)."""
    unused = np.zeros(0)
    for s in rows:
        for k in clusters:
            if method == CLOSED_FORM:
                loss = closed_form_loss(reduction, A, B, B_self, s, k)
            else:
                loss = meanfield_query_loss_grad(method, reduction, A, B, B_self, s, k, unused, unused, False)[0]
            losses[s] += reduction.cluster_prob[k] * reduction.mask_ratio * reduction.class_size[s] * loss


@njit(cache=True, error_model="numpy", nogil=True)
def exact_loss_grad_rows(reduction, A, B, B_self, clusters, rows, losses, gA, gB, gS, unmasked, masked):
    """Rows ``rows`` of L's per-class terms, its per-entry gradient and the attention by area, exactly.

    Fills losses (S,), dA (S, F), dB (S, S), dB_self (S,), unmasked (K, S, N), masked (K, S) at
    the rows of ``rows`` (zeros in): dB[s, s] is the derivative for one off-diagonal entry
    B[p, q] with p != q both in class s; the attention is that of ``area_attention_rows`` at this
    state (clusters outside ``clusters`` are left at zero), which the gradient's nodes give
    almost for free.
    """
    S, F = A.shape
    grad_A_row = np.zeros(F)
    grad_B_row = np.zeros(S)
    for s in rows:
        for k in clusters:
            grad_A_row[:] = 0.0
            grad_B_row[:] = 0.0
            loss, d_self, masked[k, s] = query_loss_grad(EXACT_RUNTIME, reduction, A, B, B_self, s, k, grad_A_row,
                                                         grad_B_row, unmasked[k, s])
            _add_query(reduction, s, k, loss, d_self, grad_A_row, grad_B_row, losses, gA, gB, gS)


@njit(cache=True, error_model="numpy", nogil=True)
def meanfield_loss_grad_rows(method, reduction, A, B, B_self, clusters, rows, losses, gA, gB, gS):
    """The mean-field ``exact_loss_grad_rows`` (no attention: observables are exact)."""
    S, F = A.shape
    grad_A_row = np.zeros(F)
    grad_B_row = np.zeros(S)
    for s in rows:
        for k in clusters:
            grad_A_row[:] = 0.0
            grad_B_row[:] = 0.0
            if method == CLOSED_FORM:
                loss, d_self = closed_form_loss_grad(reduction, A, B, B_self, s, k, grad_A_row, grad_B_row)
            else:
                loss, d_self = meanfield_query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row,
                                                         grad_B_row, True)
            _add_query(reduction, s, k, loss, d_self, grad_A_row, grad_B_row, losses, gA, gB, gS)


@njit(cache=True, error_model="numpy", nogil=True)
def class_attention_rows(method, reduction, A, B, B_self, clusters, rows, unmasked, masked, on_self):
    """Expected attention of a masked query on every key class, per cluster, for the query
    classes ``rows``.

    Fills unmasked (K, S, S), masked (K, S, S), on_self (K, S): for a masked query of class s in
    cluster k, the expected softmax mass on the unmasked (masked) keys of class r other than
    itself, summed over those keys, and on itself. Each row sums to one. Clusters outside
    ``clusters`` are left at zero.
    """
    for s in rows:
        for k in clusters:
            on_self[k, s] = query_attention(method, reduction, A, B, B_self, s, k, unmasked[k, s], masked[k, s])


@njit(cache=True, error_model="numpy")
def max_areas(reduction):
    """N: the most areas a cluster has."""
    n_areas = 0
    for k in range(reduction.cluster_prob.size):
        n_areas = max(n_areas, reduction.feature_stop[k] - reduction.feature_start[k])
    return n_areas


@njit(cache=True, error_model="numpy", nogil=True)
def area_attention_rows(method, reduction, A, B, B_self, clusters, rows, unmasked, masked):
    """Expected attention per area along a trajectory, for the (time, class) pairs ``rows``.

    A (T, S, F), B (T, S, S), B_self (T, S); row ts is time ts // S and query class ts % S.
    Fills unmasked (T, K, S, N), masked (T, K, S): the mass of a masked query of class s in
    cluster k on the unmasked keys of each area of its cluster (N = most areas of a cluster), and
    on masked keys, itself included. Only what the phase times and targets need: never the
    (T, K, S, S) per-key maps.
    """
    S = B_self.shape[1]
    for ts in rows:
        ti = ts // S
        s = ts % S
        for k in clusters:
            hidden, on_self = query_area_attention(method, reduction, A[ti], B[ti], B_self[ti], s, k,
                                                   unmasked[ti, k, s])
            masked[ti, k, s] = hidden + on_self


def compiled_before() -> bool:
    """Whether Numba's cache already holds the main kernels (a first run compiles them: about 10 s
    on 2 cores, measured)."""
    try:
        return all(os.path.exists(kernel._cache._cache_file._index_path)
                   for kernel in (exact_loss_grad_rows, area_attention_rows))
    except AttributeError:          # another Numba's internals: assume compiled, say nothing
        return True


# every file whose code these kernels compile in: Numba's cache sees only this one (numba_cache)
CACHE_SOURCES = tuple(Path(__file__).with_name(name)
                      for name in ("kernels.py", "_generated.py", "quadrature.py", "_quadrature_rules.py",
                                   "vector_math.py"))
numba_cache.refresh(globals(), CACHE_SOURCES)
