"""The one-layer softmax transformer of docs/model.md section 2, forward and backward, in Numba.

The tokens are h_q = e_q + 1{q unmasked} z_q v_{f(q)}, so a score e_p^T Q h_q splits into
(E^T Q E)[p, q] + 1{q unmasked} z_q (E^T Q V)[p, f(q)] and the reconstruction error lives in the
span of the features (metric V^T V). The backward pass of the scores gives
dQ = E C1 E^T + E C2 V^T, never forming the (b, P, d) token tensor.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ..model import DataModel


@njit(cache=True, parallel=True)
def _attention_batch(RE, RV, gram, fq, z, vis, want_grad, n_chunks):
    """Forward and backward pass of softmax attention over a batch, for the masked queries.

    Returns (summed loss, C1 (P, P), C2 (P, F)) with C1[p, q] = sum_b dloss/dscore[b, p, q] and
    C2[p, f] = sum_b sum_q dloss/dscore[b, p, q] * (content of key q along feature f).
    Samples are split into one chunk per thread, each with its own accumulators.
    """
    b, P = vis.shape
    F = RV.shape[1]
    C1s = np.zeros((n_chunks, P, P))
    C2s = np.zeros((n_chunks, P, F))
    losses = np.zeros(n_chunks)
    for ch in prange(n_chunks):
        w = np.empty(P)
        coef = np.empty(P)
        c = np.empty(F)
        r = np.empty(F)
        rg = np.empty(F)
        for i in range(ch, b, n_chunks):
            for q in range(P):
                coef[q] = z[i, q] if vis[i, q] else 0.0
            for p in range(P):
                if vis[i, p]:
                    continue                       # only masked queries are reconstructed
                smax = -np.inf
                for q in range(P):
                    w[q] = RE[p, q] + coef[q] * RV[p, fq[i, q]]
                    smax = max(smax, w[q])
                tot = 0.0
                for q in range(P):
                    w[q] = math.exp(w[q] - smax)
                    tot += w[q]
                c[:] = 0.0
                for q in range(P):
                    w[q] /= tot
                    c[fq[i, q]] += w[q] * coef[q]
                c[fq[i, p]] -= z[i, p]             # residual yhat_p - x_p in feature coordinates
                for f in range(F):
                    r[f] = c[f]
                for f in range(F):
                    acc = 0.0
                    for g in range(F):
                        acc += gram[f, g] * r[g]
                    rg[f] = acc
                    losses[ch] += 0.5 * r[f] * acc
                if not want_grad:
                    continue
                mean_gw = 0.0
                for q in range(P):
                    mean_gw += w[q] * rg[fq[i, q]] * coef[q]
                for q in range(P):
                    delta = w[q] * (rg[fq[i, q]] * coef[q] - mean_gw)
                    C1s[ch, p, q] += delta
                    C2s[ch, p, fq[i, q]] += delta * coef[q]
    return losses.sum(), C1s.sum(axis=0), C2s.sum(axis=0)


def batch_loss_grad(Q: np.ndarray, E: np.ndarray, V: np.ndarray, fq: np.ndarray, z: np.ndarray,
                    vis: np.ndarray, want_grad: bool = True):
    """Masked-reconstruction loss of a batch and its gradient with respect to Q.

    Loss = mean over samples of sum over masked p of 1/2 ||yhat_p - x_p||^2, with
    yhat_p = sum_q softmax_q(e_p^T Q h_q) 1{q unmasked} x_q (docs/model.md section 2).

    The tokens are h_q = e_q + 1{q unmasked} z_q v_{f(q)}, so e_p^T Q h_q splits into
    (E^T Q E)[p, q] + 1{q unmasked} z_q (E^T Q V)[p, f(q)] and the reconstruction error lives in
    the span of the features (metric V^T V). The backward pass of the scores gives
    dQ = E C1 E^T + E C2 V^T, never forming the (b, P, d) token tensor.
    """
    b = vis.shape[0]
    QE = Q @ E
    RE = E.T @ QE
    RV = E.T @ (Q @ V)
    loss, C1, C2 = _attention_batch(RE, RV, V.T @ V, fq, z, vis, want_grad,
                                    min(b, numba.get_num_threads()))
    if not want_grad:
        return loss / b, None
    return loss / b, (E @ (C1 / b)) @ E.T + (E @ (C2 / b)) @ V.T


def make_embeddings(model: DataModel, d: int, kind: str, rng: np.random.Generator):
    """Feature embeddings V (d, F) and position embeddings E (d, P).

    "orthonormal": all F + P columns orthonormal (QR of a Gaussian matrix). "gaussian": i.i.d.
    N(0, 1/d) entries, only nearly orthogonal.
    """
    F, P = model.n_features, model.n_patches
    G = rng.standard_normal((d, F + P))
    if kind == "orthonormal":
        Qm, R = np.linalg.qr(G)
        M = Qm * np.sign(np.diag(R))                  # a Haar-distributed orthonormal frame
    else:
        M = G / np.sqrt(d)
    return M[:, :F].copy(), M[:, F:].copy()
