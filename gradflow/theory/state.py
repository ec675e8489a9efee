"""The state of the flow: attention correlations at class resolution (docs/model.md section 3).

A ``State`` holds, for the S classes of a ``Reduction``: ``A_classes`` (S, F) feature-position
correlations, ``B_classes`` (S, S) position-position correlations between distinct positions,
and ``B_self`` (S,) the self correlation B[p, p]. Any number of leading axes (e.g. time) may come
first. ``A`` and ``B`` expand to per-position arrays on access; ``flat`` / ``from_flat`` give the
vector an integrator evolves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import check_memory, real_array
from ..errors import InvalidInputError
from ..model import DataModel
from .reduction import Reduction, position_reduction

LOG_WEIGHT_LIMIT = 1e6   # largest |score| accepted: ~5e6 quadrature nodes per query at most
ROWS_PER_CHECK = 256     # rows of B compared at once by ``on_classes``


@dataclass(frozen=True, eq=False)
class State:
    """Attention correlations per class, optionally with leading (time) axes."""

    reduction: Reduction
    A_classes: np.ndarray      # (..., S, F)
    B_classes: np.ndarray      # (..., S, S): B[p, q] for p != q in classes s, r
    B_self: np.ndarray         # (..., S): B[p, p]

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def zeros(cls, reduction: Reduction) -> "State":
        """Q = 0: every correlation zero."""
        S, F = reduction.n_classes, reduction.n_features
        return cls(reduction, np.zeros((S, F)), np.zeros((S, S)), np.zeros(S))

    @classmethod
    def from_flat(cls, reduction: Reduction, y: np.ndarray) -> "State":
        """Views of a flat vector (or a stack of them, leading axes first)."""
        S, F = reduction.n_classes, reduction.n_features
        if y.shape[-1] != flat_size(reduction):
            raise InvalidInputError(f"state vector must have {flat_size(reduction)} entries "
                                    f"(S={S} classes, F={F} features), got {y.shape[-1]}")
        lead = y.shape[:-1]
        return cls(reduction, y[..., :S * F].reshape(lead + (S, F)),
                   y[..., S * F:S * F + S * S].reshape(lead + (S, S)), y[..., S * F + S * S:])

    @classmethod
    def from_positions(cls, model: DataModel, A, B) -> "State":
        """A validated per-position state (every position its own class) from A (P, F), B (P, P).

        Complex, non-numeric or non-finite input is refused, as are scores so large that the
        quadrature would need billions of nodes.
        """
        P, F = model.n_patches, model.n_features
        A = real_array("A", A, (P, F))
        B = real_array("B", B, (P, P))
        reduction = position_reduction(model)
        zmax = np.where(np.isfinite(reduction.atom_log_weight), reduction.atom_z, 0.0).max(axis=1)
        span = (np.abs(B).max() if B.size else 0.0) + (np.abs(A) * zmax[None, :]).max()
        if span > LOG_WEIGHT_LIMIT:
            raise InvalidInputError(f"A, B are too large: attention scores |B| + z |A| reach {span:.3g} "
                                    f"(limit {LOG_WEIGHT_LIMIT:g})")
        B_off = B.copy()
        np.fill_diagonal(B_off, 0.0)
        return cls(reduction, A, B_off, np.ascontiguousarray(np.diag(B)))

    def on_classes(self, reduction: Reduction) -> "State | None":
        """This single per-position state on ``reduction``'s (coarser) classes when it is exactly
        equal within them: A within every class, B within every pair of classes and on the
        diagonal of each (as a state a symmetric flow reached, e.g. ``Solution.A[i]``,
        ``Solution.B[i]``); else None. Exchangeable positions stay exchangeable, so every
        expectation of the state is then the same on the classes, for a fraction of the work.
        ``reduction`` must be of the same model; the state keeps its t-integrals' rule."""
        own = self.reduction
        if self.shape or own.n_classes != own.n_positions:
            raise InvalidInputError("on_classes needs a single per-position state")
        c = reduction.class_of
        if not _same_model(own, reduction):
            raise InvalidInputError("on_classes needs a reduction of the state's own model")
        rep = reduction.representative()
        # a second member of every class, for B between distinct members (itself for a single one,
        # whose within-class entry no key ever reads); whichever write wins for a class, it is
        # one of its other members, and any will do: a state that passes the check below is equal
        # over all of them
        second = rep.copy()
        later = np.flatnonzero(np.arange(c.size) != rep[c])
        second[c[later]] = later
        B = self.B_classes[rep][:, rep]
        B[np.arange(rep.size), np.arange(rep.size)] = self.B_classes[rep, second]
        candidate = State(reduction._replace(grid_step=own.grid_step), self.A_classes[rep], B, self.B_self[rep])
        if not (np.array_equal(candidate.A_classes[c], self.A_classes)
                and np.array_equal(candidate.B_self[c], self.B_self)):
            return None
        for lo in range(0, c.size, ROWS_PER_CHECK):     # B in blocks of rows: no P x P temporaries
            rows = np.arange(lo, min(lo + ROWS_PER_CHECK, c.size))
            block = B[c[rows]][:, c]
            block[np.arange(rows.size), rows] = 0.0      # a per-position state's B_classes has a zero diagonal
            if not np.array_equal(block, self.B_classes[rows]):
                return None
        return candidate

    def with_quadrature(self, quadrature: str) -> "State":
        """The same correlations, their t-integrals taken with the rule ``quadrature`` ("fine"
        or "fast", ``Reduction.with_quadrature``)."""
        return State(self.reduction.with_quadrature(quadrature), self.A_classes, self.B_classes, self.B_self)

    # ---- views -----------------------------------------------------------------------------
    def flat(self) -> np.ndarray:
        """The flat vector (A, B, B_self concatenated; leading axes kept)."""
        lead = self.B_self.shape[:-1]
        return np.concatenate([self.A_classes.reshape(lead + (-1,)), self.B_classes.reshape(lead + (-1,)),
                               self.B_self], axis=-1)

    @property
    def shape(self) -> tuple:
        """Leading axes (e.g. (T,) for a trajectory, () for one time)."""
        return self.B_self.shape[:-1]

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("a single State has no length")
        return self.shape[0]

    def __getitem__(self, index) -> "State":
        """The state at leading index ``index`` (e.g. one output time of a trajectory)."""
        if not self.shape:
            raise TypeError("a single State cannot be indexed")
        return State(self.reduction, self.A_classes[index], self.B_classes[index], self.B_self[index])

    @property
    def A(self) -> np.ndarray:
        """(..., P, F) feature-position correlations e_p^T Q v_f."""
        lead = float(np.prod(self.shape))
        check_memory(lead * self.reduction.n_positions * self.reduction.n_features,
                     f"the per-position A {self.shape + (self.reduction.n_positions, self.reduction.n_features)}")
        return self.A_classes[..., self.reduction.class_of, :]

    @property
    def B(self) -> np.ndarray:
        """(..., P, P) position-position correlations e_p^T Q e_q (diagonal: B_self)."""
        c = self.reduction.class_of
        P, S = c.size, self.reduction.n_classes
        lead = float(np.prod(self.shape))
        # the (..., P, S) intermediate and the (..., P, P) result exist at once
        check_memory(lead * (P * S + 2.0 * P * P), f"the per-position B {self.shape + (P, P)}")
        out = self.B_classes[..., c, :][..., :, c].copy()
        idx = np.arange(c.size)
        out[..., idx, idx] = self.B_self[..., c]
        return out

    def __repr__(self) -> str:
        lead = f"{self.shape} x " if self.shape else ""
        return (f"State({lead}{self.reduction.n_classes} classes, {self.reduction.n_features} features, "
                f"P={self.reduction.n_positions})")


def _same_model(positions: Reduction, classes: Reduction) -> bool:
    """Whether ``classes`` groups the positions of the per-position reduction ``positions`` of one
    model: the same mask ratio, clusters, amplitudes, and every position's area in every cluster."""
    c = classes.class_of
    return (c.size == positions.n_positions and classes.mask_ratio == positions.mask_ratio
            and np.array_equal(classes.cluster_prob, positions.cluster_prob)
            and np.array_equal(classes.atom_z, positions.atom_z)
            and np.array_equal(classes.atom_log_weight, positions.atom_log_weight)
            and np.array_equal(classes.key_feature[:, c], positions.key_feature))


def flat_size(reduction: Reduction) -> int:
    """Entries of the flat state vector: S*F + S*S + S."""
    S, F = reduction.n_classes, reduction.n_features
    return S * F + S * S + S
