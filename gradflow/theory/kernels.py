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

The per-key factors (log phi, t mu, t^2 var, the masked mass and their derivatives along
log alpha and log beta) come from ``_generated`` (SymPy) and are stored and read by name
(``LOG_PHI``, ``MEAN``, ...). Everything is in log space; nothing over- or underflows.
Gradients returned are per entry of the per-position matrices (the derivative of L with respect
to one A[p, f] or B[p, q]).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ._generated import (
    D_LOG_PHI_A,
    D_LOG_PHI_B,
    D_MEAN_A,
    D_MEAN_B,
    D_VAR_A,
    D_VAR_B,
    LOG_PHI,
    MASKED,
    MEAN,
    N_FACTORS,
    VAR,
    exact_key_factors,
    meanfield_key_factors,
    meanfield_other_share_grad,
    meanfield_query_terms,
)
from .quadrature import T_CAP, grid, node

EXACT = 0
MEANFIELD = 1
METHODS = {"exact": EXACT, "meanfield": MEANFIELD}


class KeyWeights(NamedTuple):
    """Log weights of every key class seen by one query (and their safe linear values)."""

    log_alpha: np.ndarray    # (S, Amax) unmasked, per atom of the key's area
    log_beta: np.ndarray     # (S,) masked
    alpha: np.ndarray        # (S, Amax) e^{log_alpha} where safely finite, else 0
    beta: np.ndarray         # (S,)


class AreaTerms(NamedTuple):
    """Per-area sums of one query at one node of the t-grid (j indexes the cluster's areas)."""

    log_phi: np.ndarray      # (N,) log Phi_j
    e1: np.ndarray           # (N,) E_post[z t mu_j]
    e2: np.ndarray           # (N,) E_post[(t mu_j)^2 + t^2 var_j]
    log_post: np.ndarray     # (N, Amax) log posterior weight of every atom
    t_mu: np.ndarray         # (N, Amax) t mu_j given the atom
    t2_var: np.ndarray       # (N, Amax) t^2 var_j given the atom


# ---- scalar helpers ---------------------------------------------------------------------------
@njit(cache=True)
def key_factors(method, ta, tb, g, log_g, log_1mg):
    """The ten factors of one key (``_generated``) for the exact or the mean-field method."""
    if method == EXACT:
        return exact_key_factors(ta, tb, g, log_g, log_1mg)
    return meanfield_key_factors(ta, tb, g, log_g, log_1mg)


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
def key_weights(reduction, A, B, B_self, s, k):
    """Log weights of every key class for query class s in cluster k.

    Returns (KeyWeights, log c, log D_min, log D_max): the bounds of D over all masks and atoms
    set the t-grid of the integrals.
    """
    S = reduction.other_keys.shape[0]
    amax = reduction.atom_z.shape[1]
    w = KeyWeights(np.zeros((S, amax)), np.zeros(S), np.zeros((S, amax)), np.zeros(S))
    log_c = B_self[s]
    lo = log_c
    hi = log_c
    for r in range(S):
        m = reduction.other_keys[s, r]
        if m <= 0.0:
            continue
        f = reduction.key_feature[k, r]
        lb = B[s, r]
        w.log_beta[r] = lb
        w.beta[r] = _linear(lb)
        amin = np.inf
        amax_r = -np.inf
        for a in range(reduction.n_atoms[f]):
            la = lb + reduction.atom_z[f, a] * A[s, f]
            w.log_alpha[r, a] = la
            w.alpha[r, a] = _linear(la)
            amin = min(amin, la)
            amax_r = max(amax_r, la)
        lm = math.log(m)
        lo = logaddexp(lo, lm + min(lb, amin))
        hi = logaddexp(hi, lm + max(lb, amax_r))
    return w, log_c, lo, hi


@njit(cache=True, inline="always")
def new_area_terms(n_areas, amax):
    return AreaTerms(np.empty(n_areas), np.empty(n_areas), np.empty(n_areas), np.empty((n_areas, amax)),
                     np.empty((n_areas, amax)), np.empty((n_areas, amax)))


