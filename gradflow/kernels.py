"""Numba kernels: the exact and mean-field expected loss, its gradient, and expected attention.

They implement MODEL.md section 4 for one masked query class at a time. The expectation over
masks is never enumerated: 1/D and 1/D^2 become integrals over t of e^{-tD}, under which the keys
factorise; the integrals are trapezoid sums on a uniform grid in sigma = log t, everything in log
space. The per-key factors come from ``_generated`` (SymPy); see derivations/README.md.

Conventions: a query of class s in cluster k sees key class r with the log weights
log beta_r = B[s, r] (masked) and log alpha_{r,a} = B[s, r] + z_a A[s, f(r)] (unmasked, atom a of
its area's amplitude) and its own weight log c = B_self[s]. Gradients returned are per entry of
the per-position matrices (the derivative of L with respect to one A[p, f] or B[p, q]).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._generated import (exact_key_factors, meanfield_key_factors, meanfield_other_share_grad,
                         meanfield_query_terms)

EXACT = 0
MEANFIELD = 1
METHODS = {"exact": EXACT, "meanfield": MEANFIELD}

# sigma grid of the t integrals (MODEL.md section 4): a trapezoid rule on a smooth, doubly
# decaying integrand converges geometrically; step 0.2 with these paddings reaches ~1e-15.
GRID_STEP = 0.2
GRID_LEFT = 40.0    # below sigma = -log D_max the integrand decays like e^sigma
GRID_RIGHT = 5.0    # above sigma = -log D_min it decays like exp(-e^(sigma - sigma_min))
_T_CAP = 1e100      # t*w beyond this has e^{-t w} == 0 exactly; the cap keeps products finite

N_FAC = 10          # outputs of a key-factor function, see _generated


@njit(cache=True)
def _key_factors(method, ta, tb, g, log_g, log_1mg):
    if method == EXACT:
        return exact_key_factors(ta, tb, g, log_g, log_1mg)
    return meanfield_key_factors(ta, tb, g, log_g, log_1mg)


@njit(cache=True)
def _logaddexp(a, b):
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(cache=True)
def _query_weights(s, k, A, B, B_self, mprime, class_feature, zval, natoms, gamma,
                   log_alpha, log_beta):
    """Fill the log weights of every key class for query class s in cluster k.

    Returns (log c, log D_min, log D_max): bounds of D over all masks and atoms, which set the
    t-grid of the integrals.
    """
    S = mprime.shape[0]
    log_c = B_self[s]
    lo = log_c
    hi = log_c
    for r in range(S):
        m = mprime[s, r]
        if m <= 0.0:
            continue
        f = class_feature[k, r]
        lb = B[s, r]
        log_beta[r] = lb
        amin = np.inf
        amax = -np.inf
        for a in range(natoms[f]):
            la = lb + zval[f, a] * A[s, f]
            log_alpha[r, a] = la
            amin = min(amin, la)
            amax = max(amax, la)
        lm = math.log(m)
        lo = _logaddexp(lo, lm + min(lb, amin))
        hi = _logaddexp(hi, lm + max(lb, amax))
    return log_c, lo, hi


@njit(cache=True)
def _grid(log_dmin, log_dmax):
    """Start and number of points of the sigma grid for one query."""
    s0 = -log_dmax - GRID_LEFT
    n = int(math.ceil((-log_dmin + GRID_RIGHT - s0) / GRID_STEP)) + 1
    return s0, n


@njit(cache=True)
def _area_pass(method, sigma, s, k, mprime, keys_by_area, area_start, area_stop, feat_lo, feat_hi,
               zval, logw, natoms, gamma, log_g, log_1mg, log_alpha, log_beta,
               log_phi, e1, e2, logpost, tmu, tvar, fac):
    """Per-area sums at one grid point (the first pass, shared by loss, gradient, attention).

    For every area f of cluster k fills log Phi_f, E1_f = E_post[z t mu], E2_f =
    E_post[(t mu)^2 + t^2 var] and per atom the log posterior, t mu, t^2 var; stores the key
    factors of every (key class, atom) in fac. Returns sum_f log Phi_f.
    """
    total = 0.0
    for f in range(feat_lo[k], feat_hi[k]):
        j = f - feat_lo[k]
        nat = natoms[f]
        lphi = -np.inf
        for a in range(nat):
            z = zval[f, a]
            lp = 0.0
            mu = 0.0
            var = 0.0
            for i in range(area_start[f], area_stop[f]):
                r = keys_by_area[k, i]
                m = mprime[s, r]
                if m <= 0.0:
                    continue
                ta = min(math.exp(sigma + log_alpha[r, a]), _T_CAP)
                tb = min(math.exp(sigma + log_beta[r]), _T_CAP)
                out = _key_factors(method, ta, tb, gamma, log_g, log_1mg)
                for q in range(N_FAC):
                    fac[r, a, q] = out[q]
                lp += m * out[0]
                mu += m * out[1]
                var += m * out[2]
            tmu[j, a] = z * mu
            tvar[j, a] = z * z * var
            logpost[j, a] = logw[f, a] + lp
            lphi = _logaddexp(lphi, logpost[j, a])
        acc1 = 0.0
        acc2 = 0.0
        for a in range(nat):
            logpost[j, a] -= lphi
            p = math.exp(logpost[j, a])
            acc1 += p * zval[f, a] * tmu[j, a]
            acc2 += p * (tmu[j, a] * tmu[j, a] + tvar[j, a])
        log_phi[j] = lphi
        e1[j] = acc1
        e2[j] = acc2
        total += lphi
    return total


@njit(cache=True)
def _closed_form_meanfield(s, k, A, B, B_self, mprime, class_feature, keys_by_area, area_start,
                           area_stop, feat_lo, feat_hi, zval, gamma, want_grad, gA_row, gB_row):
    """Mean-field query loss for point-mass amplitudes: no integral, the SymPy closed form."""
    S = mprime.shape[0]
    log_c = B_self[s]
    log_d = log_c
    for r in range(S):
        m = mprime[s, r]
        if m <= 0.0:
            continue
        f = class_feature[k, r]
        la = B[s, r] + zval[f, 0] * A[s, f]
        log_d = _logaddexp(log_d, math.log(m) + _logaddexp(math.log(gamma) + B[s, r],
                                                           math.log1p(-gamma) + la))
    f0 = class_feature[k, s]
    nf = feat_hi[k] - feat_lo[k]
    share = np.zeros(nf)
    for f in range(feat_lo[k], feat_hi[k]):
        acc = 0.0
        for i in range(area_start[f], area_stop[f]):
            r = keys_by_area[k, i]
            m = mprime[s, r]
            if m > 0.0:
                acc += m * (1.0 - gamma) * math.exp(B[s, r] + zval[f, 0] * A[s, f] - log_d)
        share[f - feat_lo[k]] = zval[f, 0] * acc
    s2 = 0.0
    for j in range(nf):
        s2 += share[j] * share[j]
    z0 = zval[f0, 0]
    loss, d_dd, d_dn_own = meanfield_query_terms(z0, share[f0 - feat_lo[k]], s2)
    if not want_grad:
        return loss, 0.0
    for r in range(S):
        m = mprime[s, r]
        if m <= 0.0:
            continue
        f = class_feature[k, r]
        z = zval[f, 0]
        d_dn = d_dn_own if f == f0 else meanfield_other_share_grad(share[f - feat_lo[k]])
        pa = m * (1.0 - gamma) * math.exp(B[s, r] + z * A[s, f] - log_d)   # alpha-share
        pb = m * gamma * math.exp(B[s, r] - log_d)                          # beta-share
        ga = pa * (d_dd + z * d_dn)
        gB_row[r] += ga + pb * d_dd
        gA_row[f] += z * ga
    return loss, math.exp(log_c - log_d) * d_dd


@njit(cache=True)
def _integral_query(method, s, k, A, B, B_self, mprime, class_feature, keys_by_area, area_start,
                    area_stop, feat_lo, feat_hi, zval, logw, natoms, ez2, gamma, want_grad,
                    gA_row, gB_row):
    """Expected loss of one masked query (class s, cluster k) by the t integral; adds the
    derivatives with respect to its class parameters to gA_row (F,), gB_row (S,).
    Returns (loss, d loss / d B_self[s])."""
    S = mprime.shape[0]
    amax = zval.shape[1]
    nf = feat_hi[k] - feat_lo[k]
    log_alpha = np.zeros((S, amax))
    log_beta = np.zeros(S)
    log_c, log_dmin, log_dmax = _query_weights(s, k, A, B, B_self, mprime, class_feature, zval,
                                               natoms, gamma, log_alpha, log_beta)
    log_g = math.log(gamma)
    log_1mg = math.log1p(-gamma)
    log_phi = np.empty(nf)
    e1 = np.empty(nf)
    e2 = np.empty(nf)
    logpost = np.empty((nf, amax))
    tmu = np.empty((nf, amax))
    tvar = np.empty((nf, amax))
    fac = np.empty((S, amax, N_FAC))
    j0 = class_feature[k, s] - feat_lo[k]
    s0, n = _grid(log_dmin, log_dmax)
    h = GRID_STEP
    integral = 0.0
    g_self = 0.0
    for i in range(n):
        sigma = s0 + i * h
        sum_lphi = _area_pass(method, sigma, s, k, mprime, keys_by_area, area_start, area_stop,
                              feat_lo, feat_hi, zval, logw, natoms, gamma, log_g, log_1mg,
                              log_alpha, log_beta, log_phi, e1, e2, logpost, tmu, tvar, fac)
        tc = min(math.exp(sigma + log_c), _T_CAP)
        G = math.exp(sum_lphi - tc)
        if G == 0.0:
            continue
        s2 = 0.0
        for j in range(nf):
            s2 += e2[j]
        integrand = G * (-e1[j0] + 0.5 * s2)
        integral += h * integrand
        if not want_grad:
            continue
        g_self -= h * tc * integrand
        for f in range(feat_lo[k], feat_hi[k]):
            j = f - feat_lo[k]
            own = j == j0
            c_phi = 0.5 * (s2 - e2[j]) - (0.0 if own else e1[j0])
            c1 = -1.0 if own else 0.0
            for a in range(natoms[f]):
                wa = h * G * math.exp(logpost[j, a])
                if wa == 0.0:
                    continue
                z = zval[f, a]
                tm = tmu[j, a]
                cl = c_phi + c1 * z * tm + 0.5 * (tm * tm + tvar[j, a])
                cm = z * (c1 * z + tm)
                cv = 0.5 * z * z
                acc_a = 0.0
                for ii in range(area_start[f], area_stop[f]):
                    r = keys_by_area[k, ii]
                    m = mprime[s, r]
                    if m <= 0.0:
                        continue
                    ga = cl * fac[r, a, 4] + cm * fac[r, a, 6] + cv * fac[r, a, 8]
                    gb = cl * fac[r, a, 5] + cm * fac[r, a, 7] + cv * fac[r, a, 9]
                    gB_row[r] += wa * m * (ga + gb)
                    acc_a += m * ga
                gA_row[f] += wa * z * acc_a
    return 0.5 * ez2[class_feature[k, s]] + integral, g_self


@njit(cache=True)
def loss_and_grad(method, want_grad, A, B, B_self, sizes, mprime, class_feature, feat_lo, feat_hi,
                  keys_by_area, area_start, area_stop, zval, logw, natoms, ez2, probs, gamma,
                  closed_form):
    """Population loss L and its per-entry gradient (dA (S, F), dB (S, S), dB_self (S,)).

    L = sum_k pi_k sum_s |s| gamma E[loss of a masked query of class s]. dB[s, s] is the
    derivative for one off-diagonal entry B[p, q] with p != q both in class s.
    """
    S, F = A.shape
    K = probs.size
    gA = np.zeros((S, F))
    gB = np.zeros((S, S))
    gS = np.zeros(S)
    gA_row = np.zeros(F)
    gB_row = np.zeros(S)
    total = 0.0
    for k in range(K):
        for s in range(S):
            gA_row[:] = 0.0
            gB_row[:] = 0.0
            if closed_form:
                loss, g_self = _closed_form_meanfield(
                    s, k, A, B, B_self, mprime, class_feature, keys_by_area, area_start, area_stop,
                    feat_lo, feat_hi, zval, gamma, want_grad, gA_row, gB_row)
            else:
                loss, g_self = _integral_query(
                    method, s, k, A, B, B_self, mprime, class_feature, keys_by_area, area_start,
                    area_stop, feat_lo, feat_hi, zval, logw, natoms, ez2, gamma, want_grad,
                    gA_row, gB_row)
            weight = probs[k] * gamma
            total += weight * sizes[s] * loss
            if want_grad:
                gS[s] += weight * g_self
                for f in range(F):
                    gA[s, f] += weight * gA_row[f]
                for r in range(S):
                    if mprime[s, r] > 0.0:
                        gB[s, r] += weight * gB_row[r] / mprime[s, r]
    return total, gA, gB, gS


@njit(cache=True)
def attention_mass(method, A, B, B_self, sizes, mprime, class_feature, feat_lo, feat_hi,
                   keys_by_area, area_start, area_stop, zval, logw, natoms, ez2, probs, gamma):
    """Expected attention of a masked query on every key class, per cluster.

    Returns (unmasked (K, S, S), masked (K, S, S), self (K, S)): for a masked query of class s in
    cluster k, the expected softmax mass on the unmasked (masked) keys of class r other than
    itself, summed over those keys, and on itself. Each row sums to one.
    """
    S, F = A.shape
    K = probs.size
    amax = zval.shape[1]
    unm = np.zeros((K, S, S))
    msk = np.zeros((K, S, S))
    slf = np.zeros((K, S))
    log_alpha = np.zeros((S, amax))
    log_beta = np.zeros(S)
    fac = np.empty((S, amax, N_FAC))
    log_g = math.log(gamma)
    log_1mg = math.log1p(-gamma)
    h = GRID_STEP
    for k in range(K):
        nf = feat_hi[k] - feat_lo[k]
        log_phi = np.empty(nf)
        e1 = np.empty(nf)
        e2 = np.empty(nf)
        logpost = np.empty((nf, amax))
        tmu = np.empty((nf, amax))
        tvar = np.empty((nf, amax))
        for s in range(S):
            log_c, log_dmin, log_dmax = _query_weights(s, k, A, B, B_self, mprime, class_feature,
                                                       zval, natoms, gamma, log_alpha, log_beta)
            s0, n = _grid(log_dmin, log_dmax)
            for i in range(n):
                sigma = s0 + i * h
                sum_lphi = _area_pass(method, sigma, s, k, mprime, keys_by_area, area_start,
                                      area_stop, feat_lo, feat_hi, zval, logw, natoms, gamma, log_g,
                                      log_1mg, log_alpha, log_beta, log_phi, e1, e2, logpost, tmu,
                                      tvar, fac)
                tc = min(math.exp(sigma + log_c), _T_CAP)
                G = math.exp(sum_lphi - tc)
                if G == 0.0:
                    continue
                slf[k, s] += h * G * tc
                for f in range(feat_lo[k], feat_hi[k]):
                    j = f - feat_lo[k]
                    for a in range(natoms[f]):
                        wa = h * G * math.exp(logpost[j, a])
                        for ii in range(area_start[f], area_stop[f]):
                            r = keys_by_area[k, ii]
                            m = mprime[s, r]
                            if m <= 0.0:
                                continue
                            unm[k, s, r] += wa * m * fac[r, a, 1]
                            msk[k, s, r] += wa * m * fac[r, a, 3]
    return unm, msk, slf
