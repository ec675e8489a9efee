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
written in (ta, tb, u, w). Per node only (ta, tb, u, w) of every key are stored (``TA``, ``TB``,
``U``, ``W``) for the gradient and attention passes. Logs of products, never products of large
numbers: nothing over- or underflows.
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
from .quadrature import G_STOP, T_CAP, grid, node
from .vector_math import exp_nonpositive

EXACT = 0
MEANFIELD = 1
CLOSED_FORM = 2      # mean field with point-mass amplitudes: a rational function, no t-integral
METHODS = {"exact": EXACT, "meanfield": MEANFIELD}
# the method passed on inside the kernels as a run-time int64, never as a literal: every query
# kernel is then compiled once, whichever caller reaches it first
EXACT_RUNTIME = np.int64(EXACT)


class QueryKeys(NamedTuple):
    """The (atom, key) pairs one masked query sees, flat and padded (built once per query).

    A *segment* is one (area j, atom a) of the query's cluster; its pairs are the keys of area j
    with atom a's weights: first the keys seen once (m' = 1), padded with neutral pairs to a
    multiple of ``LANES`` (weights 0: they add exactly nothing to any sum, and loops over whole
    blocks vectorise without remainder), then the keys of larger classes (m' > 1). Segments of
    area j are ``area_seg[j]`` .. ``area_seg[j + 1] - 1``, one per atom in order. Only key classes
    with m' > 0 appear. Linear weights are 0 where e^{log weight} is not safely finite, which sends
    ``_scaled`` to its log-space branch; ``linear`` says that no weight needs it.
    """

    pair_class: np.ndarray   # (NP,) int64: the class r of the pair's key; -1 for padding
    pair_m: np.ndarray       # (NP,) m'_r (1 for padding)
    pair_z: np.ndarray       # (NP,) amplitude z_a of the pair's atom
    log_alpha: np.ndarray    # (NP,) unmasked log weight B[s, r] + z_a A[s, f(r)] (-inf for padding)
    alpha: np.ndarray        # (NP,)
    log_beta: np.ndarray     # (NP,) masked log weight B[s, r] (-inf for padding)
    beta: np.ndarray         # (NP,)
    seg_start: np.ndarray    # (NS + 1,) int64: pairs of segment q are seg_start[q] .. seg_start[q + 1] - 1
    seg_multi: np.ndarray    # (NS,) int64: of those, seg_multi[q] .. are the keys with m' > 1
    area_seg: np.ndarray     # (N + 1,) int64
    linear: bool             # every weight safely finite in linear form


class AreaTerms(NamedTuple):
    """Per-area sums of one query at one node of the t-grid (j indexes the cluster's areas)."""

    log_phi: np.ndarray      # (N,) log Phi_j
    e1: np.ndarray           # (N,) E_post[z t mu_j]
    e2: np.ndarray           # (N,) E_post[(t mu_j)^2 + t^2 var_j]
    log_post: np.ndarray     # (N, Amax) log posterior weight of every atom
    t_mu: np.ndarray         # (N, Amax) t mu_j given the atom
    t2_var: np.ndarray       # (N, Amax) t^2 var_j given the atom
    t_masked: np.ndarray     # (N, Amax) t times the tilted masked weight of the area, given the atom


