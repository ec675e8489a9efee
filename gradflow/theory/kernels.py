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
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ._generated import (
    exact_key_derivatives,
    exact_key_moments,
    meanfield_key_derivatives,
    meanfield_key_moments,
    meanfield_other_share_grad,
    meanfield_query_terms,
)
from .quadrature import G_STOP, T_CAP, grid, node

EXACT = 0
MEANFIELD = 1
CLOSED_FORM = 2      # mean field with point-mass amplitudes: a rational function, no t-integral
METHODS = {"exact": EXACT, "meanfield": MEANFIELD}
# the method passed on inside the kernels as a run-time int64, never as a literal: every query
# kernel is then compiled once, whichever caller reaches it first
EXACT_RUNTIME = np.int64(EXACT)


class QueryKeys(NamedTuple):
    """The keys one masked query sees, contiguous in area order (built once per query).

    Only key classes with m' > 0 appear; keys of area j of the query's cluster are
    ``bounds[j]`` .. ``bounds[j + 1] - 1``. Linear weights are 0 where e^{log weight} is not
    safely finite, which sends ``_scaled`` to its log-space branch.
    """

    key_class: np.ndarray    # (R,) int64: the class r of key i
    key_m: np.ndarray        # (R,) m'_r
    log_beta: np.ndarray     # (R,) masked log weight B[s, r]
    beta: np.ndarray         # (R,)
    log_alpha: np.ndarray    # (Amax, R) unmasked log weight B[s, r] + z_a A[s, f(r)], per atom
    alpha: np.ndarray        # (Amax, R)
    bounds: np.ndarray       # (N + 1,) int64


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
# what the kernels store per (key class, atom) at a node, for the gradient and attention passes
TA, TB, U, W = 0, 1, 2, 3
N_STORED = 4


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
def key_moments(method, ta, tb, u, w, gamma):
    """(M, V, Qm): the key's tilted unmasked mean, variance and masked mass (SymPy's)."""
    if method == MEANFIELD:
        return meanfield_key_moments(ta, tb, u, w, gamma)
    return exact_key_moments(ta, tb, u, w, gamma)


@njit(cache=True, inline="always")
def key_derivatives(method, ta, tb, u, w, gamma):
    """(dL_a, dL_b, dM_a, dM_b, dV_a, dV_b) along log alpha and log beta (SymPy's)."""
    if method == MEANFIELD:
        return meanfield_key_derivatives(ta, tb, u, w, gamma)
    return exact_key_derivatives(ta, tb, u, w, gamma)


@njit(cache=True)
def logaddexp(a, b):
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(cache=True)
def _linear(log_w):
    """e^{log_w} where it is safely finite, else 0 (a flag for _scaled to stay in logs)."""
    return math.exp(log_w) if -600.0 < log_w < 600.0 else 0.0


@njit(cache=True)
def _scaled(t, sigma, log_w, lin):
    """t * e^{log_w}, capped: a product when both factors are safely finite (saves an exp)."""
    if lin > 0.0 and -600.0 < sigma < 600.0:
        return min(t * lin, T_CAP)
    return min(math.exp(sigma + log_w), T_CAP)


