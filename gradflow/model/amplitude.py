"""Amplitude laws of the areas (docs/model.md section 1): discrete atoms z > 0 with weights."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._validate import check_memory, fmt, is_real, positive_int, size_text
from ..errors import InvalidInputError

SUM_TOL = 1e-9
AMPLITUDE_MAX = 1e6   # z enters the scores as z * A: beyond this the t-grid of the kernels explodes
MAX_ATOMS = 4096      # atoms per area: the kernels keep (classes x atoms) work arrays per query


def _float_array(name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    except (TypeError, ValueError):            # ragged nesting and the like
        raise InvalidInputError(f"{name} must be real numbers, got {fmt(value)}") from None
    if arr.dtype.kind not in "iuf":
        raise InvalidInputError(f"{name} must be real numbers, got {fmt(value)}")
    return np.atleast_1d(arr.astype(np.float64))


class Amplitude:
    """Distribution of an area's amplitude ``z > 0`` as discrete atoms.

    Parameters
    ----------
    values : sequence of float
        Atom locations, each finite, > 0 and <= 1e6.
    weights : sequence of float, optional
        Atom probabilities, non-negative and summing to 1 (default: uniform).
    continuous : (low, high), optional
        The uniform law the atoms discretise (set by :meth:`uniform`): Monte Carlo samples it.

    Examples
    --------
    >>> Amplitude([0.5, 1.5], [0.5, 0.5]).mean()
    1.0
    >>> Amplitude.uniform(0.5, 1.5, n_atoms=4).values.round(3).tolist()
    [0.569, 0.83, 1.17, 1.431]
    """

    def __init__(self, values, weights=None, *, continuous: tuple[float, float] | None = None):
        v = _float_array("amplitude values", values)
        if v.ndim != 1 or v.size == 0:
            raise InvalidInputError(f"amplitude values must be a non-empty 1-d sequence, got {fmt(values)}")
        if v.size > MAX_ATOMS:
            raise InvalidInputError(f"amplitude values must hold at most {MAX_ATOMS} atoms, got {v.size}")
        if not np.all(np.isfinite(v)) or np.any(v <= 0) or np.any(v > AMPLITUDE_MAX):
            raise InvalidInputError(
                f"amplitude values must be finite, > 0 and <= {AMPLITUDE_MAX:g}, got {fmt(values)}")
        if weights is None:
            w = np.full(v.size, 1.0 / v.size)
        else:
            w = _float_array("amplitude weights", weights)
            if w.shape != v.shape:
                raise InvalidInputError(
                    f"amplitude weights must have one entry per value ({v.size}), got {fmt(weights)}")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise InvalidInputError(f"amplitude weights must be finite and >= 0, got {fmt(weights)}")
            if abs(w.sum() - 1.0) > SUM_TOL:
                raise InvalidInputError(f"amplitude weights must sum to 1, got {fmt(weights)} (sum {w.sum()!r})")
        keep = w > 0  # zero-weight atoms carry no information and would give log(0)
        self.values = v[keep].copy()
        self.weights = w[keep] / w[keep].sum()
        self.values.setflags(write=False)
        self.weights.setflags(write=False)
        self.continuous = None if continuous is None else self._check_continuous(continuous, self.values)

    @staticmethod
    def _check_continuous(bounds, values) -> tuple[float, float]:
        try:
            low, high = bounds
        except (TypeError, ValueError):
            raise InvalidInputError(f"amplitude continuous must be a pair (low, high), got {fmt(bounds)}") from None
        if not (is_real(low) and is_real(high) and 0 < low <= high <= AMPLITUDE_MAX):
            raise InvalidInputError(f"amplitude continuous bounds must satisfy 0 < low <= high <= "
                                    f"{AMPLITUDE_MAX:g}, got {fmt(bounds)}")
        if values.min() < low or values.max() > high:
            raise InvalidInputError(f"amplitude values must lie within the continuous bounds {fmt(bounds)}")
        return float(low), float(high)

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
        if not (is_real(low) and np.isfinite(low) and low > 0):
            raise InvalidInputError(f"amplitude low must be finite and > 0, got {fmt(low)}")
        if not (is_real(high) and np.isfinite(high) and high >= low):
            raise InvalidInputError(f"amplitude high must be finite and >= low ({low}), got {fmt(high)}")
        n_atoms = positive_int("n_atoms", n_atoms)
        # numpy's Gauss-Legendre rule solves an n x n eigenproblem: n^2 numbers and their copies
        need = 3.0 * float(n_atoms) ** 2
        if n_atoms > MAX_ATOMS:
            raise InvalidInputError(
                f"n_atoms must be at most {MAX_ATOMS}, got {n_atoms}: the Gauss-Legendre rule of {n_atoms} atoms "
                f"would need {size_text(8.0 * need)} of memory to build (an n_atoms x n_atoms eigenproblem), "
                f"and every query of the kernels keeps (classes x atoms) work arrays")
        check_memory(need, f"the Gauss-Legendre rule of n_atoms={n_atoms} atoms")
        low_f, high_f = float(low), float(high)
        if high_f == low_f:
            return cls.point(low_f)
        x, w = np.polynomial.legendre.leggauss(n_atoms)
        return cls(low_f + (x + 1.0) * 0.5 * (high_f - low_f), w / w.sum(), continuous=(low_f, high_f))

    @property
    def is_point(self) -> bool:
        return self.values.size == 1

    def mean(self) -> float:
        return float(self.weights @ self.values)

    def moment2(self) -> float:
        """E[z^2]."""
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

    def __hash__(self) -> int:
        return hash((self.values.tobytes(), self.weights.tobytes(), self.continuous))

    def __repr__(self) -> str:
        if self.is_point:
            return f"Amplitude.point({float(self.values[0])!r})"
        if self.continuous is not None:
            return f"Amplitude.uniform({self.continuous[0]!r}, {self.continuous[1]!r}, n_atoms={self.values.size})"
        return f"Amplitude(values={self.values.tolist()!r}, weights={self.weights.tolist()!r})"


UNIT = Amplitude.point(1.0)
