"""Brute-force references for the tests: enumerate every mask and every amplitude atom.

This is deliberately written from docs/model.md section 2 alone (tokens, softmax, reconstruction),
sharing no code with the library's kernels beyond the DataModel.
"""
from __future__ import annotations

import itertools

import numpy as np


def _atoms(cluster):
    """Joint amplitude atoms of a cluster: (values (n, N), probs (n,))."""
    grids = [list(zip(a.values, a.weights)) for a in cluster.amplitudes]
    vals, probs = [], []
    for combo in itertools.product(*grids):
        vals.append([v for v, _ in combo])
        probs.append(np.prod([w for _, w in combo]))
    return np.array(vals), np.array(probs)


def brute_force_loss(model, A, B, attention=False):
    """Expected loss by enumeration of all 2^P masks; optionally the expected attention (K, P, P)."""
    P, F, gamma = model.n_patches, model.n_features, model.mask_ratio
    total = 0.0
    att = np.zeros((model.n_clusters, P, P))
    masks = np.array(list(itertools.product([0, 1], repeat=P)), dtype=bool)  # True = masked
    pm = np.prod(np.where(masks, gamma, 1 - gamma), axis=1)
    for k, cl in enumerate(model.clusters):
        fidx = np.array([model.feature_index(k, j) for j in cl.areas])
        zs, zp = _atoms(cl)
        for z, wz in zip(zs, zp):
            zpos = z[cl.areas]                       # amplitude of every patch
            X = np.zeros((P, F))
            X[np.arange(P), fidx] = zpos             # x_p in feature coordinates
            for mask, w in zip(masks, pm):
                vis = ~mask
                for p in np.flatnonzero(mask):
                    scores = B[p] + vis * zpos * A[p, fidx]
                    e = np.exp(scores - scores.max())
                    wts = e / e.sum()
                    yhat = (wts * vis) @ X
                    total += model.probs[k] * wz * w * 0.5 * np.sum((yhat - X[p]) ** 2)
                    if attention:
                        att[k, p] += wz * w * wts / gamma   # conditional on p masked
    return (total, att) if attention else total


def meanfield_loss(model, A, B):
    """Mean-field loss from its definition: each unmasked count replaced by its mean, the
    amplitudes averaged by enumerating their joint atoms."""
    P, gamma = model.n_patches, model.mask_ratio
    total = 0.0
    for k, cl in enumerate(model.clusters):
        fidx = np.array([model.feature_index(k, j) for j in cl.areas])
        zs, zp = _atoms(cl)
        for z, wz in zip(zs, zp):
            zpos = z[cl.areas]
            for p in range(P):
                others = np.arange(P) != p
                alpha = np.exp(B[p] + zpos * A[p, fidx])
                beta = np.exp(B[p])
                D = np.exp(B[p, p]) + np.sum((gamma * beta + (1 - gamma) * alpha)[others])
                N = np.zeros(cl.n_areas)
                np.add.at(N, cl.areas[others], (zpos * (1 - gamma) * alpha)[others])
                j0 = cl.areas[p]
                loss = 0.5 * (zpos[p] ** 2 - 2 * zpos[p] * N[j0] / D + np.sum(N**2) / D**2)
                total += model.probs[k] * wz * gamma * loss
    return total


def _mp_atoms(model):
    """(cluster index, cluster, feature of every patch, amplitude of every patch in mpmath, the
    joint atom's probability) for every joint amplitude atom of every cluster."""
    import mpmath as mp
    for k, cl in enumerate(model.clusters):
        fidx = [model.feature_index(k, j) for j in cl.areas]
        zs, zp = _atoms(cl)
        for z, wz in zip(zs, zp):
            yield k, cl, fidx, [mp.mpf(float(z[a])) for a in cl.areas], wz


def meanfield_loss_mp(model, A, B, dps=40):
    """``meanfield_loss`` in mpmath at ``dps`` digits: for states whose weights overflow float64."""
    import mpmath as mp
    mp.mp.dps = dps
    P, gamma = model.n_patches, mp.mpf(model.mask_ratio)
    total = mp.mpf(0)
    for k, cl, fidx, zpos, wz in _mp_atoms(model):
        for p in range(P):
            others = [q for q in range(P) if q != p]
            D = mp.exp(mp.mpf(float(B[p, p])))
            N = [mp.mpf(0)] * cl.n_areas
            for q in others:
                beta = mp.exp(mp.mpf(float(B[p, q])))
                alpha = mp.exp(mp.mpf(float(B[p, q])) + zpos[q] * mp.mpf(float(A[p, fidx[q]])))
                D += gamma * beta + (1 - gamma) * alpha
                N[cl.areas[q]] += zpos[q] * (1 - gamma) * alpha
            j0 = cl.areas[p]
            loss = (zpos[p] ** 2 - 2 * zpos[p] * N[j0] / D + sum(n * n for n in N) / D**2) / 2
            total += mp.mpf(float(model.probs[k] * wz)) * gamma * loss
    return total


def brute_force_loss_mp(model, A, B, dps=50, direction=None, eps=0):
    """The brute-force loss in mpmath at ``dps`` digits: a reference for extreme states where
    float64 softmax itself loses digits. With ``direction`` (dA, dB) the state is moved by
    ``eps`` (an mpmath number) along it, in mpmath: for directional derivatives."""
    import mpmath as mp
    mp.mp.dps = dps
    if direction is not None:
        dA, dB = direction
        A = [[mp.mpf(float(A[p, f])) + eps * mp.mpf(float(dA[p, f])) for f in range(A.shape[1])]
             for p in range(A.shape[0])]
        B = [[mp.mpf(float(B[p, q])) + eps * mp.mpf(float(dB[p, q])) for q in range(B.shape[1])]
             for p in range(B.shape[0])]
    else:
        A = [[mp.mpf(float(x)) for x in row] for row in np.asarray(A)]
        B = [[mp.mpf(float(x)) for x in row] for row in np.asarray(B)]
    P, gamma = model.n_patches, mp.mpf(model.mask_ratio)
    total = mp.mpf(0)
    for k, cl, fidx, zpos, wz in _mp_atoms(model):
        for mask in itertools.product([0, 1], repeat=P):
            pm = mp.mpf(1)
            for x in mask:
                pm *= gamma if x else 1 - gamma
            for p in range(P):
                if not mask[p]:
                    continue
                scores = [B[p][q] + (0 if mask[q] else zpos[q] * A[p][fidx[q]]) for q in range(P)]
                top = max(scores)
                e = [mp.exp(s - top) for s in scores]
                tot = sum(e)
                share = [mp.mpf(0)] * cl.n_areas
                for q in range(P):
                    if not mask[q]:
                        share[cl.areas[q]] += e[q] / tot * zpos[q]
                err = sum(s * s for s in share) - 2 * zpos[p] * share[cl.areas[p]] + zpos[p] ** 2
                total += mp.mpf(float(model.probs[k])) * mp.mpf(float(wz)) * pm * err / 2
    return total


def loss_scale(model):
    """The loss of predicting zero, sum_k pi_k sum_p gamma E[z_p^2] / 2: the natural size of L."""
    total = 0.0
    for k, cl in enumerate(model.clusters):
        ez2 = np.array([a.moment2() for a in cl.amplitudes])[cl.areas]
        total += model.probs[k] * model.mask_ratio * 0.5 * ez2.sum()
    return total
