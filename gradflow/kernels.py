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
from numba import njit, prange

from ._generated import (exact_key_factors, meanfield_key_factors, meanfield_other_share_grad,
                         meanfield_query_terms)

EXACT = 0
MEANFIELD = 1
METHODS = {"exact": EXACT, "meanfield": MEANFIELD}

# Quadrature of the t integrals (MODEL.md section 4). In sigma = log t the integrand decays like
# e^sigma to the left of -log D_max and like exp(-e^(sigma + log D_min)) to the right. A second
# substitution sigma = -log D_max + x - e^{-x} (Takahasi-Mori's double-exponential map for
# exponentially decaying integrands) makes the left tail decay double-exponentially too, so the
# trapezoid rule in x needs ~4x fewer nodes than a plain sigma grid for the same ~1e-15 accuracy.
GRID_STEP = 0.2     # step in x
GRID_LEFT = 40.0    # first node at e^{-x} = GRID_LEFT: integrand ~ e^{-40} there
GRID_RIGHT = 5.0    # last node at sigma >= -log D_min + GRID_RIGHT
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
def _linear(log_w):
    """e^{log_w} where it is safely finite, else 0 (a flag for _scaled to stay in logs)."""
    return math.exp(log_w) if -600.0 < log_w < 600.0 else 0.0


@njit(cache=True)
def _scaled(t, sigma, log_w, lin):
    """t * e^{log_w}, capped: a product when both factors are safely finite (saves an exp)."""
    if lin > 0.0 and -600.0 < sigma < 600.0:
        return min(t * lin, _T_CAP)
    return min(math.exp(sigma + log_w), _T_CAP)


