"""The data model of MODEL.md section 1: patches, clusters, areas, amplitudes, masking.

Everything here is validated on construction: bad input raises ``ValueError`` naming the
field and the offending value, so nothing downstream has to check again.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import copy
from dataclasses import dataclass

import numpy as np

_SUM_TOL = 1e-9
AMPLITUDE_MAX = 1e6   # z enters the scores as z * A: beyond this the t-grid of the kernels explodes


def _fmt(value) -> str:
    """Short repr of an offending value for error messages."""
    text = repr(value if not isinstance(value, np.ndarray) else value.tolist())
    return text if len(text) <= 80 else text[:77] + "..."


def _as_float_array(name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {_fmt(value)}") from None
    return arr


class Amplitude:
    """Distribution of an area's amplitude ``z > 0`` as discrete atoms.

    Parameters
    ----------
    values : sequence of float
        Atom locations, each finite and > 0.
    weights : sequence of float, optional
        Atom probabilities, non-negative and summing to 1 (default: uniform).

    Examples
    --------
    >>> Amplitude([0.5, 1.5], [0.5, 0.5]).mean()
    1.0
    """

    def __init__(self, values, weights=None, *, continuous: tuple[float, float] | None = None):
        v = np.atleast_1d(_as_float_array("amplitude values", values))
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"amplitude values must be a non-empty 1-d sequence, got {_fmt(values)}")
        if not np.all(np.isfinite(v)) or np.any(v <= 0) or np.any(v > AMPLITUDE_MAX):
            raise ValueError(f"amplitude values must be finite, > 0 and <= {AMPLITUDE_MAX:g}, got {_fmt(values)}")
        if weights is None:
            w = np.full(v.size, 1.0 / v.size)
        else:
            w = np.atleast_1d(_as_float_array("amplitude weights", weights))
            if w.shape != v.shape:
                raise ValueError(
                    f"amplitude weights must have one entry per value ({v.size}), got {_fmt(weights)}")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"amplitude weights must be finite and >= 0, got {_fmt(weights)}")
            if abs(w.sum() - 1.0) > _SUM_TOL:
                raise ValueError(f"amplitude weights must sum to 1, got {_fmt(weights)} (sum {w.sum()!r})")
        keep = w > 0  # zero-weight atoms carry no information and would give log(0)
        self.values = v[keep].copy()
        self.weights = w[keep] / w[keep].sum()
        self.values.setflags(write=False)
        self.weights.setflags(write=False)
        # the uniform law these atoms discretise, if any: Monte Carlo samples it directly
        self.continuous = None if continuous is None else (float(continuous[0]), float(continuous[1]))

    @classmethod
    def point(cls, value: float = 1.0) -> "Amplitude":
        """The point mass at ``value``."""
        return cls([value], [1.0])

    @classmethod
    def uniform(cls, low: float, high: float, n_atoms: int = 8) -> "Amplitude":
        """Uniform distribution on ``[low, high]`` discretised by Gauss-Legendre atoms.

        The atoms integrate polynomials of degree ``2 * n_atoms - 1`` exactly against the
        uniform density, which is how continuous amplitudes enter the exact expectation.
        """
        low_f, high_f = float(low), float(high)
        if not (np.isfinite(low_f) and low_f > 0):
            raise ValueError(f"amplitude low must be finite and > 0, got {low!r}")
        if not (np.isfinite(high_f) and high_f >= low_f):
            raise ValueError(f"amplitude high must be finite and >= low ({low_f}), got {high!r}")
        if int(n_atoms) != n_atoms or n_atoms < 1:
            raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}")
        if high_f == low_f:
            return cls.point(low_f)
        x, w = np.polynomial.legendre.leggauss(int(n_atoms))
        return cls(low_f + (x + 1.0) * 0.5 * (high_f - low_f), w / w.sum(), continuous=(low_f, high_f))

    @property
    def is_point(self) -> bool:
        return self.values.size == 1

    def mean(self) -> float:
        return float(self.weights @ self.values)

    def moment2(self) -> float:
        return float(self.weights @ self.values**2)

    def to_dict(self) -> dict:
        out = {"values": self.values.tolist(), "weights": self.weights.tolist()}
        if self.continuous is not None:
            out["continuous"] = list(self.continuous)
        return out

    @classmethod
    def from_dict(cls, spec: Mapping) -> "Amplitude":
        return cls(spec["values"], spec["weights"], continuous=spec.get("continuous"))

    def sample(self, rng: np.random.Generator, size) -> np.ndarray:
        """Draws of z: from the uniform law when the atoms discretise one, else from the atoms."""
        if self.continuous is not None:
            return rng.uniform(self.continuous[0], self.continuous[1], size)
        if self.is_point:
            return np.full(size, self.values[0])
        return self.values[np.searchsorted(np.cumsum(self.weights), rng.random(size), side="right")
                           .clip(max=self.values.size - 1)]

    def __eq__(self, other) -> bool:
        return (isinstance(other, Amplitude) and np.array_equal(self.values, other.values)
                and np.array_equal(self.weights, other.weights) and self.continuous == other.continuous)

    def __repr__(self) -> str:
        if self.is_point:
            return f"Amplitude.point({self.values[0]!r})"
        return f"Amplitude(values={self.values.tolist()!r}, weights={self.weights.tolist()!r})"


_UNIT = Amplitude.point(1.0)


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
        try:
            raw = np.asarray(areas)
        except (TypeError, ValueError):     # ragged nesting and the like
            raise ValueError(f"areas must be a sequence or 2-d array of labels, got {_fmt(areas)}") from None
        if raw.dtype == object or raw.size == 0 or raw.ndim not in (1, 2):
            raise ValueError(f"areas must be a non-empty sequence or 2-d array of labels, got {_fmt(areas)}")
        if raw.dtype.kind == "f":
            if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
                raise ValueError(f"areas must hold integer labels, got {_fmt(areas)}")
        elif raw.dtype.kind not in "iub":
            raise ValueError(f"areas must hold integer labels, got {_fmt(areas)}")
        self.shape = raw.shape
        labels = raw.astype(np.int64).ravel()
        present = np.unique(labels)
        if present[0] != 0 or present[-1] != present.size - 1:
            raise ValueError(f"areas labels must be exactly 0..N-1, got labels {_fmt(present)}")
        self.areas = labels
        self.areas.setflags(write=False)
        self.n_areas = int(present.size)
        if prob is not None:
            try:
                p = float(prob) if np.ndim(prob) == 0 else np.nan
            except (TypeError, ValueError):
                p = np.nan
            if not np.isfinite(p) or p < 0:
                raise ValueError(f"prob must be finite and >= 0, got {prob!r}")
            prob = p
        self.prob = prob
        self.amplitudes = self._resolve_amplitudes(amplitudes)

    def _resolve_amplitudes(self, amplitudes) -> tuple[Amplitude, ...]:
        if amplitudes is None:
            return (_UNIT,) * self.n_areas
        if isinstance(amplitudes, Amplitude):
            return (amplitudes,) * self.n_areas
        if isinstance(amplitudes, Mapping):
            out = [_UNIT] * self.n_areas
            for label, amp in amplitudes.items():
                if not (isinstance(label, (int, np.integer)) and 0 <= label < self.n_areas):
                    raise ValueError(f"amplitudes key must be an area label 0..{self.n_areas - 1}, got {label!r}")
                if not isinstance(amp, Amplitude):
                    raise ValueError(f"amplitudes[{label}] must be an Amplitude, got {amp!r}")
                out[int(label)] = amp
            return tuple(out)
        raise ValueError(f"amplitudes must be None, an Amplitude or a mapping label -> Amplitude, got {amplitudes!r}")

    def area_sizes(self) -> np.ndarray:
        return np.bincount(self.areas, minlength=self.n_areas)

    def __repr__(self) -> str:
        return f"Cluster(n_areas={self.n_areas}, prob={self.prob!r})"


@dataclass(frozen=True)
class _Classes:
    class_of: np.ndarray      # (P,) class id of every position
    sizes: np.ndarray         # (S,) number of positions per class
    signatures: np.ndarray    # (S, K) area label of the class in every cluster


class DataModel:
    """The data distribution of MODEL.md section 1.

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
    the classes that the reduced flow tracks (``class_of``, ``class_sizes``).
    """

    def __init__(self, n_patches: int | None = None, grid=None, clusters: Sequence[Cluster] = (),
                 mask_ratio: float = 0.5):
        self.grid = self._check_grid(grid)
        if n_patches is None and self.grid is None:
            raise ValueError("n_patches or grid must be given, got neither")
        if n_patches is not None:
            if isinstance(n_patches, bool) or not isinstance(n_patches, (int, np.integer)) or n_patches < 1:
                raise ValueError(f"n_patches must be a positive integer, got {n_patches!r}")
            n_patches = int(n_patches)
            if self.grid is not None and self.grid[0] * self.grid[1] != n_patches:
                raise ValueError(f"n_patches must equal H*W of grid {self.grid}, got {n_patches}")
        self.n_patches = n_patches if n_patches is not None else self.grid[0] * self.grid[1]

        if isinstance(clusters, Cluster):
            clusters = [clusters]
        try:
            clusters = list(clusters)
        except TypeError:
            raise ValueError(f"clusters must be a sequence of Cluster, got {clusters!r}") from None
        if not clusters:
            raise ValueError("clusters must hold at least one Cluster, got none")
        for k, c in enumerate(clusters):
            if not isinstance(c, Cluster):
                raise ValueError(f"clusters[{k}] must be a Cluster, got {c!r}")
            if c.areas.size != self.n_patches:
                raise ValueError(f"clusters[{k}].areas must have length P={self.n_patches}, got {c.areas.size}")
            if len(c.shape) == 2 and self.grid is not None and c.shape != self.grid:
                raise ValueError(f"clusters[{k}].areas must have the grid shape {self.grid}, got {c.shape}")
        probs = self._resolve_probs(clusters)
        # copies carry the resolved probability without mutating the caller's clusters
        self.clusters = tuple(self._with_prob(c, p) for c, p in zip(clusters, probs))
        self.probs = probs

        try:
            gamma = float(mask_ratio)
        except (TypeError, ValueError):
            raise ValueError(f"mask_ratio must be a number in (0, 1), got {mask_ratio!r}") from None
        if not (0.0 < gamma < 1.0):  # also rejects NaN
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
        self.mask_ratio = gamma

        self.features = [(k, j) for k, c in enumerate(self.clusters) for j in range(c.n_areas)]
        self._feature_offset = np.cumsum([0] + [c.n_areas for c in self.clusters])
        self._classes = self._signature_classes()

    @staticmethod
    def _check_grid(grid):
        if grid is None:
            return None
        try:
            h, w = grid
            ok = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1 for x in (h, w))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"grid must be a pair of positive integers (H, W), got {grid!r}")
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
            raise ValueError(f"prob must be given for every cluster or for none, got {given!r}")
        p = np.array(given, dtype=np.float64)
        if abs(p.sum() - 1.0) > _SUM_TOL:
            raise ValueError(f"prob of the clusters must sum to 1, got {given!r} (sum {p.sum()!r})")
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
        if not (0 <= k < self.n_clusters):
            raise ValueError(f"cluster index k must be in 0..{self.n_clusters - 1}, got {k!r}")
        if not (0 <= j < self.clusters[k].n_areas):
            raise ValueError(f"area index j must be in 0..{self.clusters[k].n_areas - 1}, got {j!r}")
        return int(self._feature_offset[k] + j)

    def area_of(self, k: int) -> np.ndarray:
        """(P,) area label of every position in cluster k."""
        return self.clusters[k].areas

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

    def __repr__(self) -> str:
        where = f"grid={self.grid}" if self.grid else f"n_patches={self.n_patches}"
        return (f"DataModel({where}, n_clusters={self.n_clusters}, n_features={self.n_features}, "
                f"n_classes={self.n_classes}, mask_ratio={self.mask_ratio})")