# ---- scalar helpers ---------------------------------------------------------------------------
# what the kernels keep per pair at a node (rows of ``stored``), for the sums and the gradient
# and attention passes
TA, TB, U, W, PSI, SHIFT = 0, 1, 2, 3, 4, 5
N_STORED = 6
LANES = 4           # pairs per vector block
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
@njit(cache=True, error_model="numpy")
def query_keys(reduction, A, B, B_self, s, k):
    """The (atom, key) pairs of query class s in cluster k (``QueryKeys``) and the bounds of D.

    Returns (QueryKeys, log c, log D_min, log D_max): the bounds of D over all masks and atoms
    set the t-grid of the integrals.
    """
    first, stop = reduction.feature_start[k], reduction.feature_stop[k]
    n_areas = stop - first
    # sizes: per area the keys seen once (padded) and the others, times the area's atoms
    n_pairs = 0
    n_segments = 0
    for f in range(first, stop):
        ones = 0
        multi = 0
        for ii in range(reduction.area_start[f], reduction.area_stop[f]):
            m = reduction.other_keys[s, reduction.keys_by_area[k, ii]]
            if m == 1.0:
                ones += 1
            elif m > 0.0:
                multi += 1
        n_pairs += reduction.n_atoms[f] * ((ones + LANES - 1) // LANES * LANES + multi)
        n_segments += reduction.n_atoms[f]
    # padding pairs: no class, m' = 1, weights 0 (ta = tb = 0: psi = 1 and every moment 0)
    pair_class = np.full(n_pairs, -1, np.int64)
    pair_m = np.ones(n_pairs)
    pair_z = np.ones(n_pairs)
    log_alpha = np.full(n_pairs, -np.inf)
    alpha = np.zeros(n_pairs)
    log_beta = np.full(n_pairs, -np.inf)
    beta = np.zeros(n_pairs)
    seg_start = np.empty(n_segments + 1, np.int64)
    seg_multi = np.empty(n_segments, np.int64)
    area_seg = np.empty(n_areas + 1, np.int64)
    log_c = B_self[s]
    lo = log_c                  # log D_min, log D_max: in logs (always safe) ...
    hi = log_c
    d_min = 0.0                 # ... and in linear form while every weight is safely finite
    d_max = 0.0
    linear = -600.0 < log_c < 600.0
    all_linear = True
    p = 0
    q = 0
    for f in range(first, stop):
        area_seg[f - first] = q
        for a in range(reduction.n_atoms[f]):
            z = reduction.atom_z[f, a]
            seg_start[q] = p
            for once in (True, False):
                if not once:
                    p = seg_start[q] + (p - seg_start[q] + LANES - 1) // LANES * LANES   # padding
                    seg_multi[q] = p
                for ii in range(reduction.area_start[f], reduction.area_stop[f]):
                    r = reduction.keys_by_area[k, ii]
                    m = reduction.other_keys[s, r]
                    if m <= 0.0 or (m == 1.0) != once:
                        continue
                    lb = B[s, r]
                    la = lb + z * A[s, f]
                    pair_class[p] = r
                    pair_m[p] = m
                    pair_z[p] = z
                    log_beta[p] = lb
                    beta[p] = _linear(lb)
                    log_alpha[p] = la
                    alpha[p] = _linear(la)
                    if beta[p] == 0.0 or alpha[p] == 0.0:
                        all_linear = False
                    p += 1
            q += 1
        # D bounds from the keys of the area (each key's smallest and largest weight over atoms)
        for ii in range(reduction.area_start[f], reduction.area_stop[f]):
            r = reduction.keys_by_area[k, ii]
            m = reduction.other_keys[s, r]
            if m <= 0.0:
                continue
            lb = B[s, r]
            amin = lb
            amax_r = lb
            for a in range(reduction.n_atoms[f]):
                la = lb + reduction.atom_z[f, a] * A[s, f]
                amin = min(amin, la)
                amax_r = max(amax_r, la)
            if linear and -600.0 < amin and amax_r < 600.0:      # every weight of this key safely finite
                d_min += m * math.exp(amin)
                d_max += m * math.exp(amax_r)
            else:
                if linear:              # switch to logs, carrying the linear sums over
                    lo = logaddexp(lo, math.log(d_min)) if d_min > 0.0 else lo
                    hi = logaddexp(hi, math.log(d_max)) if d_max > 0.0 else hi
                    linear = False
                lm = math.log(m)
                lo = logaddexp(lo, lm + amin)
                hi = logaddexp(hi, lm + amax_r)
    seg_start[n_segments] = p
    area_seg[n_areas] = q
    keys = QueryKeys(pair_class, pair_m, pair_z, log_alpha, alpha, log_beta, beta, seg_start, seg_multi, area_seg,
                     all_linear)
    if linear:
        c = math.exp(log_c)
        return keys, log_c, math.log(c + d_min), math.log(c + d_max)
    return keys, log_c, lo, hi


@njit(cache=True, error_model="numpy", inline="always")
def new_area_terms(n_areas, amax):
    return AreaTerms(np.empty(n_areas), np.empty(n_areas), np.empty(n_areas), np.empty((n_areas, amax)),
                     np.empty((n_areas, amax)), np.empty((n_areas, amax)), np.empty((n_areas, amax)))


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


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS)
def exact_pairs_linear(t, gamma, alpha, beta, stored):
    """Every pair's (ta, tb, u, w, psi, shift) at t into ``stored``: exact method, every weight
    safely finite. One long loop that LLVM vectorises."""
    one_minus_gamma = 1.0 - gamma
    ta_row, tb_row, u_row, w_row, psi_row, shift_row = (stored[TA], stored[TB], stored[U], stored[W],
                                                        stored[PSI], stored[SHIFT])
    for p in range(alpha.size):
        ta, tb, psi, u, w = exact_pair_linear(t, alpha[p], beta[p], gamma, one_minus_gamma)
        ta_row[p] = ta
        tb_row[p] = tb
        u_row[p] = u
        w_row[p] = w
        psi_row[p] = psi
        shift_row[p] = min(ta, tb)