@njit(cache=True)
def _query_weights(s, k, A, B, B_self, mprime, class_feature, zval, natoms, gamma,
                   log_alpha, log_beta, alpha, beta):
    """Fill the log weights (and safe linear weights) of every key class for query class s in
    cluster k.

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
        beta[r] = _linear(lb)
        amin = np.inf
        amax = -np.inf
        for a in range(natoms[f]):
            la = lb + zval[f, a] * A[s, f]
            log_alpha[r, a] = la
            alpha[r, a] = _linear(la)
            amin = min(amin, la)
            amax = max(amax, la)
        lm = math.log(m)
        lo = _logaddexp(lo, lm + min(lb, amin))
        hi = _logaddexp(hi, lm + max(lb, amax))
    return log_c, lo, hi


@njit(cache=True)
def _grid(log_dmin, log_dmax):
    """(sigma offset, first x, number of nodes) of the quadrature for one query."""
    x0 = -math.log(GRID_LEFT)
    n = int(math.ceil((log_dmax - log_dmin + GRID_RIGHT - x0) / GRID_STEP)) + 1
    return -log_dmax, x0, n


@njit(cache=True)
def _node(offset, x0, i):
    """sigma and the quadrature weight d sigma of node i."""
    x = x0 + i * GRID_STEP
    em = math.exp(-x)
    return offset + x - em, GRID_STEP * (1.0 + em)


@njit(cache=True)
def _area_pass(method, sigma, s, k, mprime, keys_by_area, area_start, area_stop, feat_lo, feat_hi,
               zval, logw, natoms, gamma, log_g, log_1mg, log_alpha, log_beta, alpha, beta,
               log_phi, e1, e2, logpost, tmu, tvar, fac, store):
    """Per-area sums at one grid point (the first pass, shared by loss, gradient, attention).

    For every area f of cluster k fills log Phi_f, E1_f = E_post[z t mu], E2_f =
    E_post[(t mu)^2 + t^2 var] and per atom the log posterior, t mu, t^2 var; stores the key
    factors of every (key class, atom) in fac when ``store``. Returns sum_f log Phi_f.
    """
    total = 0.0
    t = math.exp(sigma)
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
                ta = _scaled(t, sigma, log_alpha[r, a], alpha[r, a])
                tb = _scaled(t, sigma, log_beta[r], beta[r])
                L, M, V, Qm, dLa, dLb, dMa, dMb, dVa, dVb = _key_factors(method, ta, tb, gamma,
                                                                        log_g, log_1mg)
                if store:
                    fac[r, a, 0] = L
                    fac[r, a, 1] = M
                    fac[r, a, 2] = V
                    fac[r, a, 3] = Qm
                    fac[r, a, 4] = dLa
                    fac[r, a, 5] = dLb
                    fac[r, a, 6] = dMa
                    fac[r, a, 7] = dMb
                    fac[r, a, 8] = dVa
                    fac[r, a, 9] = dVb
                lp += m * L
                mu += m * M
                var += m * V
            tmu[j, a] = z * mu
            tvar[j, a] = z * z * var
            logpost[j, a] = logw[f, a] + lp
            lphi = logpost[j, a] if nat == 1 else _logaddexp(lphi, logpost[j, a])
        if nat == 1:   # point mass: the posterior is the atom itself, no exp/log needed
            logpost[j, 0] = 0.0
            log_phi[j] = lphi
            e1[j] = zval[f, 0] * tmu[j, 0]
            e2[j] = tmu[j, 0] * tmu[j, 0] + tvar[j, 0]
            total += lphi
            continue
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


LOSS = 0
GRAD = 1
ATTENTION = 2


@njit(cache=True)
def _integral_query(method, mode, s, k, A, B, B_self, mprime, class_feature, keys_by_area,
                    area_start, area_stop, feat_lo, feat_hi, zval, logw, natoms, ez2, gamma,
                    out_f, out_r, out_r2):
    """The t integrals of one masked query (class s, cluster k).

    mode LOSS: returns (expected loss, 0). mode GRAD: also adds the derivatives with respect to
    the query's class parameters to out_f (F,) (A row) and out_r (S,) (B row, summed over the
    keys of each class) and returns d loss / d B_self[s] second. mode ATTENTION: adds the expected
    mass on the unmasked (out_r) and masked (out_r2) keys of every class and returns
    (mass on itself, 0).
    """
    S = mprime.shape[0]
    amax = zval.shape[1]
    nf = feat_hi[k] - feat_lo[k]
    log_alpha = np.zeros((S, amax))
    log_beta = np.zeros(S)
    alpha = np.zeros((S, amax))
    beta = np.zeros(S)
    log_c, log_dmin, log_dmax = _query_weights(s, k, A, B, B_self, mprime, class_feature, zval,
                                               natoms, gamma, log_alpha, log_beta, alpha, beta)
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
    offset, x0, n = _grid(log_dmin, log_dmax)
    integral = 0.0
    second = 0.0
    for i in range(n):
        sigma, h = _node(offset, x0, i)
        sum_lphi = _area_pass(method, sigma, s, k, mprime, keys_by_area, area_start, area_stop,
                              feat_lo, feat_hi, zval, logw, natoms, gamma, log_g, log_1mg,
                              log_alpha, log_beta, alpha, beta, log_phi, e1, e2, logpost, tmu,
                              tvar, fac, mode != LOSS)
        tc = min(math.exp(sigma + log_c), _T_CAP)
        G = math.exp(sum_lphi - tc)
        if G == 0.0:
            continue
        if mode == ATTENTION:
            integral += h * G * tc
            for f in range(feat_lo[k], feat_hi[k]):
                j = f - feat_lo[k]
                for a in range(natoms[f]):
                    wa = h * G * math.exp(logpost[j, a])
                    for ii in range(area_start[f], area_stop[f]):
                        r = keys_by_area[k, ii]
                        m = mprime[s, r]
                        if m > 0.0:
                            out_r[r] += wa * m * fac[r, a, 1]
                            out_r2[r] += wa * m * fac[r, a, 3]
            continue
        s2 = 0.0
        for j in range(nf):
            s2 += e2[j]
        integrand = G * (-e1[j0] + 0.5 * s2)
        integral += h * integrand
        if mode != GRAD:
            continue
        second -= h * tc * integrand
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
                    out_r[r] += wa * m * (ga + gb)
                    acc_a += m * ga
                out_f[f] += wa * z * acc_a
    if mode == ATTENTION:
        return integral, 0.0
    return 0.5 * ez2[class_feature[k, s]] + integral, second


@njit(cache=True, parallel=True)
def loss_and_grad(method, want_grad, A, B, B_self, sizes, mprime, class_feature, feat_lo, feat_hi,
                  keys_by_area, area_start, area_stop, zval, logw, natoms, ez2, probs, gamma,
                  closed_form):
    """Population loss L and its per-entry gradient (dA (S, F), dB (S, S), dB_self (S,)).

    L = sum_k pi_k sum_s |s| gamma E[loss of a masked query of class s]. dB[s, s] is the
    derivative for one off-diagonal entry B[p, q] with p != q both in class s. Query classes run
    in parallel; each writes only its own rows.
    """
    S, F = A.shape
    K = probs.size
    gA = np.zeros((S, F))
    gB = np.zeros((S, S))
    gS = np.zeros(S)
    losses = np.zeros(S)
    mode = GRAD if want_grad else LOSS
    for s in prange(S):
        gA_row = np.zeros(F)
        gB_row = np.zeros(S)
        for k in range(K):
            gA_row[:] = 0.0
            gB_row[:] = 0.0
            if closed_form:
                loss, g_self = _closed_form_meanfield(
                    s, k, A, B, B_self, mprime, class_feature, keys_by_area, area_start, area_stop,
                    feat_lo, feat_hi, zval, gamma, want_grad, gA_row, gB_row)
            else:
                loss, g_self = _integral_query(
                    method, mode, s, k, A, B, B_self, mprime, class_feature, keys_by_area,
                    area_start, area_stop, feat_lo, feat_hi, zval, logw, natoms, ez2, gamma,
                    gA_row, gB_row, gB_row)
            weight = probs[k] * gamma
            losses[s] += weight * sizes[s] * loss
            if want_grad:
                gS[s] += weight * g_self
                for f in range(F):
                    gA[s, f] += weight * gA_row[f]
                for r in range(S):
                    if mprime[s, r] > 0.0:
                        gB[s, r] += weight * gB_row[r] / mprime[s, r]
    return losses.sum(), gA, gB, gS


@njit(cache=True, parallel=True)
def attention_mass(method, A, B, B_self, sizes, mprime, class_feature, feat_lo, feat_hi,
                   keys_by_area, area_start, area_stop, zval, logw, natoms, ez2, probs, gamma):
    """Expected attention of a masked query on every key class, per cluster.

    Returns (unmasked (K, S, S), masked (K, S, S), self (K, S)): for a masked query of class s in
    cluster k, the expected softmax mass on the unmasked (masked) keys of class r other than
    itself, summed over those keys, and on itself. Each row sums to one.
    """
    S, F = A.shape
    K = probs.size
    unm = np.zeros((K, S, S))
    msk = np.zeros((K, S, S))
    slf = np.zeros((K, S))
    dummy = np.zeros(F)
    for s in prange(S):
        for k in range(K):
            slf[k, s], _ = _integral_query(
                method, ATTENTION, s, k, A, B, B_self, mprime, class_feature, keys_by_area,
                area_start, area_stop, feat_lo, feat_hi, zval, logw, natoms, ez2, gamma, dummy,
                unm[k, s], msk[k, s])
    return unm, msk, slf
