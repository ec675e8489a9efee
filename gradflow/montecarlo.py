"""A real one-layer softmax transformer trained by SGD on sampled data (MODEL.md section 6).

Nothing here uses the population formulas to train: every step samples a minibatch
(cluster, amplitudes, Bernoulli mask), builds the tokens h_q = x_q 1{q unmasked} + e_q in R^d,
runs softmax attention with the full d x d matrix Q, and takes an SGD step along the exact
gradient of the batch loss (hand-derived backward pass below). The population formulas are used
only to *report* the expected attention of the projected state, the same observable ``solve``
reports, so that the two can be compared.
"""
from __future__ import annotations

import json
import math
import numbers
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from ._atomic import atomic_path
from ._persist import Persistent
from .model import DataModel
from .population import area_attention

CHECKPOINT_VERSION = 1


@dataclass
class TrainRun(Persistent):
    """Result of :func:`train_transformer`.

    Attributes
    ----------
    t : (T,) gradient-flow time lr * step of every record (the first record is step 0).
    step : (T,) step count of every record.
    A, B : (T, P, F), (T, P, P) projections E^T Q V and E^T Q E.
    loss : (T,) batch loss averaged over the steps since the previous record (NaN at step 0).
    area_attention : (T, K, P) expected own-area unmasked attention of the projected state,
        defined as ``Solution.area_attention``.
    Q : (d, d) final matrix; E (d, P), V (d, F): the embeddings.
    """

    t: np.ndarray
    step: np.ndarray
    A: np.ndarray
    B: np.ndarray
    loss: np.ndarray
    area_attention: np.ndarray
    Q: np.ndarray
    E: np.ndarray
    V: np.ndarray
    model: DataModel
    seed: int
    steps: int
    lr: float
    batch_size: int
    d: int
    embeddings: str
    init_scale: float
    record_every: int
    wall_time: float = 0.0
    meta: dict = field(default_factory=dict, repr=False)
    _io_kind = "trainrun"


# ---- data -------------------------------------------------------------------------------------
class BatchSampler:
    """Draws minibatches (cluster, amplitudes, mask) of a DataModel with an explicit generator."""

    def __init__(self, model: DataModel):
        self.model = model
        self.cum_probs = np.cumsum(model.probs)
        # feature index of every position in every cluster
        self.feature_of = np.stack([model.feature_index(k, 0) + c.areas
                                    for k, c in enumerate(model.clusters)])        # (K, P)
        self.amplitudes = [a for c in model.clusters for a in c.amplitudes]

    def sample(self, rng: np.random.Generator, batch_size: int):
        """Returns fq (b, P) feature of every patch, z (b, P) its amplitude, vis (b, P) unmasked."""
        m = self.model
        k = np.searchsorted(self.cum_probs, rng.random(batch_size), side="right").clip(max=m.n_clusters - 1)
        z_feat = np.empty((batch_size, m.n_features))
        for f, amp in enumerate(self.amplitudes):   # every area draws independently
            z_feat[:, f] = amp.sample(rng, batch_size)
        fq = self.feature_of[k]
        z = np.take_along_axis(z_feat, fq, axis=1)
        vis = rng.random((batch_size, m.n_patches)) >= m.mask_ratio
        return fq, z, vis


# ---- the transformer --------------------------------------------------------------------------
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
    yhat_p = sum_q softmax_q(e_p^T Q h_q) 1{q unmasked} x_q (MODEL.md section 2).

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