@njit(cache=True, error_model="numpy")
def pairs_general(method, t, sigma, gamma, keys, stored):
    """As ``exact_pairs_linear`` for any method and any weights (logs where need be)."""
    one_minus_gamma = 1.0 - gamma
    for p in range(keys.alpha.size):
        ta = _scaled(t, sigma, keys.log_alpha[p], keys.alpha[p])
        tb = _scaled(t, sigma, keys.log_beta[p], keys.beta[p])
        shift, psi, u, w = key_primitives(method, ta, tb, gamma, one_minus_gamma)
        stored[TA, p] = ta
        stored[TB, p] = tb
        stored[U, p] = u
        stored[W, p] = w
        stored[PSI, p] = psi
        stored[SHIFT, p] = shift


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS, inline="always")
def _block_sums(method, gamma, stored, s0, n_blocks):
    """(sum shift, prod psi, sum M, sum V, sum Qm) over ``n_blocks`` whole blocks of pairs from
    s0 (keys seen once, m' = 1)."""
    ta_row, tb_row, u_row, w_row, psi_row, shift_row = (stored[TA], stored[TB], stored[U], stored[W],
                                                        stored[PSI], stored[SHIFT])
    shift = 0.0
    product = 1.0
    mu = 0.0
    var = 0.0
    hidden = 0.0
    for p in range(s0, s0 + LANES * n_blocks):
        mean, variance, masked = key_moments(method, ta_row[p], tb_row[p], u_row[p], w_row[p], gamma)
        shift += shift_row[p]
        product *= psi_row[p]
        mu += mean
        var += variance
        hidden += masked
    return shift, product, mu, var, hidden


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS)
def segment_sums(method, gamma, keys, stored, chunk, sums):
    """Per segment q: sums[:, q] = (sum m' shift, sum m' log psi, sum m' M, sum m' V, sum m' Qm).

    The psi of keys seen once are multiplied, ``chunk`` pairs at a time at most (psi >=
    min(gamma, 1 - gamma): too few to underflow), with one log per chunk, not one per key."""
    blocks_per_log = chunk // LANES
    for q in range(keys.seg_multi.size):
        s0 = keys.seg_start[q]
        s1 = keys.seg_multi[q]
        n_blocks = (s1 - s0) // LANES
        shift = 0.0
        log_psi = 0.0
        mu = 0.0
        var = 0.0
        hidden = 0.0
        if blocks_per_log == 0:          # min(gamma, 1 - gamma) < 1e-35: a log per pair
            sh, _, mu, var, hidden = _block_sums(method, gamma, stored, s0, n_blocks)
            shift += sh
            for p in range(s0, s1):
                log_psi += math.log(stored[PSI, p])
        else:
            for c0 in range(0, n_blocks, blocks_per_log):
                sh, product, m1, v1, h1 = _block_sums(method, gamma, stored, s0 + LANES * c0,
                                                      min(blocks_per_log, n_blocks - c0))
                shift += sh
                log_psi += math.log(product)
                mu += m1
                var += v1
                hidden += h1
        for p in range(s1, keys.seg_start[q + 1]):         # keys of larger classes: few, one log each
            m = keys.pair_m[p]
            mean, variance, masked = key_moments(method, stored[TA, p], stored[TB, p], stored[U, p], stored[W, p],
                                                 gamma)
            shift += m * stored[SHIFT, p]
            if stored[PSI, p] != 1.0:
                log_psi += m * math.log(stored[PSI, p])
            mu += m * mean
            var += m * variance
            hidden += m * masked
        sums[0, q] = shift
        sums[1, q] = log_psi
        sums[2, q] = mu
        sums[3, q] = var
        sums[4, q] = hidden


