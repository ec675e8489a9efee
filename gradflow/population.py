"""Population loss, gradient and expected attention for arbitrary per-position correlations.

These are the public entry points to the kernels: ``population_loss`` and ``population_grad``
take any real A (P x F) and B (P x P) and assume no symmetry. The solver uses the same
``evaluate`` on class-reduced states.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .model import DataModel
from .reduction import Reduction, position_reduction

LOG_WEIGHT_LIMIT = 1e6   # largest |score| accepted: ~5e6 quadrature nodes per query at most


def check_method(method: str) -> int:
    if method not in kernels.METHODS:
        raise ValueError(f"method must be one of {sorted(kernels.METHODS)}, got {method!r}")
    return kernels.METHODS[method]


def evaluate(red: Reduction, method: str, A, B, B_self, want_grad: bool = True):
    """Loss and per-entry gradient (dA, dB, dB_self) of a class-resolution state."""
    code = check_method(method)
    closed = code == kernels.MEANFIELD and red.all_point
    return kernels.loss_and_grad(code, want_grad, A, B, B_self, *red.kernel_args(), closed)


def attention_mass(red: Reduction, method: str, A, B, B_self):
    """Expected attention (unmasked (K,S,S), masked (K,S,S), self (K,S)), see kernels."""
    return kernels.attention_mass(check_method(method), A, B, B_self, *red.kernel_args())


def attention_maps(red: Reduction, method: str, A, B, B_self, part: str = "total", clusters=None):
    """Per-position expected attention (len(clusters), P, P) of a class-resolution state.

    Row p, column q: expected softmax weight of key q for a masked query p; the diagonal is the
    query's weight on itself. ``part`` restricts to keys that are "unmasked" or "masked".
    """
    if part not in ("total", "unmasked", "masked"):
        raise ValueError(f"part must be 'total', 'unmasked' or 'masked', got {part!r}")
    unm, msk, slf = attention_mass(red, method, A, B, B_self)
    per_class = {"total": unm + msk, "unmasked": unm, "masked": msk}[part]
    clusters = range(red.n_clusters) if clusters is None else clusters
    with np.errstate(invalid="ignore", divide="ignore"):
        per_key = np.where(red.mprime > 0, per_class / red.mprime, 0.0)
    c = red.class_of
    idx = np.arange(c.size)
    out = np.empty((len(clusters), c.size, c.size))
    for i, k in enumerate(clusters):
        out[i] = per_key[k][c][:, c]
        out[i, idx, idx] = 0.0 if part == "unmasked" else slf[k][c]
    return out


def own_area_mass(red: Reduction, unmasked: np.ndarray) -> np.ndarray:
    """(..., K, S) expected mass on the unmasked keys of the query's own area, from the
    per-class unmasked masses (..., K, S, S) of ``attention_mass``."""
    same_area = red.class_feature[:, :, None] == red.class_feature[:, None, :]   # (K, S, S)
    return np.sum(np.where(same_area, unmasked, 0.0), axis=-1)


def area_attention(model: DataModel, A, B, method: str = "exact") -> np.ndarray:
    """(K, P) expected mass a masked query at p puts on the unmasked keys of its own area."""
    check_method(method)
    A, B = _check_state(model, A, B)
    red = position_reduction(model)
    return own_area_mass(red, attention_mass(red, method, A, *_split(B))[0])


def _check_state(model: DataModel, A, B):
    P, F = model.n_patches, model.n_features
    out = []
    for name, value, shape in (("A", A, (P, F)), ("B", B, (P, P))):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a real array of shape {shape}, got {value!r}") from None
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (P={P}, F={F}), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got non-finite entries at {np.argwhere(~np.isfinite(arr))[:3].tolist()}")
        out.append(np.ascontiguousarray(arr))
    # the kernels' t-grid grows with the spread of the log key weights B + z A: refuse states
    # that would need billions of nodes rather than hang
    zmax = np.array([a.values.max() for c in model.clusters for a in c.amplitudes])
    span = np.abs(out[1]).max() + (np.abs(out[0]) * zmax[None, :]).max()
    if span > LOG_WEIGHT_LIMIT:
        raise ValueError(f"A, B are too large: attention scores |B| + z |A| reach {span:.3g} "
                         f"(limit {LOG_WEIGHT_LIMIT:g})")
    return out


def _split(B: np.ndarray):
    return B, np.ascontiguousarray(np.diag(B))


def population_loss(model: DataModel, A, B, method: str = "exact") -> float:
    """Expected masked-reconstruction loss L(Q) of MODEL.md section 2.

    Parameters
    ----------
    model : DataModel
    A : (P, F) array_like
        Feature-position correlations e_p^T Q v_f.
    B : (P, P) array_like
        Position-position correlations e_p^T Q e_q (diagonal: a masked query's self score).
    method : {"exact", "meanfield"}
        "exact" is the exact expectation over masks and amplitudes at finite P; "meanfield"
        replaces the unmasked counts by their means.

    Returns
    -------
    float
    """
    check_method(method)
    A, B = _check_state(model, A, B)
    red = position_reduction(model)
    loss, *_ = evaluate(red, method, A, *_split(B), want_grad=False)
    return float(loss)


def population_grad(model: DataModel, A, B, method: str = "exact"):
    """Gradient of :func:`population_loss`: ``(dL/dA (P, F), dL/dB (P, P))``."""
    check_method(method)
    A, B = _check_state(model, A, B)
    red = position_reduction(model)
    _, gA, gB, gS = evaluate(red, method, A, *_split(B))
    gB = gB.copy()
    np.fill_diagonal(gB, gS)
    return gA, gB


def expected_attention(model: DataModel, A, B, method: str = "exact", part: str = "total") -> np.ndarray:
    """Expected attention maps (K, P, P) of masked queries for per-position correlations.

    Entry [k, p, q] is E[w_pq | p masked, cluster k], averaged over the other masks and the
    amplitudes; ``part`` keeps only the cases where q is "unmasked" or "masked". Rows of the
    "total" map sum to one.
    """
    check_method(method)
    A, B = _check_state(model, A, B)
    return attention_maps(position_reduction(model), method, A, *_split(B), part=part)