# ---- one query: weights, grid, per-area sums --------------------------------------------------
@njit(cache=True, inline="always")
def query_keys(reduction, A, B, B_self, s, k):
    """The keys of query class s in cluster k in area order, and the bounds of D.

    Returns (QueryKeys, log c, log D_min, log D_max): the bounds of D over all masks and atoms
    set the t-grid of the integrals.
    """
    S = reduction.other_keys.shape[0]
    amax = reduction.atom_z.shape[1]
    first, stop = reduction.feature_start[k], reduction.feature_stop[k]
    R = 0
    for r in range(S):
        if reduction.other_keys[s, r] > 0.0:
            R += 1
    keys = QueryKeys(np.empty(R, np.int64), np.empty(R), np.empty(R), np.empty(R), np.zeros((amax, R)),
                     np.zeros((amax, R)), np.empty(stop - first + 1, np.int64))
    log_c = B_self[s]
    lo = log_c                  # log D_min, log D_max: in logs (always safe) ...
    hi = log_c
    d_min = 0.0                 # ... and in linear form while every weight is safely finite
    d_max = 0.0
    linear = -600.0 < log_c < 600.0
    i = 0
    for f in range(first, stop):
        keys.bounds[f - first] = i
        for ii in range(reduction.area_start[f], reduction.area_stop[f]):
            r = reduction.keys_by_area[k, ii]
            m = reduction.other_keys[s, r]
            if m <= 0.0:
                continue
            lb = B[s, r]
            keys.key_class[i] = r
            keys.key_m[i] = m
            keys.log_beta[i] = lb
            keys.beta[i] = _linear(lb)
            amin = np.inf
            amax_r = -np.inf
            lin_min = keys.beta[i]
            lin_max = keys.beta[i]
            for a in range(reduction.n_atoms[f]):
                la = lb + reduction.atom_z[f, a] * A[s, f]
                keys.log_alpha[a, i] = la
                keys.alpha[a, i] = _linear(la)
                amin = min(amin, la)
                amax_r = max(amax_r, la)
                lin_min = min(lin_min, keys.alpha[a, i])
                lin_max = max(lin_max, keys.alpha[a, i])
            if linear and lin_min > 0.0:                 # every weight of this key safely finite
                d_min += m * lin_min
                d_max += m * lin_max
            else:
                if linear:              # switch to logs, carrying the linear sums over
                    lo = logaddexp(lo, math.log(d_min)) if d_min > 0.0 else lo
                    hi = logaddexp(hi, math.log(d_max)) if d_max > 0.0 else hi
                    linear = False
                lm = math.log(m)
                lo = logaddexp(lo, lm + min(lb, amin))
                hi = logaddexp(hi, lm + max(lb, amax_r))
            i += 1
    keys.bounds[stop - first] = i
    if linear:
        c = math.exp(log_c)
        return keys, log_c, math.log(c + d_min), math.log(c + d_max)
    return keys, log_c, lo, hi


@njit(cache=True, inline="always")
def new_area_terms(n_areas, amax):
    return AreaTerms(np.empty(n_areas), np.empty(n_areas), np.empty(n_areas), np.empty((n_areas, amax)),
                     np.empty((n_areas, amax)), np.empty((n_areas, amax)), np.empty((n_areas, amax)))


@njit(cache=True, inline="always")
def area_terms(method, reduction, k, sigma, keys, terms, stored, store):
    """Fill ``terms`` at t = e^sigma for every area of cluster k; returns sum_j log Phi_j.

    Per area and atom, log prod_r phi_r^{m'_r} = sum_r m'_r (log psi_r - shift_r): the psi of keys
    seen once are multiplied (renormalised before they could underflow) and one log is taken per
    area and atom, not one per key. With ``store`` (ta, tb, u, w) of every (atom, key) are kept in
    ``stored`` for the gradient and attention passes.
    """
    # locals, not fields: LLVM then keeps the arrays' pointers in registers
    gamma = reduction.mask_ratio
    one_minus_gamma = 1.0 - gamma
    atom_z, atom_log_weight, n_atoms = reduction.atom_z, reduction.atom_log_weight, reduction.n_atoms
    key_m, log_alpha, alpha, log_beta, beta = keys.key_m, keys.log_alpha, keys.alpha, keys.log_beta, keys.beta
    bounds = keys.bounds
    t_mu, t2_var, log_post, t_masked = terms.t_mu, terms.t2_var, terms.log_post, terms.t_masked
    total = 0.0
    t = math.exp(sigma)
    first = reduction.feature_start[k]
    for f in range(first, reduction.feature_stop[k]):
        j = f - first
        nat = n_atoms[f]
        lphi = -np.inf
        for a in range(nat):
            z = atom_z[f, a]
            shift = 0.0             # sum_r m'_r shift_r
            log_psi = 0.0           # sum_r m'_r log psi_r, but for the running product below
            product = 1.0           # prod of psi_r over keys seen once
            mu = 0.0
            var = 0.0
            hidden = 0.0
            for i in range(bounds[j], bounds[j + 1]):
                m = key_m[i]
                ta = _scaled(t, sigma, log_alpha[a, i], alpha[a, i])
                tb = _scaled(t, sigma, log_beta[i], beta[i])
                key_shift, psi, u, w = key_primitives(method, ta, tb, gamma, one_minus_gamma)
                mean, variance, masked = key_moments(method, ta, tb, u, w, gamma)
                if store:
                    stored[a, i, TA] = ta
                    stored[a, i, TB] = tb
                    stored[a, i, U] = u
                    stored[a, i, W] = w
                shift += m * key_shift
                if m == 1.0:
                    product *= psi
                    if product < 1e-280:        # psi >= min(gamma, 1 - gamma): renormalise in time
                        log_psi += math.log(product)
                        product = 1.0
                elif psi != 1.0:
                    log_psi += m * math.log(psi)
                mu += m * mean
                var += m * variance
                hidden += m * masked
            t_mu[j, a] = z * mu
            t2_var[j, a] = z * z * var
            t_masked[j, a] = hidden
            log_post[j, a] = atom_log_weight[f, a] + log_psi + math.log(product) - shift
            lphi = log_post[j, a] if nat == 1 else logaddexp(lphi, log_post[j, a])
        if nat == 1:   # point mass: the posterior is the atom itself, no exp/log needed
            log_post[j, 0] = 0.0
            terms.log_phi[j] = lphi
            terms.e1[j] = atom_z[f, 0] * t_mu[j, 0]
            terms.e2[j] = t_mu[j, 0] * t_mu[j, 0] + t2_var[j, 0]
            total += lphi
            continue
        acc1 = 0.0
        acc2 = 0.0
        for a in range(nat):
            log_post[j, a] -= lphi
            p = math.exp(log_post[j, a])
            acc1 += p * atom_z[f, a] * t_mu[j, a]
            acc2 += p * (t_mu[j, a] * t_mu[j, a] + t2_var[j, a])
        terms.log_phi[j] = lphi
        terms.e1[j] = acc1
        terms.e2[j] = acc2
        total += lphi
    return total