@njit(cache=True, error_model="numpy", inline="always")
def area_terms(method, reduction, k, sigma, keys, terms, work):
    """Fill ``terms`` at t = e^sigma for every area of cluster k; returns sum_j log Phi_j.

    Per pair (ta, tb, u, w, psi, shift) go to ``work.stored`` (one vectorised pass when the method
    is exact and every weight safely finite), per segment their sums to ``work.sums``; per area
    and atom, log prod_r phi_r^{m'_r} = sum_r m'_r (log psi_r - shift_r); the atoms' posterior
    comes from one log-sum-exp per area.
    """
    gamma = reduction.mask_ratio
    t = math.exp(sigma)
    if keys.linear and method == EXACT:
        exact_pairs_linear(t, gamma, keys.alpha, keys.beta, work.stored)
    else:
        pairs_general(method, t, sigma, gamma, keys, work.stored)
    sums = work.sums
    segment_sums(method, gamma, keys, work.stored, work.chunk, sums)
    first = reduction.feature_start[k]
    total = 0.0
    for j in range(keys.area_seg.size - 1):
        f = first + j
        q0 = keys.area_seg[j]
        for a in range(keys.area_seg[j + 1] - q0):
            q = q0 + a
            z = reduction.atom_z[f, a]
            terms.t_mu[j, a] = z * sums[2, q]
            terms.t2_var[j, a] = z * z * sums[3, q]
            terms.t_masked[j, a] = sums[4, q]
            terms.log_post[j, a] = reduction.atom_log_weight[f, a] + sums[1, q] - sums[0, q]
        total += atom_posterior(reduction, f, j, keys.area_seg[j + 1] - q0, terms)
    return total


@njit(cache=True, error_model="numpy", inline="always")
def atom_posterior(reduction, f, j, nat, terms):
    """Area j's log Phi_j = log sum_a w_a prod_r phi_r^{m'_r} (given in ``terms.log_post[j]``,
    which becomes the atoms' log posterior), and E1_j, E2_j under that posterior; returns log Phi_j."""
    if nat == 1:   # point mass: the posterior is the atom itself, no exp/log needed
        lphi = terms.log_post[j, 0]
        terms.log_post[j, 0] = 0.0
        terms.log_phi[j] = lphi
        terms.e1[j] = reduction.atom_z[f, 0] * terms.t_mu[j, 0]
        terms.e2[j] = terms.t_mu[j, 0] * terms.t_mu[j, 0] + terms.t2_var[j, 0]
        return lphi
    top = -np.inf
    for a in range(nat):
        top = max(top, terms.log_post[j, a])
    norm = 0.0
    acc1 = 0.0
    acc2 = 0.0
    for a in range(nat):
        weight = math.exp(terms.log_post[j, a] - top)
        norm += weight
        tm = terms.t_mu[j, a]
        acc1 += weight * reduction.atom_z[f, a] * tm
        acc2 += weight * (tm * tm + terms.t2_var[j, a])
    lphi = top + math.log(norm)
    for a in range(nat):
        terms.log_post[j, a] -= lphi
    terms.log_phi[j] = lphi
    terms.e1[j] = acc1 / norm
    terms.e2[j] = acc2 / norm
    return lphi


class QueryWork(NamedTuple):
    """Scratch arrays of one query, reused at every node."""

    stored: np.ndarray       # (N_STORED, NP) per pair at the current node
    sums: np.ndarray         # (5, NS) per segment at the current node
    coef: np.ndarray         # (3, NP) per pair: the gradient pass's (cl, cm, cv) times the atom's weight
    acc: np.ndarray          # (2, NP) per pair, over all nodes: the gradient's (or attention's) sums
    chunk: int               # psi multiplied at most this many at a time (``product_chunk``)