@njit(cache=True, inline="always")
def area_terms(method, reduction, s, k, sigma, weights, log_g, log_1mg, terms, factors, store):
    """Fill ``terms`` at t = e^sigma for every area of cluster k; returns sum_j log Phi_j.

    With ``store`` the factors of every (key class, atom) are kept in ``factors`` for the
    gradient and attention passes.
    """
    # the record's arrays as locals: LLVM then keeps their pointers in registers
    gamma = reduction.mask_ratio
    other_keys, keys_by_area = reduction.other_keys, reduction.keys_by_area
    area_start, area_stop = reduction.area_start, reduction.area_stop
    atom_z, atom_log_weight, n_atoms = reduction.atom_z, reduction.atom_log_weight, reduction.n_atoms
    log_alpha, alpha, log_beta, beta = weights.log_alpha, weights.alpha, weights.log_beta, weights.beta
    t_mu, t2_var, log_post = terms.t_mu, terms.t2_var, terms.log_post
    total = 0.0
    t = math.exp(sigma)
    first = reduction.feature_start[k]
    for f in range(first, reduction.feature_stop[k]):
        j = f - first
        nat = n_atoms[f]
        lphi = -np.inf
        for a in range(nat):
            z = atom_z[f, a]
            lp = 0.0
            mu = 0.0
            var = 0.0
            for i in range(area_start[f], area_stop[f]):
                r = keys_by_area[k, i]
                m = other_keys[s, r]
                if m <= 0.0:
                    continue
                ta = _scaled(t, sigma, log_alpha[r, a], alpha[r, a])
                tb = _scaled(t, sigma, log_beta[r], beta[r])
                (log_phi, mean, variance, masked, d_log_phi_a, d_log_phi_b, d_mean_a, d_mean_b, d_var_a,
                 d_var_b) = key_factors(method, ta, tb, gamma, log_g, log_1mg)
                if store:
                    factors[r, a, LOG_PHI] = log_phi
                    factors[r, a, MEAN] = mean
                    factors[r, a, VAR] = variance
                    factors[r, a, MASKED] = masked
                    factors[r, a, D_LOG_PHI_A] = d_log_phi_a
                    factors[r, a, D_LOG_PHI_B] = d_log_phi_b
                    factors[r, a, D_MEAN_A] = d_mean_a
                    factors[r, a, D_MEAN_B] = d_mean_b
                    factors[r, a, D_VAR_A] = d_var_a
                    factors[r, a, D_VAR_B] = d_var_b
                lp += m * log_phi
                mu += m * mean
                var += m * variance
            t_mu[j, a] = z * mu
            t2_var[j, a] = z * z * var
            log_post[j, a] = atom_log_weight[f, a] + lp
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
    """What one masked query's integrals share: (key weights, per-area work arrays, factor store,
    log c, log gamma, log(1 - gamma), and the t-grid's sigma offset, first x, number of nodes).

    A plain tuple, unpacked at once: a NamedTuple of arrays carried through the node loop costs
    ~25% of the kernel's time (measured)."""
    weights, log_c, log_dmin, log_dmax = key_weights(reduction, A, B, B_self, s, k)
    amax = reduction.atom_z.shape[1]
    terms = new_area_terms(reduction.feature_stop[k] - reduction.feature_start[k], amax)
    # the gradient and attention passes keep every key's factors; the loss needs sums only
    factors = np.empty((reduction.other_keys.shape[0], amax, N_FACTORS)) if store else np.empty((1, 1, N_FACTORS))
    offset, x0, n = grid(log_dmin, log_dmax)
    gamma = reduction.mask_ratio
    return weights, terms, factors, log_c, math.log(gamma), math.log1p(-gamma), offset, x0, n


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
    weights, terms, factors, log_c, log_g, log_1mg, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, False)
    j0 = reduction.key_feature[k, s] - reduction.feature_start[k]
    integral = 0.0
    for i in range(n):
        sigma, h = node(offset, x0, i)
        sum_log_phi = area_terms(method, reduction, s, k, sigma, weights, log_g, log_1mg, terms, factors, False)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)
        if G == 0.0:
            continue
        integrand = G * (-terms.e1[j0] + 0.5 * _sum_e2(terms))
        integral += h * integrand
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral


@njit(cache=True)
def query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row):
    """Expected loss of a masked query (class s, cluster k) and its derivatives.

    Adds d loss / d A[s, f] to ``grad_A_row`` (F,) and d loss / d B[s, r], summed over the keys
    of class r, to ``grad_B_row`` (S,); returns (loss, d loss / d B_self[s]).
    """
    weights, terms, factors, log_c, log_g, log_1mg, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, True)
    first = reduction.feature_start[k]
    j0 = reduction.key_feature[k, s] - first
    integral = 0.0
    d_self = 0.0
    for i in range(n):
        sigma, h = node(offset, x0, i)
        sum_log_phi = area_terms(method, reduction, s, k, sigma, weights, log_g, log_1mg, terms, factors, True)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)
        if G == 0.0:
            continue
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
                for ii in range(reduction.area_start[f], reduction.area_stop[f]):
                    r = reduction.keys_by_area[k, ii]
                    m = reduction.other_keys[s, r]
                    if m <= 0.0:
                        continue
                    ga = cl * factors[r, a, D_LOG_PHI_A] + cm * factors[r, a, D_MEAN_A] + cv * factors[r, a, D_VAR_A]
                    gb = cl * factors[r, a, D_LOG_PHI_B] + cm * factors[r, a, D_MEAN_B] + cv * factors[r, a, D_VAR_B]
                    grad_B_row[r] += wa * m * (ga + gb)
                    acc_a += m * ga
                grad_A_row[f] += wa * z * acc_a
    return 0.5 * reduction.mean_z2[reduction.key_feature[k, s]] + integral, d_self


