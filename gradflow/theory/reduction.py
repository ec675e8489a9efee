"""Class reduction (docs/model.md section 3): the one record the kernels read.

A ``Reduction`` groups positions into classes whose attention correlations are equal and
describes, per cluster, which feature (area) each class belongs to. It is a NamedTuple of arrays,
so the Numba kernels take it as one argument and read its fields by name at no cost. Two
resolutions exist: ``signature_reduction`` (positions with the same area in every cluster share a
class; exact from a symmetric start) and ``position_reduction`` (every position its own class;
any state).
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from .._validate import check_memory
from ..model import DataModel
from .quadrature import GRID_STEP, GRID_STEP_FAST


QUADRATURE_STEPS = {"fine": GRID_STEP, "fast": GRID_STEP_FAST}


class Reduction(NamedTuple):
    """A data model at a chosen class resolution, in the arrays the kernels loop over.

    S classes, K clusters, F features (one per cluster and area), at most ``n_atoms.max()``
    amplitude atoms per area.
    """

    class_of: np.ndarray          # (P,) int64: class of every position
    class_size: np.ndarray        # (S,) float64: positions per class
    other_keys: np.ndarray        # (S, S) float64: m'[s, r], keys of class r a query of class s sees
    key_feature: np.ndarray       # (K, S) int64: feature f(k, area_k(r)) of class r in cluster k
    feature_start: np.ndarray     # (K,) int64: features of cluster k are feature_start[k] ..
    feature_stop: np.ndarray      # (K,) int64: .. feature_stop[k] - 1
    keys_by_area: np.ndarray      # (K, S) int64: classes sorted by their area in cluster k
    area_start: np.ndarray        # (F,) int64: keys_by_area[k, area_start[f]:area_stop[f]] are
    area_stop: np.ndarray         # (F,) int64:   the classes of feature f
    atom_z: np.ndarray            # (F, Amax) float64: amplitude atoms of every area (padded with 1)
    atom_log_weight: np.ndarray   # (F, Amax) float64: their log probabilities (padded with -inf)
    n_atoms: np.ndarray           # (F,) int64: atoms of every area
    mean_z2: np.ndarray           # (F,) float64: E[z^2] of every area
    cluster_prob: np.ndarray      # (K,) float64: pi_k
    mask_ratio: float             # gamma
    all_point: bool               # every amplitude is a point mass
    grid_step: float = GRID_STEP  # step of the t-integrals' double-exponential rule (``quadrature``)

    @property
    def n_classes(self) -> int:
        return int(self.class_size.size)

    @property
    def n_features(self) -> int:
        return int(self.n_atoms.size)

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_prob.size)

    @property
    def n_positions(self) -> int:
        return int(self.class_of.size)

    def area_of_class(self) -> np.ndarray:
        """(K, S) area label (within its cluster) of every class."""
        return self.key_feature - self.feature_start[:, None]

    def representative(self) -> np.ndarray:
        """(S,) first position of every class."""
        rep = np.zeros(self.n_classes, dtype=np.int64)
        rep[self.class_of[::-1]] = np.arange(self.n_positions)[::-1]
        return rep

    def with_quadrature(self, quadrature: str) -> "Reduction":
        """The same reduction with the t-integrals' step of ``quadrature``: "fine" (~1e-15, the
        default) or "fast" (the loss to ~1e-12, the gradient to ~2e-8 of its largest entry, ~3e-7
        at a mask ratio of 0.05; ~0.7 of the fine rule's nodes; for flows integrated at rtol >= 1e-6)."""
        return self._replace(grid_step=QUADRATURE_STEPS[quadrature])

    def __repr__(self) -> str:
        return (f"Reduction(P={self.n_positions}, classes={self.n_classes}, clusters={self.n_clusters}, "
                f"features={self.n_features})")


def _build(model: DataModel, class_of: np.ndarray) -> Reduction:
    P, K, F = model.n_patches, model.n_clusters, model.n_features
    class_of = np.asarray(class_of, dtype=np.int64)
    S = int(class_of.max()) + 1
    amax = max(a.values.size for cl in model.clusters for a in cl.amplitudes)
    # the class pairs, then in the kernels per query and thread ~24 numbers per (atom, key) pair
    # (7 of its own, 6 scratch rows, with one lane 8 per column, kernels.QueryWork; padding up to
    # 15%), and the state and its gradient (S^2 each)
    check_memory(3.0 * S * S + 24.0 * S * amax * numba.config.NUMBA_NUM_THREADS,
                 f"a reduction of {S} classes with {amax} amplitude atoms")
    sizes = np.bincount(class_of, minlength=S).astype(np.int64)
    rep = np.zeros(S, dtype=np.int64)
    rep[class_of[::-1]] = np.arange(P)[::-1]        # first position of every class
    other_keys = np.empty((S, S))                   # m'[s, r] = |r| - 1{r = s}, built in place
    other_keys[:] = sizes.astype(np.float64)
    other_keys[np.arange(S), np.arange(S)] -= 1.0

    key_feature = np.empty((K, S), dtype=np.int64)
    keys_by_area = np.empty((K, S), dtype=np.int64)
    area_start = np.empty(F, dtype=np.int64)
    area_stop = np.empty(F, dtype=np.int64)
    feature_start = np.empty(K, dtype=np.int64)
    feature_stop = np.empty(K, dtype=np.int64)
    for k, cl in enumerate(model.clusters):
        lo = model.feature_index(k, 0)
        feature_start[k], feature_stop[k] = lo, lo + cl.n_areas
        labels = cl.areas[rep]
        key_feature[k] = lo + labels
        keys_by_area[k] = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=cl.n_areas)
        ends = np.cumsum(counts)
        area_start[lo: lo + cl.n_areas] = ends - counts
        area_stop[lo: lo + cl.n_areas] = ends

    amps = [a for cl in model.clusters for a in cl.amplitudes]
    amax = max(a.values.size for a in amps)
    atom_z = np.ones((F, amax))
    atom_log_weight = np.full((F, amax), -np.inf)
    n_atoms = np.empty(F, dtype=np.int64)
    mean_z2 = np.empty(F)
    for f, a in enumerate(amps):
        n = a.values.size
        atom_z[f, :n] = a.values
        atom_log_weight[f, :n] = np.log(a.weights)
        n_atoms[f] = n
        mean_z2[f] = a.moment2()
    return Reduction(class_of=class_of, class_size=sizes.astype(np.float64), other_keys=other_keys,
                     key_feature=key_feature, feature_start=feature_start, feature_stop=feature_stop,
                     keys_by_area=keys_by_area, area_start=area_start, area_stop=area_stop,
                     atom_z=atom_z, atom_log_weight=atom_log_weight, n_atoms=n_atoms, mean_z2=mean_z2,
                     cluster_prob=np.asarray(model.probs, dtype=np.float64),
                     mask_ratio=float(model.mask_ratio), all_point=bool(np.all(n_atoms == 1)))


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