@njit(cache=True, error_model="numpy", inline="always")
def product_chunk(gamma):
    """Pairs whose psi (>= min(gamma, 1 - gamma)) can be multiplied before the product could
    leave the normal range (1e-280)."""
    return max(1, int(280.0 * math.log(10.0) / -math.log(min(gamma, 1.0 - gamma))))


@njit(cache=True, error_model="numpy", inline="always")
def query_setup(reduction, A, B, B_self, s, k):
    """What one masked query's integrals share: (its pairs, per-area terms, scratch, log c, and
    the t-grid's rule, sigma offset, first x, number of nodes).

    A plain tuple, unpacked at once: a NamedTuple of arrays carried through the node loop costs
    ~25% of the kernel's time (measured)."""
    keys, log_c, log_dmin, log_dmax = query_keys(reduction, A, B, B_self, s, k)
    amax = reduction.atom_z.shape[1]
    terms = new_area_terms(keys.area_seg.size - 1, amax)
    n_pairs = keys.alpha.size
    work = QueryWork(np.empty((N_STORED, n_pairs)), np.empty((5, keys.seg_multi.size)), np.zeros((3, n_pairs)),
                     np.zeros((2, n_pairs)), product_chunk(reduction.mask_ratio))
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
        if G < G_STOP:
            break
        integral += h * G * (-terms.e1[j0] + 0.5 * _sum_e2(terms))
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS)
def pair_gradients(method, gamma, stored, coef, acc):
    """Add every pair's share of one node to the gradient sums: acc[0] += ga (moves log alpha,
    i.e. A), acc[1] += ga + gb (moves B), with g = cl dL + cm dM + cv dV (SymPy's derivatives)."""
    ta_row, tb_row, u_row, w_row = stored[TA], stored[TB], stored[U], stored[W]
    cl_row, cm_row, cv_row = coef[0], coef[1], coef[2]
    acc_a, acc_b = acc[0], acc[1]
    for p in range(ta_row.size):
        dl_a, dl_b, dm_a, dm_b, dv_a, dv_b = key_derivatives(method, ta_row[p], tb_row[p], u_row[p], w_row[p], gamma)
        cl, cm, cv = cl_row[p], cm_row[p], cv_row[p]
        ga = cl * dl_a + cm * dm_a + cv * dv_a
        acc_a[p] += ga
        acc_b[p] += ga + cl * dl_b + cm * dm_b + cv * dv_b


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
        if G < G_STOP:
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
                wa = h * G * math.exp(terms.log_post[j, a])
                z = reduction.atom_z[first + j, a]
                tm = terms.t_mu[j, a]
                unmasked_by_area[j] += wa * tm / z           # attention, as in query_area_attention
                hidden += wa * terms.t_masked[j, a]
                cl = wa * (c_phi + c1 * z * tm + 0.5 * (tm * tm + terms.t2_var[j, a]))
                cm = wa * z * (c1 * z + tm)
                cv = wa * 0.5 * z * z
                for p in range(keys.seg_start[q], keys.seg_start[q + 1]):
                    coef[0, p] = cl
                    coef[1, p] = cm
                    coef[2, p] = cv
        pair_gradients(method, gamma, work.stored, coef, work.acc)
    for j in range(keys.area_seg.size - 1):
        f = first + j
        for p in range(keys.seg_start[keys.area_seg[j]], keys.seg_start[keys.area_seg[j + 1]]):
            r = keys.pair_class[p]
            if r >= 0:
                m = keys.pair_m[p]
                grad_A_row[f] += keys.pair_z[p] * m * work.acc[0, p]
                grad_B_row[r] += m * work.acc[1, p]
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral, d_self, hidden


