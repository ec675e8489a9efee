"""The data model of docs/model.md section 1: patches, clusters, areas, amplitudes, masking.

Everything here is validated on construction: bad input raises ``InvalidInputError`` (a
``ValueError``) naming the field and the offending value, so nothing downstream checks again.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._validate import fmt, is_int, positive_int, real
from ..errors import FileFormatError, InvalidInputError
from .amplitude import SUM_TOL, UNIT, Amplitude


class Cluster:
    """One cluster: a partition of the positions into areas, and the areas' amplitudes.

    Parameters
    ----------
    areas : sequence of int or (H, W) array
        Area label of every position, labels exactly ``0..N-1``.
    prob : float, optional
        Probability of the cluster (default: uniform over the model's clusters).
    amplitudes : Amplitude or mapping int -> Amplitude, optional
        ``None`` means ``z = 1`` in every area; one ``Amplitude`` applies to every area;
        a mapping sets chosen areas and leaves the others at ``z = 1``.
    """

    def __init__(self, areas, prob: float | None = None, amplitudes=None):
        self.areas, self.shape = self._check_areas(areas)
        self.n_areas = int(self.areas.max()) + 1
        if prob is not None:
            prob = real("prob", prob, low=0.0)
        self.prob = prob
        self.amplitudes = self._resolve_amplitudes(amplitudes)

    @staticmethod
    def _check_areas(areas):
        try:
            raw = np.asarray(areas)
        except (TypeError, ValueError):     # ragged nesting and the like
            raise InvalidInputError(f"areas must be a sequence or 2-d array of labels, got {fmt(areas)}") from None
        if raw.dtype == object or raw.size == 0 or raw.ndim not in (1, 2):
            raise InvalidInputError(f"areas must be a non-empty sequence or 2-d array of labels, got {fmt(areas)}")
        if raw.dtype.kind == "f":
            if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
                raise InvalidInputError(f"areas must hold integer labels, got {fmt(areas)}")
        elif raw.dtype.kind not in "iub":     # a boolean mask is a two-area partition
            raise InvalidInputError(f"areas must hold integer labels, got {fmt(areas)}")
        labels = raw.astype(np.int64).ravel()
        present = np.unique(labels)
        if present[0] != 0 or present[-1] != present.size - 1:
            raise InvalidInputError(f"areas labels must be exactly 0..N-1, got labels {fmt(present)}")
        labels.setflags(write=False)
        return labels, raw.shape

    def _resolve_amplitudes(self, amplitudes) -> tuple[Amplitude, ...]:
        if amplitudes is None:
            return (UNIT,) * self.n_areas
        if isinstance(amplitudes, Amplitude):
            return (amplitudes,) * self.n_areas
        if isinstance(amplitudes, Mapping):
            out = [UNIT] * self.n_areas
            for label, amp in amplitudes.items():
                if not (is_int(label) and 0 <= label < self.n_areas):
                    raise InvalidInputError(
                        f"amplitudes key must be an area label 0..{self.n_areas - 1}, got {label!r}")
                if not isinstance(amp, Amplitude):
                    raise InvalidInputError(f"amplitudes[{label}] must be an Amplitude, got {amp!r}")
                out[int(label)] = amp
            return tuple(out)
        raise InvalidInputError(
            f"amplitudes must be None, an Amplitude or a mapping label -> Amplitude, got {amplitudes!r}")

    def area_sizes(self) -> np.ndarray:
        """(N,) number of positions in every area."""
        return np.bincount(self.areas, minlength=self.n_areas)

    def __repr__(self) -> str:
        return f"Cluster(n_areas={self.n_areas}, prob={self.prob!r})"


@dataclass(frozen=True)
class _Classes:
    class_of: np.ndarray      # (P,) class id of every position
    sizes: np.ndarray         # (S,) number of positions per class
    signatures: np.ndarray    # (S, K) area label of the class in every cluster


class DataModel:
    """The data distribution of docs/model.md section 1.

    Parameters
    ----------
    n_patches : int, optional
        Number of positions P. Give this or ``grid``.
    grid : (int, int), optional
        Image grid ``(H, W)``, positions row-major, P = H * W.
    clusters : sequence of Cluster
        At least one. Probabilities default to uniform.
    mask_ratio : float
        Probability gamma that a patch is masked, in (0, 1).

    Notes
    -----
    Positions with the same signature (area in every cluster) are exchangeable; they form
    the classes that the reduced flow tracks (``class_of``, ``class_sizes``,
    ``class_signatures``). Two models are equal when their specifications are
    (:meth:`to_dict`); :meth:`fingerprint` is a stable hash of it.

    Examples
    --------
    >>> m = DataModel(grid=(2, 3), mask_ratio=0.4, clusters=[Cluster([[0, 0, 1], [0, 1, 1]])])
    >>> m.n_patches, m.n_features, m.n_classes
    (6, 2, 2)
    """

    def __init__(self, n_patches: int | None = None, grid=None, clusters: Sequence[Cluster] = (),
                 mask_ratio: float = 0.5):
        self.grid = self._check_grid(grid)
        if n_patches is None and self.grid is None:
            raise InvalidInputError("n_patches or grid must be given, got neither")
        if n_patches is not None:
            n_patches = positive_int("n_patches", n_patches)
            if self.grid is not None and self.grid[0] * self.grid[1] != n_patches:
                raise InvalidInputError(f"n_patches must equal H*W of grid {self.grid}, got {n_patches}")
        self.n_patches = n_patches if n_patches is not None else self.grid[0] * self.grid[1]
        clusters = self._check_clusters(clusters)
        self.probs = self._resolve_probs(clusters)
        # copies carry the resolved probability without mutating the caller's clusters
        self.clusters = tuple(self._with_prob(c, p) for c, p in zip(clusters, self.probs))
        self.mask_ratio = real("mask_ratio", mask_ratio, low=0.0, high=1.0, low_open=True, high_open=True)
        self.features = [(k, j) for k, c in enumerate(self.clusters) for j in range(c.n_areas)]
        self._feature_offset = np.cumsum([0] + [c.n_areas for c in self.clusters])
        self._classes = self._signature_classes()

    def _check_clusters(self, clusters) -> list:
        if isinstance(clusters, Cluster):
            clusters = [clusters]
        try:
            clusters = list(clusters)
        except TypeError:
            raise InvalidInputError(f"clusters must be a sequence of Cluster, got {fmt(clusters)}") from None
        if not clusters:
            raise InvalidInputError("clusters must hold at least one Cluster, got none")
        for k, c in enumerate(clusters):
            if not isinstance(c, Cluster):
                raise InvalidInputError(f"clusters[{k}] must be a Cluster, got {fmt(c)}")
            if c.areas.size != self.n_patches:
                raise InvalidInputError(
                    f"clusters[{k}].areas must have length n_patches = P = {self.n_patches}, got {c.areas.size}")
            if len(c.shape) == 2 and self.grid is not None and c.shape != self.grid:
                raise InvalidInputError(f"clusters[{k}].areas must have the grid shape {self.grid}, got {c.shape}")
        return clusters

    @staticmethod
    def _check_grid(grid):
        if grid is None:
            return None
        try:
            h, w = grid
            ok = is_int(h) and is_int(w) and h >= 1 and w >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InvalidInputError(f"grid must be a pair of positive integers (H, W), got {fmt(grid)}")
        return (int(h), int(w))

    @staticmethod
    def _with_prob(cluster: Cluster, prob: float) -> Cluster:
        out = copy.copy(cluster)
        out.prob = float(prob)
        return out

    @staticmethod
    def _resolve_probs(clusters) -> np.ndarray:
        given = [c.prob for c in clusters]
        if all(p is None for p in given):
            return np.full(len(given), 1.0 / len(given))
        if any(p is None for p in given):
            raise InvalidInputError(f"prob must be given for every cluster or for none, got {given!r}")
        p = np.array(given, dtype=np.float64)
        if abs(p.sum() - 1.0) > SUM_TOL:
            raise InvalidInputError(f"prob of the clusters must sum to 1, got {given!r} (sum {p.sum()!r})")
        return p

    def _signature_classes(self) -> _Classes:
        sig = np.stack([c.areas for c in self.clusters], axis=1)  # (P, K)
        uniq, first, inverse = np.unique(sig, axis=0, return_index=True, return_inverse=True)
        # number classes by first appearance, so class ids read in position order
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        class_of = rank[inverse.ravel()]
        sizes = np.bincount(class_of, minlength=order.size)
        for arr in (class_of, sizes):
            arr.setflags(write=False)
        return _Classes(class_of=class_of, sizes=sizes, signatures=uniq[order])

    # ---- exposed properties -------------------------------------------------------------
    @property
    def n_clusters(self) -> int:
        return len(self.clusters)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def class_of(self) -> np.ndarray:
        """(P,) signature class of every position."""
        return self._classes.class_of

    @property
    def class_sizes(self) -> np.ndarray:
        """(S,) number of positions in every signature class."""
        return self._classes.sizes

    @property
    def class_signatures(self) -> np.ndarray:
        """(S, K) area label of every class in every cluster."""
        return self._classes.signatures

    @property
    def n_classes(self) -> int:
        return int(self._classes.sizes.size)

    def feature_index(self, k: int, j: int) -> int:
        """Index of feature v_{k,j} (cluster-major order)."""
        if not (is_int(k) and 0 <= k < self.n_clusters):
            raise InvalidInputError(f"cluster index k must be in 0..{self.n_clusters - 1}, got {k!r}")
        if not (is_int(j) and 0 <= j < self.clusters[k].n_areas):
            raise InvalidInputError(f"area index j must be in 0..{self.clusters[k].n_areas - 1}, got {j!r}")
        return int(self._feature_offset[k] + j)

    def ceiling(self) -> np.ndarray:
        """(K, P) largest achievable target mass 1 - gamma^(C-1), C = size of the query's area."""
        out = np.empty((self.n_clusters, self.n_patches))
        for k, c in enumerate(self.clusters):
            out[k] = 1.0 - self.mask_ratio ** (c.area_sizes()[c.areas] - 1)
        return out

    def to_dict(self) -> dict:
        """Plain-data description from which :meth:`from_dict` rebuilds the model."""
        return {
            "n_patches": self.n_patches,
            "grid": list(self.grid) if self.grid else None,
            "mask_ratio": self.mask_ratio,
            "clusters": [
                {"areas": c.areas.tolist(), "prob": float(p),
                 "amplitudes": [a.to_dict() for a in c.amplitudes]}
                for c, p in zip(self.clusters, self.probs)
            ],
        }

    @classmethod
    def from_dict(cls, spec: Mapping) -> "DataModel":
        clusters = [
            Cluster(c["areas"], prob=c.get("prob"),
                    amplitudes=None if c.get("amplitudes") is None else
                    {j: Amplitude.from_dict(a) for j, a in enumerate(c["amplitudes"])})
            for c in spec["clusters"]
        ]
        return cls(n_patches=spec.get("n_patches"), grid=spec.get("grid"), clusters=clusters,
                   mask_ratio=spec["mask_ratio"])

    def to_json(self) -> str:
        """The specification as JSON (how files carry their model)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text, source: str = "model") -> "DataModel":
        """Rebuild from :meth:`to_json`; FileFormatError naming ``source`` when it is not one."""
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise FileFormatError(f"{source}: its model attribute is not a valid gradflow model: {exc}") from None

    def fingerprint(self) -> str:
        """A stable hash (hex) of the specification: equal models, equal fingerprints."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            cached = self.__dict__["_fingerprint"] = hashlib.sha256(text.encode()).hexdigest()
        return cached

    def __eq__(self, other) -> bool:
        return isinstance(other, DataModel) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        where = f"grid={self.grid}" if self.grid else f"n_patches={self.n_patches}"
        return (f"DataModel({where}, n_clusters={self.n_clusters}, n_features={self.n_features}, "
                f"n_classes={self.n_classes}, mask_ratio={self.mask_ratio})")
