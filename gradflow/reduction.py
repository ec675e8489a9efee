"""Class reduction (MODEL.md section 3): the arrays the kernels loop over.

A ``Reduction`` groups positions into classes whose attention correlations are equal and
describes, per cluster, which feature (area) each class belongs to. Two reductions exist:
``signature_reduction`` (positions with the same area in every cluster share one class; exact
from a symmetric start) and ``position_reduction`` (every position its own class; any state).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import DataModel


@dataclass(frozen=True)
class Reduction:
    """Kernel-ready description of a data model at a chosen class resolution.

    Attributes
    ----------
    class_of : (P,) int64          class of every position
    sizes : (S,) int64             positions per class
    mprime : (S, S) float64        other keys of class r seen by a query of class s
    class_feature : (K, S) int64   feature index f(k, area_k(class))
    feat_lo, feat_hi : (K,) int64  features of cluster k are feat_lo[k] .. feat_hi[k]-1
    keys_by_area : (K, S) int64    classes sorted by their feature in cluster k
    area_start, area_stop : (F,)   slice of keys_by_area[k] holding the classes of feature f
    zval, logw : (F, Amax)         amplitude atoms and log weights of every area (padded)
    natoms : (F,) int64            number of atoms of every area
    ez2 : (F,) float64             E[z^2] of every area
    probs : (K,) float64           cluster probabilities
    gamma : float                  mask ratio
    all_point : bool               every amplitude is a point mass
    """

    class_of: np.ndarray
    sizes: np.ndarray
    mprime: np.ndarray
    class_feature: np.ndarray
    feat_lo: np.ndarray
    feat_hi: np.ndarray
    keys_by_area: np.ndarray
    area_start: np.ndarray
    area_stop: np.ndarray
    zval: np.ndarray
    logw: np.ndarray
    natoms: np.ndarray
    ez2: np.ndarray
    probs: np.ndarray
    gamma: float
    all_point: bool

    @property
    def n_classes(self) -> int:
        return int(self.sizes.size)

    @property
    def n_features(self) -> int:
        return int(self.natoms.size)

    @property
    def n_clusters(self) -> int:
        return int(self.probs.size)

    def kernel_args(self) -> tuple:
        """The structural arrays in the order the kernels take them."""
        return (self.sizes.astype(np.float64), self.mprime, self.class_feature, self.feat_lo,
                self.feat_hi, self.keys_by_area, self.area_start, self.area_stop, self.zval,
                self.logw, self.natoms, self.ez2, self.probs, self.gamma)

    # ---- state layout: the flat vector the integrator evolves -------------------------------
    def state_size(self) -> int:
        S, F = self.n_classes, self.n_features
        return S * F + S * S + S

    def pack(self, A: np.ndarray, B: np.ndarray, B_self: np.ndarray) -> np.ndarray:
        return np.concatenate([A.ravel(), B.ravel(), B_self.ravel()])

    def unpack(self, y: np.ndarray):
        """Views (A (.., S, F), B (.., S, S), B_self (.., S)) of a flat state (or a stack of them)."""
        S, F = self.n_classes, self.n_features
        lead = y.shape[:-1]
        A = y[..., : S * F].reshape(lead + (S, F))
        B = y[..., S * F: S * F + S * S].reshape(lead + (S, S))
        Bs = y[..., S * F + S * S:]
        return A, B, Bs

    def expand(self, A: np.ndarray, B: np.ndarray, B_self: np.ndarray):
        """Per-position (P, F), (P, P) arrays from per-class ones (works on leading axes)."""
        c = self.class_of
        A_full = A[..., c, :]
        B_full = B[..., c, :][..., :, c].copy()
        idx = np.arange(c.size)
        B_full[..., idx, idx] = B_self[..., c]
        return A_full, B_full


def _build(model: DataModel, class_of: np.ndarray) -> Reduction:
    P, K, F = model.n_patches, model.n_clusters, model.n_features
    class_of = np.asarray(class_of, dtype=np.int64)
    S = int(class_of.max()) + 1
    sizes = np.bincount(class_of, minlength=S).astype(np.int64)
    rep = np.zeros(S, dtype=np.int64)
    rep[class_of[::-1]] = np.arange(P)[::-1]        # first position of every class
    mprime = np.tile(sizes.astype(np.float64), (S, 1)) - np.eye(S)

    class_feature = np.empty((K, S), dtype=np.int64)
    keys_by_area = np.empty((K, S), dtype=np.int64)
    area_start = np.empty(F, dtype=np.int64)
    area_stop = np.empty(F, dtype=np.int64)
    feat_lo = np.empty(K, dtype=np.int64)
    feat_hi = np.empty(K, dtype=np.int64)
    for k, cl in enumerate(model.clusters):
        lo = model.feature_index(k, 0)
        feat_lo[k], feat_hi[k] = lo, lo + cl.n_areas
        labels = cl.areas[rep]
        class_feature[k] = lo + labels
        order = np.argsort(labels, kind="stable")
        keys_by_area[k] = order
        counts = np.bincount(labels, minlength=cl.n_areas)
        ends = np.cumsum(counts)
        area_start[lo: lo + cl.n_areas] = ends - counts
        area_stop[lo: lo + cl.n_areas] = ends

    amps = [a for cl in model.clusters for a in cl.amplitudes]
    amax = max(a.values.size for a in amps)
    zval = np.ones((F, amax))
    logw = np.full((F, amax), -np.inf)
    natoms = np.empty(F, dtype=np.int64)
    ez2 = np.empty(F)
    for f, a in enumerate(amps):
        n = a.values.size
        zval[f, :n] = a.values
        logw[f, :n] = np.log(a.weights)
        natoms[f] = n
        ez2[f] = a.moment2()
    return Reduction(class_of=class_of, sizes=sizes, mprime=mprime, class_feature=class_feature,
                     feat_lo=feat_lo, feat_hi=feat_hi, keys_by_area=keys_by_area,
                     area_start=area_start, area_stop=area_stop, zval=zval, logw=logw,
                     natoms=natoms, ez2=ez2, probs=np.asarray(model.probs, dtype=np.float64),
                     gamma=float(model.mask_ratio), all_point=bool(np.all(natoms == 1)))


def _cached(model: DataModel, key: str, class_of) -> Reduction:
    # a DataModel does not change after construction, so its reductions are built once
    cache = model.__dict__.setdefault("_reductions", {})
    if key not in cache:
        cache[key] = _build(model, class_of)
    return cache[key]


def signature_reduction(model: DataModel) -> Reduction:
    """Positions with equal signature share a class (exact from a symmetric start)."""
    return _cached(model, "signature", model.class_of)


def position_reduction(model: DataModel) -> Reduction:
    """Every position is its own class: arbitrary per-position correlations."""
    return _cached(model, "position", np.arange(model.n_patches))