@njit(cache=True, inline="always")
def query_setup(reduction, A, B, B_self, s, k, store):
    """What one masked query's integrals share: (its keys, per-area work arrays, the store of
    key quantities, log c, and the t-grid's sigma offset, first x, number of nodes).

    A plain tuple, unpacked at once: a NamedTuple of arrays carried through the node loop costs
    ~25% of the kernel's time (measured)."""
    keys, log_c, log_dmin, log_dmax = query_keys(reduction, A, B, B_self, s, k)
    amax = reduction.atom_z.shape[1]
    terms = new_area_terms(reduction.feature_stop[k] - reduction.feature_start[k], amax)
    # the gradient and attention passes keep every key's (ta, tb, u, w); the loss needs sums only
    stored = np.empty((amax, keys.key_m.size, N_STORED)) if store else np.empty((1, 1, N_STORED))
    rule, offset, x0, n = grid(log_dmin, log_dmax)
    return keys, terms, stored, log_c, rule, offset, x0, n


@njit(cache=True, inline="always")
def _sum_e2(terms):
    s2 = 0.0
    for j in range(terms.e2.size):
        s2 += terms.e2[j]
    return s2


# ---- one query: the three integrals -----------------------------------------------------------
@njit(cache=True)
def query_loss(method, reduction, A, B, B_self, s, k):
    """Expected loss of a masked query of class s in cluster k."""
    keys, terms, stored, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, False)
    j0 = reduction.key_feature[k, s] - reduction.feature_start[k]
    integral = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, stored, False)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)                   # G = e^{-tc} prod_j Phi_j
        if G < G_STOP:
            break
        integrand = G * (-terms.e1[j0] + 0.5 * _sum_e2(terms))
        integral += h * integrand
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral


@njit(cache=True)
def query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row):
    """Expected loss of a masked query (class s, cluster k) and its derivatives.

    Adds d loss / d A[s, f] to ``grad_A_row`` (F,) and d loss / d B[s, r], summed over the keys
    of class r, to ``grad_B_row`` (S,); returns (loss, d loss / d B_self[s]).
    """
    keys, terms, stored, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, True)
    gamma = reduction.mask_ratio
    first = reduction.feature_start[k]
    j0 = reduction.key_feature[k, s] - first
    integral = 0.0
    d_self = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, stored, True)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)                   # G = e^{-tc} prod_j Phi_j, decreasing in t
        if G < G_STOP:
            break
        s2 = _sum_e2(terms)
        integrand = G * (-terms.e1[j0] + 0.5 * s2)
        integral += h * integrand
        d_self -= h * tc * integrand                     # d/d log c of G is -tc G
        # a parameter acting on area j moves its factors: product rule over log Phi_j, t mu, t^2 var
        for f in range(first, reduction.feature_stop[k]):
            j = f - first
            own = j == j0
            c_phi = 0.5 * (s2 - terms.e2[j]) - (0.0 if own else terms.e1[j0])
            c1 = -1.0 if own else 0.0
            for a in range(reduction.n_atoms[f]):
                wa = h * G * math.exp(terms.log_post[j, a])
                if wa == 0.0:
                    continue
                z = reduction.atom_z[f, a]
                tm = terms.t_mu[j, a]
                cl = c_phi + c1 * z * tm + 0.5 * (tm * tm + terms.t2_var[j, a])
                cm = z * (c1 * z + tm)
                cv = 0.5 * z * z
                acc_a = 0.0
                for i in range(keys.bounds[j], keys.bounds[j + 1]):
                    m = keys.key_m[i]
                    dl_a, dl_b, dm_a, dm_b, dv_a, dv_b = key_derivatives(
                        method, stored[a, i, TA], stored[a, i, TB], stored[a, i, U], stored[a, i, W], gamma)
                    ga = cl * dl_a + cm * dm_a + cv * dv_a
                    gb = cl * dl_b + cm * dm_b + cv * dv_b
                    grad_B_row[keys.key_class[i]] += wa * m * (ga + gb)
                    acc_a += m * ga
                grad_A_row[f] += wa * z * acc_a
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral, d_self


@njit(cache=True)
def query_attention(method, reduction, A, B, B_self, s, k, unmasked_row, masked_row):
    """Expected attention of a masked query (class s, cluster k).

    Adds the expected mass on the unmasked (``unmasked_row``) and masked (``masked_row``) keys of
    every class, summed over the keys of the class, and returns the mass on the query itself.
    """
    keys, terms, stored, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, True)
    gamma = reduction.mask_ratio
    on_self = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, stored, True)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)                   # G = e^{-tc} prod_j Phi_j, decreasing in t
        if G < G_STOP:
            break
        on_self += h * G * tc                            # E[c / D] = int G t c d sigma
        for f in range(reduction.feature_start[k], reduction.feature_stop[k]):
            j = f - reduction.feature_start[k]
            for a in range(reduction.n_atoms[f]):
                wa = h * G * math.exp(terms.log_post[j, a])
                for i in range(keys.bounds[j], keys.bounds[j + 1]):
                    m = keys.key_m[i]
                    mean, _, masked = key_moments(method, stored[a, i, TA], stored[a, i, TB], stored[a, i, U],
                                                  stored[a, i, W], gamma)
                    r = keys.key_class[i]
                    unmasked_row[r] += wa * m * mean
                    masked_row[r] += wa * m * masked
    return on_self


@njit(cache=True)
def query_area_attention(method, reduction, A, B, B_self, s, k, unmasked_by_area):
    """Expected attention of a masked query (class s, cluster k), summed per area.

    Adds to ``unmasked_by_area`` (N,) the mass on the unmasked keys of each area of the cluster and
    returns (mass on masked keys, mass on itself). One pass over the keys per node: the per-area
    sums of the loss pass are all it needs.
    """
    keys, terms, stored, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, False)
    first = reduction.feature_start[k]
    on_self = 0.0
    masked = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, i)
        sum_log_phi = area_terms(method, reduction, k, sigma, keys, terms, stored, False)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)
        if G < G_STOP:
            break
        on_self += h * G * tc                            # E[c / D] = int G t c d sigma
        for f in range(first, reduction.feature_stop[k]):
            j = f - first
            for a in range(reduction.n_atoms[f]):
                wa = h * G * math.exp(terms.log_post[j, a])
                unmasked_by_area[j] += wa * terms.t_mu[j, a] / reduction.atom_z[f, a]
                masked += wa * terms.t_masked[j, a]
    return masked, on_self


