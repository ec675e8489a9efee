"""Readable references the kernels are measured (and tested) against.

``brute_force_loss``: enumerate every mask and amplitude atom, vectorised over masks (plain NumPy;
what a user would write without gradflow). ``numpy_loss_and_grad``: the same closed form as the
Numba kernels (docs/model.md section 4, derivations/README.md), written in NumPy with the t-grid as an
array axis, for every position its own class. It favours clarity over speed.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.special import expit, logsumexp

from ..theory.quadrature import GRID_LEFT, GRID_RIGHT, GRID_STEP


def brute_force_loss(model, A, B):
    """Expected loss by enumeration of the 2^P masks (vectorised) and all amplitude atoms."""
    P, gamma = model.n_patches, model.mask_ratio
    masks = np.array(list(itertools.product([0, 1], repeat=P)), dtype=bool)   # True = masked
    pm = np.prod(np.where(masks, gamma, 1 - gamma), axis=1)
    vis = ~masks
    total = 0.0
    for k, cl in enumerate(model.clusters):
        fidx = np.array([model.feature_index(k, j) for j in cl.areas])
        atoms = [list(zip(a.values, a.weights)) for a in cl.amplitudes]
        for combo in itertools.product(*atoms):
            z = np.array([v for v, _ in combo])[cl.areas]
            wz = np.prod([w for _, w in combo])
            for p in range(P):
                scores = B[p][None, :] + vis * (z * A[p, fidx])[None, :]
                scores -= scores.max(axis=1, keepdims=True)
                e = np.exp(scores)
                wts = e / e.sum(axis=1, keepdims=True) * vis
                share = np.stack([(wts[:, cl.areas == j] * z[cl.areas == j]).sum(axis=1)
                                  for j in range(cl.n_areas)], axis=1)
                err = np.sum(share**2, axis=1) - 2 * z[p] * share[:, cl.areas[p]] + z[p] ** 2
                total += model.probs[k] * wz * np.sum(pm * masks[:, p] * 0.5 * err)
    return total


def _nodes(log_dmin, log_dmax):
    """The double-exponential t-grid of gradflow.theory.quadrature: sigma and d sigma per node."""
    x0 = -np.log(GRID_LEFT)
    n = int(np.ceil((log_dmax - log_dmin + GRID_RIGHT - x0) / GRID_STEP)) + 1
    x = x0 + GRID_STEP * np.arange(n)
    return -log_dmax + x - np.exp(-x), GRID_STEP * (1 + np.exp(-x))


def numpy_loss_and_grad(model, A, B):
    """Exact loss and per-entry gradient (dA, dB) by the t-integral, in plain NumPy."""
    P, F, gamma = model.n_patches, model.n_features, model.mask_ratio
    loss, dA, dB = 0.0, np.zeros((P, F)), np.zeros((P, P))
    for k, cl in enumerate(model.clusters):
        for p in range(P):
            keys = np.arange(P) != p
            q_idx = np.flatnonzero(keys)
            lb = B[p, keys]                                          # (R,) log beta per key
            areas = cl.areas[keys]
            lc = B[p, p]                                             # log c, the query itself
            amps = cl.amplitudes
            # log alpha per (key, atom), grouped by area
            la = [lb[areas == j][:, None] + amps[j].values[None, :] * A[p, model.feature_index(k, j)]
                  for j in range(cl.n_areas)]
            lb_by = [lb[areas == j] for j in range(cl.n_areas)]
            # bounds of D over masks and atoms, as in the kernel: they set the t-grid
            lmin = np.logaddexp.reduce(np.concatenate(
                [[lc]] + [np.minimum(lb_by[j], la[j].min(axis=1)) for j in range(cl.n_areas)]))
            lmax = np.logaddexp.reduce(np.concatenate(
                [[lc]] + [np.maximum(lb_by[j], la[j].max(axis=1)) for j in range(cl.n_areas)]))
            sigma, h = _nodes(lmin, lmax)                            # (n,)
            t = np.exp(sigma)
            j0 = cl.areas[p]
            logphi, e1, e2, per_area = [], [], [], []
            for j in range(cl.n_areas):
                z, lw = amps[j].values, np.log(amps[j].weights)
                if la[j].size == 0:
                    logphi.append(np.zeros_like(t))
                    e1.append(np.zeros_like(t))
                    e2.append(np.zeros_like(t))
                    per_area.append(None)
                    continue
                ta = np.exp(sigma[:, None, None] + la[j][None])             # (n, r, a)
                tb = np.exp(sigma[:, None, None] + lb_by[j][None, :, None])
                x, y = np.log(gamma) - tb, np.log1p(-gamma) - ta
                L = np.logaddexp(x, y)                                       # log phi
                u = expit(y - x)
                w = expit(x - y)
                M, V = ta * u, ta**2 * u * w
                lp = lw[None, :] + L.sum(axis=1)                             # (n, a)
                lphi = logsumexp(lp, axis=1)
                post = np.exp(lp - lphi[:, None])
                tmu, tvar = z * M.sum(axis=1), z**2 * V.sum(axis=1)
                logphi.append(lphi)
                e1.append((post * z * tmu).sum(axis=1))
                e2.append((post * (tmu**2 + tvar)).sum(axis=1))
                per_area.append((ta, tb, u, w, post, tmu, tvar, z))
            tc = np.exp(sigma + lc)
            G = np.exp(np.sum(logphi, axis=0) - tc)
            s2 = np.sum(e2, axis=0)
            integrand = G * (-e1[j0] + 0.5 * s2)
            weight = model.probs[k] * gamma
            loss += weight * (0.5 * amps[j0].moment2() + np.sum(h * integrand))
            dB[p, p] += weight * np.sum(h * -tc * integrand)
            for j in range(cl.n_areas):
                if per_area[j] is None:
                    continue
                ta, tb, u, w, post, tmu, tvar, z = per_area[j]
                own = j == j0
                c_phi = 0.5 * (s2 - e2[j]) - (0.0 if own else e1[j0])
                c1 = -1.0 if own else 0.0
                cl_ = c_phi[:, None] + c1 * z * tmu + 0.5 * (tmu**2 + tvar)     # (n, a)
                cm = z * (c1 * z + tmu)
                cv = 0.5 * z**2
                # SymPy's factor derivatives (see gradflow/_generated.py), along log alpha / log beta
                dLa, dLb = -ta * u, -tb * w
                dMa, dMb = ta * u * (1 - ta * w), ta * tb * u * w
                dVa = ta**2 * u * w * (ta - 2 * ta * w + 2)
                dVb = ta**2 * tb * u * w * (2 * w - 1)
                ga = cl_[:, None] * dLa + cm[:, None] * dMa + cv * dVa           # (n, r, a)
                gb = cl_[:, None] * dLb + cm[:, None] * dMb + cv * dVb
                wa = (h * G)[:, None, None] * post[:, None, :]
                cols = q_idx[areas == j]
                dB[p, cols] += weight * np.sum(wa * (ga + gb), axis=(0, 2))
                dA[p, model.feature_index(k, j)] += weight * np.sum(wa * z * ga)
    return loss, dA, dB