@njit(cache=True)
def query_attention(method, reduction, A, B, B_self, s, k, unmasked_row, masked_row):
    """Expected attention of a masked query (class s, cluster k).

    Adds the expected mass on the unmasked (``unmasked_row``) and masked (``masked_row``) keys of
    every class, summed over the keys of the class, and returns the mass on the query itself.
    """
    weights, terms, factors, log_c, log_g, log_1mg, offset, x0, n = query_setup(reduction, A, B, B_self, s, k, True)
    on_self = 0.0
    for i in range(n):
        sigma, h = node(offset, x0, i)
        sum_log_phi = area_terms(method, reduction, s, k, sigma, weights, log_g, log_1mg, terms, factors, True)
        tc = min(math.exp(sigma + log_c), T_CAP)
        G = math.exp(sum_log_phi - tc)
        if G == 0.0:
            continue
        on_self += h * G * tc                            # E[c / D] = int G t c d sigma
        for f in range(reduction.feature_start[k], reduction.feature_stop[k]):
            j = f - reduction.feature_start[k]
            for a in range(reduction.n_atoms[f]):
                wa = h * G * math.exp(terms.log_post[j, a])
                for ii in range(reduction.area_start[f], reduction.area_stop[f]):
                    r = reduction.keys_by_area[k, ii]
                    m = reduction.other_keys[s, r]
                    if m > 0.0:
                        unmasked_row[r] += wa * m * factors[r, a, MEAN]
                        masked_row[r] += wa * m * factors[r, a, MASKED]
    return on_self


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


# ---- the population: every query class (in parallel) and every cluster -------------------------
@njit(cache=True, parallel=True)
def population_loss(method, reduction, A, B, B_self, closed_form):
    """L = sum_k pi_k sum_s |s| gamma E[loss of a masked query of class s]."""
    S = reduction.other_keys.shape[0]
    losses = np.zeros(S)
    for s in prange(S):
        for k in range(reduction.cluster_prob.size):
            if closed_form:
                loss = closed_form_loss(reduction, A, B, B_self, s, k)
            else:
                loss = query_loss(method, reduction, A, B, B_self, s, k)
            losses[s] += reduction.cluster_prob[k] * reduction.mask_ratio * reduction.class_size[s] * loss
    return losses.sum()


@njit(cache=True, parallel=True)
def population_loss_grad(method, reduction, A, B, B_self, closed_form):
    """L and its per-entry gradient (dA (S, F), dB (S, S), dB_self (S,)).

    dB[s, s] is the derivative for one off-diagonal entry B[p, q] with p != q both in class s.
    Query classes run in parallel; each writes only its own rows.
    """
    S, F = A.shape
    gA = np.zeros((S, F))
    gB = np.zeros((S, S))
    gS = np.zeros(S)
    losses = np.zeros(S)
    for s in prange(S):
        grad_A_row = np.zeros(F)
        grad_B_row = np.zeros(S)
        for k in range(reduction.cluster_prob.size):
            grad_A_row[:] = 0.0
            grad_B_row[:] = 0.0
            if closed_form:
                loss, d_self = closed_form_loss_grad(reduction, A, B, B_self, s, k, grad_A_row, grad_B_row)
            else:
                loss, d_self = query_loss_grad(method, reduction, A, B, B_self, s, k, grad_A_row, grad_B_row)
            weight = reduction.cluster_prob[k] * reduction.mask_ratio
            losses[s] += weight * reduction.class_size[s] * loss
            gS[s] += weight * d_self
            for f in range(F):
                gA[s, f] += weight * grad_A_row[f]
            for r in range(S):
                if reduction.other_keys[s, r] > 0.0:
                    gB[s, r] += weight * grad_B_row[r] / reduction.other_keys[s, r]
    return losses.sum(), gA, gB, gS


@njit(cache=True, parallel=True)
def attention_by_class(method, reduction, A, B, B_self):
    """Expected attention of a masked query on every key class, per cluster.

    Returns (unmasked (K, S, S), masked (K, S, S), on_self (K, S)): for a masked query of class s
    in cluster k, the expected softmax mass on the unmasked (masked) keys of class r other than
    itself, summed over those keys, and on itself. Each row sums to one.
    """
    S = A.shape[0]
    K = reduction.cluster_prob.size
    unmasked = np.zeros((K, S, S))
    masked = np.zeros((K, S, S))
    on_self = np.zeros((K, S))
    for s in prange(S):
        for k in range(K):
            on_self[k, s] = query_attention(method, reduction, A, B, B_self, s, k, unmasked[k, s], masked[k, s])
    return unmasked, masked, on_self