# ---- mean field with random amplitudes: the same integral, linear in t per area ---------------
# With every count at its mean, log phi_r = -t (gamma beta_r + (1-gamma) alpha_r) and t mu is
# t (1-gamma) alpha_r: per area and atom only the sums over keys C and M enter, so each node costs
# O(areas x atoms), not O(keys x atoms). Used while every weight is safely finite (|log w| < 600).
@njit(cache=True, inline="always")
def meanfield_area_sums(reduction, keys, k):
    """(C, M, Qb): per area j and atom a, C = sum_r m (gamma beta + (1-gamma) alpha_a) (log Phi =
    log w_a - t C), M = (1-gamma) sum_r m alpha_a (t mu = z t M), Qb[j] = gamma sum_r m beta."""
    gamma = reduction.mask_ratio
    first = reduction.feature_start[k]
    n_areas = reduction.feature_stop[k] - first
    amax = reduction.atom_z.shape[1]
    C = np.zeros((n_areas, amax))
    M = np.zeros((n_areas, amax))
    Qb = np.zeros(n_areas)
    for j in range(n_areas):
        for i in range(keys.bounds[j], keys.bounds[j + 1]):
            m = keys.key_m[i]
            Qb[j] += gamma * m * keys.beta[i]
            for a in range(reduction.n_atoms[first + j]):
                C[j, a] += m * (gamma * keys.beta[i] + (1.0 - gamma) * keys.alpha[a, i])
                M[j, a] += (1.0 - gamma) * m * keys.alpha[a, i]
    return C, M, Qb


@njit(cache=True, inline="always")
def linear_weights_safe(keys):
    """Every weight of the query safely finite in linear form (see _linear)."""
    for i in range(keys.beta.size):
        if keys.beta[i] == 0.0:
            return False
    for a in range(keys.alpha.shape[0]):
        for i in range(keys.alpha.shape[1]):
            if keys.alpha[a, i] == 0.0 and keys.log_alpha[a, i] != 0.0:
                return False
    return True


@njit(cache=True, inline="always")
def meanfield_node(reduction, k, t, C, M, terms):
    """Per-area sums of the mean-field integrand at t (as area_terms); returns sum_j log Phi_j."""
    first = reduction.feature_start[k]
    total = 0.0
    for j in range(C.shape[0]):
        f = first + j
        nat = reduction.n_atoms[f]
        lphi = -np.inf
        for a in range(nat):
            terms.t_mu[j, a] = reduction.atom_z[f, a] * t * M[j, a]
            terms.log_post[j, a] = reduction.atom_log_weight[f, a] - t * C[j, a]
            lphi = terms.log_post[j, a] if nat == 1 else logaddexp(lphi, terms.log_post[j, a])
        acc1 = 0.0
        acc2 = 0.0
        for a in range(nat):
            terms.log_post[j, a] -= lphi
            p = 1.0 if nat == 1 else math.exp(terms.log_post[j, a])
            tm = terms.t_mu[j, a]
            acc1 += p * reduction.atom_z[f, a] * tm
            acc2 += p * tm * tm
        terms.log_phi[j] = lphi
        terms.e1[j] = acc1
        terms.e2[j] = acc2
        total += lphi
    return total


