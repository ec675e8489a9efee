"""The one-layer softmax transformer of docs/model.md section 2, forward and backward, in Numba.

The tokens are h_q = e_q + 1{q unmasked} z_q v_{f(q)}, so a score e_p^T Q h_q splits into
(E^T Q E)[p, q] + 1{q unmasked} z_q (E^T Q V)[p, f(q)] and the reconstruction error lives in the
span of the features (metric V^T V). The backward pass of the scores gives
dQ = E C1 E^T + E C2 V^T, never forming the (b, P, d) token tensor.
"""
from __future__ import annotations

import math
import os

import numpy as np
from numba import njit

from ..model import DataModel
from ..theory.parallel import run_rows, threads_for_work

# work (samples x patches x keys) of one batch below which it runs on one thread. Measured on 2
# cores, one thread against two: idle, b = 64: P = 16 170 / 250 us, P = 36 740 / 490 us; b = 256,
# P = 64 9.9 / 5.8 ms. Beside other busy processes two threads lose at every size (their barrier
# waits for a busy core): b = 256, P = 16 0.48 / 14 ms, P = 64 8.6 / 27 ms, P = 144 98 / 441 ms.
# So only batches beyond P ~ 128 at b = 256 take the threads the policy allows.
TRAIN_PARALLEL_WORK = 1 << 22
TRAIN_CHUNKS = 8        # a batch's chunks above that work: threads share them out (up to 8 in use)


@njit(cache=True, nogil=True)
def _attention_chunks(RE, RV, gram, fq, z, vis, want_grad, chunks, n_chunks, losses, C1s, C2s):
    """Forward and backward pass of softmax attention over a batch, for the masked queries.

    Chunk ch of ``n_chunks`` holds samples ch, ch + n_chunks, ...; for every chunk in ``chunks``
    fills its loss (summed over samples) and its own accumulators C1s[ch] (P, P), C2s[ch] (P, F)
    with C1[p, q] = sum_b dloss/dscore[b, p, q] and C2[p, f] = sum_b sum_q dloss/dscore[b, p, q]
    * (content of key q along feature f). Disjoint ``chunks`` run at once on threads.
    """
    b, P = vis.shape
    F = RV.shape[1]
    for ch in chunks:
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


def scores(Q: np.ndarray, E: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The score matrices of Q: (E^T Q E (P, P), E^T Q V (P, F)), i.e. the correlations B and A."""
    return E.T @ (Q @ E), E.T @ (Q @ V)


def batch_loss_grad(Q: np.ndarray, E: np.ndarray, V: np.ndarray, fq: np.ndarray, z: np.ndarray,
                    vis: np.ndarray, want_grad: bool = True, score_matrices=None):
    """Masked-reconstruction loss of a batch and its gradient with respect to Q.

    Loss = mean over samples of sum over masked p of 1/2 ||yhat_p - x_p||^2, with
    yhat_p = sum_q softmax_q(e_p^T Q h_q) 1{q unmasked} x_q (docs/model.md section 2).

    The tokens are h_q = e_q + 1{q unmasked} z_q v_{f(q)}, so e_p^T Q h_q splits into
    (E^T Q E)[p, q] + 1{q unmasked} z_q (E^T Q V)[p, f(q)] and the reconstruction error lives in
    the span of the features (metric V^T V). The backward pass of the scores gives
    dQ = E C1 E^T + E C2 V^T, never forming the (b, P, d) token tensor. ``score_matrices``:
    ``scores(Q, E, V)`` when the caller has them already. The kernel's threads follow the
    policy of ``theory.parallel`` (by work, on the CPUs this process may use).
    """
    b, P = vis.shape
    RE, RV = scores(Q, E, V) if score_matrices is None else score_matrices
    # TRAIN_CHUNKS chunks of samples (one below the work threshold), each with its own
    # accumulators, summed in chunk order, whatever the number of threads that run them: the same
    # seed gives the same bits on any machine (with one chunk per thread it depended on the cores)
    threads = threads_for_work(float(b) * P * P, TRAIN_PARALLEL_WORK)
    n_chunks = min(b, TRAIN_CHUNKS if float(b) * P * P >= TRAIN_PARALLEL_WORK else 1)
    F = RV.shape[1]
    losses, C1s, C2s = np.zeros(n_chunks), np.zeros((n_chunks, P, P)), np.zeros((n_chunks, P, F))
    gram = V.T @ V

    def call(chunks):
        _attention_chunks(RE, RV, gram, fq, z, vis, want_grad, chunks, n_chunks, losses, C1s, C2s)
    run_rows(call, n_chunks, min(threads, n_chunks))
    loss, C1, C2 = losses.sum(), C1s.sum(axis=0), C2s.sum(axis=0)
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


def compiled_before() -> bool:
    """Whether Numba's cache already holds the training kernel (a first run compiles it)."""
    try:
        return os.path.exists(_attention_chunks._cache._cache_file._index_path)
    except AttributeError:          # another Numba's internals: assume compiled, say nothing
        return True


def warm_up() -> None:
    """Compile (or load from the cache) the training kernel on a batch of one sample of two
    patches, so that a run's timing counts its steps only."""
    E = np.eye(3)[:, 1:]
    V = np.eye(3)[:, :1]
    batch_loss_grad(np.zeros((3, 3)), E, V, np.zeros((1, 2), dtype=np.int64), np.ones((1, 2)),
                    np.array([[True, False]]))