@njit(cache=True, error_model="numpy", fastmath=VECTOR_FLAGS)
def pair_attention(method, gamma, stored, weight, acc):
    """Add every pair's share of one node to the attention sums: acc[0] += weight M (unmasked),
    acc[1] += weight Qm (masked), ``weight`` the node's h G times the atom's posterior."""
    ta_row, tb_row, u_row, w_row = stored[TA], stored[TB], stored[U], stored[W]
    unmasked, masked = acc[0], acc[1]
    for p in range(ta_row.size):
        mean, _, hidden = key_moments(method, ta_row[p], tb_row[p], u_row[p], w_row[p], gamma)
        unmasked[p] += weight[p] * mean
        masked[p] += weight[p] * hidden


@njit(cache=True, error_model="numpy")
def query_attention(method, reduction, A, B, B_self, s, k, unmasked_row, masked_row):
    """Expected attention of a masked query (class s, cluster k).

    Adds the expected mass on the unmasked (``unmasked_row``) and masked (``masked_row``) keys of
    every class, summed over the keys of the class, and returns the mass on the query itself.
    """
    keys, terms, work, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k)
    gamma = reduction.mask_ratio
    weight = work.coef[0]
    on_self = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, reduction.grid_step, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, work)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)                   # G = e^{-tc} prod_j Phi_j, decreasing in t
        if G < G_STOP:
            break
        on_self += h * G * tc                            # E[c / D] = int G t c d sigma
        for j in range(keys.area_seg.size - 1):
            for a in range(keys.area_seg[j + 1] - keys.area_seg[j]):
                q = keys.area_seg[j] + a
                wa = h * G * math.exp(terms.log_post[j, a])
                for p in range(keys.seg_start[q], keys.seg_start[q + 1]):
                    weight[p] = wa
        pair_attention(method, gamma, work.stored, weight, work.acc)
    for p in range(keys.pair_class.size):
        r = keys.pair_class[p]
        if r >= 0:
            unmasked_row[r] += keys.pair_m[p] * work.acc[0, p]
            masked_row[r] += keys.pair_m[p] * work.acc[1, p]
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
        if G < G_STOP:
            break
        on_self += h * G * tc                            # E[c / D] = int G t c d sigma
        for j in range(keys.area_seg.size - 1):
            f = first + j
            for a in range(keys.area_seg[j + 1] - keys.area_seg[j]):
                wa = h * G * math.exp(terms.log_post[j, a])
                unmasked_by_area[j] += wa * terms.t_mu[j, a] / reduction.atom_z[f, a]
                masked += wa * terms.t_masked[j, a]
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
        for p in range(keys.seg_start[q], keys.seg_start[q + 1]):
            m = keys.pair_m[p]
            C[q] += m * (gamma * keys.beta[p] + (1.0 - gamma) * keys.alpha[p])
            M[q] += (1.0 - gamma) * m * keys.alpha[p]
    return C, M


@njit(cache=True, error_model="numpy", inline="always")
def meanfield_node(reduction, k, keys, t, C, M, terms):
    """Per-area sums of the mean-field integrand at t (as area_terms); returns sum_j log Phi_j."""
    first = reduction.feature_start[k]
    total = 0.0
    for j in range(keys.area_seg.size - 1):
        f = first + j
        q0 = keys.area_seg[j]
        for a in range(keys.area_seg[j + 1] - q0):
            terms.t_mu[j, a] = reduction.atom_z[f, a] * t * M[q0 + a]
            terms.t2_var[j, a] = 0.0                    # the counts are at their means
            terms.log_post[j, a] = reduction.atom_log_weight[f, a] - t * C[q0 + a]
        total += atom_posterior(reduction, f, j, keys.area_seg[j + 1] - q0, terms)
    return total


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
        if G < G_STOP:
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
                wa = h * G * math.exp(terms.log_post[j, a])
                z = reduction.atom_z[first + j, a]
                tm = terms.t_mu[j, a]
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
                for p in range(keys.seg_start[q], keys.seg_start[q + 1]):
                    r = keys.pair_class[p]
                    if r >= 0:
                        grad_B_row[r] += keys.pair_m[p] * (
                            (1.0 - gamma) * keys.alpha[p] * X[q] - gamma * keys.beta[p] * Y[q])
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
                      for name in ("kernels.py", "_generated.py", "quadrature.py", "vector_math.py"))
numba_cache.refresh(globals(), CACHE_SOURCES)