@njit(cache=True)
def meanfield_query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row, want_grad):
    """Mean-field loss of a masked query (class s, cluster k) and, with ``want_grad``, its
    derivatives (as ``query_loss_grad``); falls back to the per-key integral when a weight is
    not safely finite."""
    keys, terms, stored, log_c, rule, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, want_grad)
    if not linear_weights_safe(keys):       # (method is MEANFIELD, passed on at run time)
        if want_grad:
            return query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row)
        # the loss alone through the gradient kernel: one compiled kernel less for a rare path
        F, S = reduction.n_atoms.size, reduction.other_keys.shape[0]
        return query_loss_grad(method, reduction, A, B, B_self, s, k, np.zeros(F), np.zeros(S))[0], 0.0
    C, M, _ = meanfield_area_sums(reduction, keys, k)
    first = reduction.feature_start[k]
    j0 = reduction.key_feature[k, s] - first
    X = np.zeros(C.shape)          # sum over nodes of wa t (cm - cl): moves alpha
    Y = np.zeros(C.shape)          # sum over nodes of wa t cl: moves beta
    integral = 0.0
    d_self = 0.0
    for i in range(n):
        sigma, h = node(rule, offset, x0, i)
        t = math.exp(sigma)
        sum_log_phi = meanfield_node(reduction, k, t, C, M, terms)
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
        for j in range(C.shape[0]):
            own = j == j0
            c_phi = 0.5 * (s2 - terms.e2[j]) - (0.0 if own else terms.e1[j0])
            c1 = -1.0 if own else 0.0
            for a in range(reduction.n_atoms[first + j]):
                wa = h * G * math.exp(terms.log_post[j, a])
                z = reduction.atom_z[first + j, a]
                tm = terms.t_mu[j, a]
                cl = c_phi + c1 * z * tm + 0.5 * tm * tm
                cm = z * (c1 * z + tm)
                X[j, a] += wa * t * (cm - cl)
                Y[j, a] += wa * t * cl
    if want_grad:
        gamma = reduction.mask_ratio
        for j in range(C.shape[0]):
            f = first + j
            for a in range(reduction.n_atoms[f]):
                grad_A_row[f] += reduction.atom_z[f, a] * M[j, a] * X[j, a]
                for i in range(keys.bounds[j], keys.bounds[j + 1]):
                    grad_B_row[keys.key_class[i]] += keys.key_m[i] * (
                        (1.0 - gamma) * keys.alpha[a, i] * X[j, a] - gamma * keys.beta[i] * Y[j, a])
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral, d_self


# ---- mean field with point-mass amplitudes: the SymPy closed form, no integral ----------------
@njit(cache=True)
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


@njit(cache=True)
def _meanfield_terms(reduction, share, s, k):
    s2 = 0.0
    for j in range(share.size):
        s2 += share[j] * share[j]
    f0 = reduction.key_feature[k, s]
    return meanfield_query_terms(reduction.atom_z[f0, 0], share[f0 - reduction.feature_start[k]], s2)


@njit(cache=True)
def closed_form_loss(reduction, A, B, B_self, s, k):
    """Mean-field query loss for point-mass amplitudes."""
    _, share = meanfield_shares(reduction, A, B, B_self, s, k)
    return _meanfield_terms(reduction, share, s, k)[0]


@njit(cache=True)
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


# ---- the population: every query class (in parallel) and the given clusters ---------------------
# One kernel per job and family of methods, so that a run compiles only what it uses: the exact
# kernels, or the mean-field ones (``method`` MEANFIELD or CLOSED_FORM, a run-time int64).
# ``clusters`` (int64 array) selects the clusters to sum over: all of them locally, a shard of them
# on a Dask worker.
@njit(cache=True, inline="always")
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


@njit(cache=True, parallel=True)
def exact_population_loss(reduction, A, B, B_self, clusters):
    """L = sum_k pi_k sum_s |s| gamma E[loss of a masked query of class s], exactly."""
    S = reduction.other_keys.shape[0]
    losses = np.zeros(S)
    for si in prange(S):
        s = np.int64(si)
        for k in clusters:
            loss = query_loss(EXACT_RUNTIME, reduction, A, B, B_self, s, k)
            losses[s] += reduction.cluster_prob[k] * reduction.mask_ratio * reduction.class_size[s] * loss
    return losses.sum()


@njit(cache=True, parallel=True)
def meanfield_population_loss(method, reduction, A, B, B_self, clusters):
    """The mean-field L (``method`` MEANFIELD, or CLOSED_FORM for point-mass amplitudes)."""
    S = reduction.other_keys.shape[0]
    losses = np.zeros(S)
    for si in prange(S):
        s = np.int64(si)
        unused = np.zeros(0)
        for k in clusters:
            if method == CLOSED_FORM:
                loss = closed_form_loss(reduction, A, B, B_self, s, k)
            else:
                loss = meanfield_query_loss_grad(method, reduction, A, B, B_self, s, k, unused, unused, False)[0]
            losses[s] += reduction.cluster_prob[k] * reduction.mask_ratio * reduction.class_size[s] * loss
    return losses.sum()