# ---- checkpoints ------------------------------------------------------------------------------
def _load_checkpoint(path: Path, meta: dict) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            ck = {key: data[key] for key in data.files}
        saved = json.loads(str(ck["meta"]))
        rng_state = json.loads(str(ck["rng"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"resume checkpoint {str(path)!r} is not a readable gradflow checkpoint: {exc}") from None
    if saved.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"resume checkpoint {str(path)!r} has version {saved.get('version')!r}, "
                         f"expected {CHECKPOINT_VERSION}")
    for key, value in meta.items():
        if key != "steps" and saved.get(key) != value:
            raise ValueError(f"resume checkpoint {str(path)!r} was made with {key}={saved.get(key)!r}, "
                             f"not {value!r}")
    if int(ck["step"]) > meta["steps"]:
        raise ValueError(f"resume checkpoint {str(path)!r} is at step {int(ck['step'])}, beyond steps={meta['steps']}")
    ck["rng_state"] = rng_state
    return ck


def _progress_bar(progress, total: int, initial: int):
    if progress is False:
        return None
    if progress is None and not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", desc="gradflow train", leave=False)


# ---- training ---------------------------------------------------------------------------------
def _check_args(model, steps, lr, batch_size, d, seed, init_scale, record_every, embeddings):
    if not isinstance(model, DataModel):
        raise ValueError(f"model must be a DataModel, got {type(model).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("record_every", record_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(init_scale, bool) or not isinstance(init_scale, numbers.Real) or \
            not (np.isfinite(init_scale) and init_scale >= 0):
        raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if embeddings not in ("orthonormal", "gaussian"):
        raise ValueError(f"embeddings must be 'orthonormal' or 'gaussian', got {embeddings!r}")
    d_min = model.n_features + model.n_patches
    d = d_min if d is None else d
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < d_min:
        raise ValueError(f"d must be an integer >= F + P = {d_min}, got {d!r}")
    return int(d)


def train_transformer(model: DataModel, *, steps: int, lr: float, batch_size: int, d: int | None = None,
                      seed: int = 0, init_scale: float = 0.0, record_every: int = 100,
                      embeddings: str = "orthonormal", progress=None, checkpoint=None,
                      resume=None) -> TrainRun:
    """Train a one-layer softmax transformer by SGD on masked reconstruction.

    Parameters
    ----------
    model : DataModel
        The data distribution to sample from.
    steps : int
        Total number of SGD steps (also when resuming).
    lr : float
        Step size; record i is at gradient-flow time t = lr * step.
    batch_size : int
        Samples per step.
    d : int, optional
        Embedding dimension, default F + P.
    seed : int
        Seeds the embeddings, the initial Q and every minibatch: same seed, same numbers.
    init_scale : float
        Q(0) has i.i.d. N(0, init_scale^2) entries (0: Q(0) = 0 as in the flow).
    record_every : int
        Steps between records (the last step is always recorded).
    embeddings : {"orthonormal", "gaussian"}
    progress : bool, optional
        tqdm bar; default only on a terminal.
    checkpoint : path, optional
        Save the full state at every record and at the end (atomically).
    resume : path, optional
        Continue from a checkpoint made with the same arguments (``steps`` may grow); the result
        is identical to an uninterrupted run.

    Returns
    -------
    TrainRun
    """
    import time

    d = _check_args(model, steps, lr, batch_size, d, seed, init_scale, record_every, embeddings)
    meta = {"version": CHECKPOINT_VERSION, "model": model.to_dict(), "lr": float(lr),
            "batch_size": int(batch_size), "d": d, "seed": int(seed), "init_scale": float(init_scale),
            "record_every": int(record_every), "embeddings": embeddings, "steps": int(steps)}
    start_time = time.perf_counter()
    sampler = BatchSampler(model)
    if resume is not None:
        ck = _load_checkpoint(Path(resume), meta)
        rng = np.random.default_rng()
        rng.bit_generator.state = ck["rng_state"]
        Q, E, V = ck["Q"].copy(), ck["E"], ck["V"]
        step = int(ck["step"])
        rec = {key: list(ck[f"rec_{key}"]) for key in ("t", "step", "A", "B", "loss", "att")}
        acc, n_acc = float(ck["acc"]), int(ck["n_acc"])
        if rec["step"][-1] % record_every:
            # the end-of-run record of a shorter run: an uninterrupted run has no record here
            for val in rec.values():
                val.pop()
    else:
        rng = np.random.default_rng(seed)
        V, E = make_embeddings(model, d, embeddings, rng)
        Q = init_scale * rng.standard_normal((d, d)) if init_scale > 0 else np.zeros((d, d))
        step = 0
        rec = {key: [] for key in ("t", "step", "A", "B", "loss", "att")}
        acc, n_acc = 0.0, 0

    def record(loss_mean):
        A = E.T @ Q @ V
        B = E.T @ Q @ E
        rec["t"].append(lr * step)
        rec["step"].append(step)
        rec["A"].append(A)
        rec["B"].append(B)
        rec["loss"].append(loss_mean)
        rec["att"].append(area_attention(model, A, B))

    def save():
        if checkpoint is None:
            return
        with atomic_path(checkpoint) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, Q=Q, E=E, V=V, step=np.int64(step), acc=np.float64(acc),
                     n_acc=np.int64(n_acc),
                     meta=np.array(json.dumps(meta)), rng=np.array(json.dumps(rng.bit_generator.state)),
                     **{f"rec_{key}": np.asarray(val) for key, val in rec.items()})

    if step == 0 and not rec["t"]:
        record(np.nan)
        save()
    bar = _progress_bar(progress, steps, step)
    try:
        while step < steps:
            fq, z, vis = sampler.sample(rng, batch_size)
            loss, dQ = batch_loss_grad(Q, E, V, fq, z, vis)
            Q -= lr * dQ
            step += 1
            acc += loss
            n_acc += 1
            if bar is not None:
                bar.update(1)
            on_grid = step % record_every == 0
            if on_grid or step == steps:
                record(acc / n_acc)
                if on_grid:     # an off-grid final record keeps its interval open for a resume
                    acc, n_acc = 0.0, 0
                save()
    finally:
        if bar is not None:
            bar.close()
    return TrainRun(t=np.array(rec["t"]), step=np.array(rec["step"]), A=np.array(rec["A"]),
                    B=np.array(rec["B"]), loss=np.array(rec["loss"]), area_attention=np.array(rec["att"]),
                    Q=Q, E=E, V=V, model=model, seed=int(seed), steps=int(steps), lr=float(lr),
                    batch_size=int(batch_size), d=d, embeddings=embeddings,
                    init_scale=float(init_scale), record_every=int(record_every),
                    wall_time=time.perf_counter() - start_time, meta=meta)