@njit(cache=True, parallel=True)
def exact_population_loss_grad(reduction, A, B, B_self, clusters):
    """L and its per-entry gradient (dA (S, F), dB (S, S), dB_self (S,)), exactly.

    dB[s, s] is the derivative for one off-diagonal entry B[p, q] with p != q both in class s.
    Query classes run in parallel; each writes only its own rows.
    """
    S, F = A.shape
    gA, gB, gS, losses = np.zeros((S, F)), np.zeros((S, S)), np.zeros(S), np.zeros(S)
    for si in prange(S):
        s = np.int64(si)
        grad_A_row = np.zeros(F)
        grad_B_row = np.zeros(S)
        for k in clusters:
            grad_A_row[:] = 0.0
            grad_B_row[:] = 0.0
            loss, d_self = query_loss_grad(EXACT_RUNTIME, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row)
            _add_query(reduction, s, k, loss, d_self, grad_A_row, grad_B_row, losses, gA, gB, gS)
    return losses.sum(), gA, gB, gS


@njit(cache=True, parallel=True)
def meanfield_population_loss_grad(method, reduction, A, B, B_self, clusters):
    """The mean-field L and its per-entry gradient (as ``exact_population_loss_grad``)."""
    S, F = A.shape
    gA, gB, gS, losses = np.zeros((S, F)), np.zeros((S, S)), np.zeros(S), np.zeros(S)
    for si in prange(S):
        s = np.int64(si)
        grad_A_row = np.zeros(F)
        grad_B_row = np.zeros(S)
        for k in clusters:
            grad_A_row[:] = 0.0
            grad_B_row[:] = 0.0
            if method == CLOSED_FORM:
                loss, d_self = closed_form_loss_grad(reduction, A, B, B_self, s, k, grad_A_row, grad_B_row)
            else:
                loss, d_self = meanfield_query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row,
                                                         grad_B_row, True)
            _add_query(reduction, s, k, loss, d_self, grad_A_row, grad_B_row, losses, gA, gB, gS)
    return losses.sum(), gA, gB, gS


@njit(cache=True, parallel=True)
def attention_by_class(method, reduction, A, B, B_self, clusters):
    """Expected attention of a masked query on every key class, per cluster.

    Returns (unmasked (K, S, S), masked (K, S, S), on_self (K, S)): for a masked query of class s
    in cluster k, the expected softmax mass on the unmasked (masked) keys of class r other than
    itself, summed over those keys, and on itself. Each row sums to one. Clusters outside
    ``clusters`` are left at zero.
    """
    S = A.shape[0]
    K = reduction.cluster_prob.size
    unmasked = np.zeros((K, S, S))
    masked = np.zeros((K, S, S))
    on_self = np.zeros((K, S))
    for si in prange(S):
        s = np.int64(si)
        for k in clusters:
            on_self[k, s] = query_attention(method, reduction, A, B, B_self, s, k, unmasked[k, s], masked[k, s])
    return unmasked, masked, on_self


@njit(cache=True, parallel=True)
def attention_by_area(method, reduction, A, B, B_self, clusters):
    """Expected attention per area along a trajectory, in one call (parallel over times x classes).

    A (T, S, F), B (T, S, S), B_self (T, S). Returns (unmasked (T, K, S, N), masked (T, K, S)): the
    mass of a masked query of class s in cluster k on the unmasked keys of each area of its cluster
    (N = most areas of a cluster), and on masked keys, itself included. Only what the phase times
    and targets need: never the (T, K, S, S) per-key maps.
    """
    T, S = B_self.shape
    K = reduction.cluster_prob.size
    n_areas = 0
    for k in range(K):
        n_areas = max(n_areas, reduction.feature_stop[k] - reduction.feature_start[k])
    unmasked = np.zeros((T, K, S, n_areas))
    masked = np.zeros((T, K, S))
    for ts in prange(T * S):
        ti = np.int64(ts // S)
        s = np.int64(ts % S)
        for k in clusters:
            hidden, on_self = query_area_attention(method, reduction, A[ti], B[ti], B_self[ti], s, k,
                                                   unmasked[ti, k, s])
            masked[ti, k, s] = hidden + on_self
    return unmasked, masked


def compiled_before() -> bool:
    """Whether Numba's cache already holds the main kernels (a first run compiles them: ~10 s)."""
    try:
        return all(os.path.exists(kernel._cache._cache_file._index_path)
                   for kernel in (exact_population_loss_grad, attention_by_area))
    except AttributeError:          # another Numba's internals: assume compiled, say nothing
        return True
