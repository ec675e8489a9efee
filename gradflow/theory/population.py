"""The population loss, its gradient and the expected attention, on a ``State``.

These work at any class resolution and are what the flow uses: ``loss``, ``loss_and_gradient``,
``attention_by_class`` and what derives from them. The public per-position API built on them
(any real A (P x F) and B (P x P), no symmetry assumed) is ``per_position``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import check_memory, choice
from ..model import DataModel
from . import kernels, warmup
from .parallel import run_rows, threads_for
from .reduction import Reduction
from .state import State

METHODS = tuple(kernels.METHODS)


def check_method(method) -> str:
    """'exact' or 'meanfield', or InvalidInputError."""
    return choice("method", method, METHODS)


def kernel_method(reduction: Reduction, method: str) -> np.int64:
    """The kernels' run-time method code; the mean field of point-mass amplitudes is a rational
    function, evaluated in closed form (no t-integral)."""
    code = kernels.METHODS[check_method(method)]
    if code == kernels.MEANFIELD and reduction.all_point:
        code = kernels.CLOSED_FORM
    return np.int64(code)


def all_clusters(reduction: Reduction) -> np.ndarray:
    return np.arange(reduction.n_clusters, dtype=np.int64)


def loss(state: State, method: str = "exact", clusters=None) -> float:
    """Population loss of a single-time state (summed over ``clusters``, default all)."""
    reduction = state.reduction
    clusters = all_clusters(reduction) if clusters is None else clusters
    code = kernel_method(reduction, method)
    A, B, B_self = state.A_classes, state.B_classes, state.B_self
    losses = np.zeros(reduction.n_classes)
    if code == kernels.EXACT:
        def call(rows):
            kernels.exact_loss_rows(reduction, A, B, B_self, clusters, rows, losses)
    else:
        def call(rows):
            kernels.meanfield_loss_rows(code, reduction, A, B, B_self, clusters, rows, losses)
    run_rows(call, reduction.n_classes, threads_for(reduction))
    value = losses.sum()
    return float(value)


def loss_and_gradient(state: State, method: str = "exact", clusters=None) -> tuple[float, State]:
    """Population loss and its per-entry gradient, as a State of derivatives (summed over
    ``clusters``, default all)."""
    value, gradient, _ = loss_gradient_and_masses(state, method, clusters)
    return value, gradient


def loss_gradient_and_masses(state: State, method: str = "exact", clusters=None):
    """(loss, gradient State, masses): as ``loss_and_gradient``, and for the exact method the
    attention by area of the state, ``(unmasked (K, S, N), masked (K, S))`` as
    ``attention_by_area`` gives it (zero outside ``clusters``), which the gradient's pass
    computes almost for free; ``masses`` is None for the mean field (observables are exact)."""
    reduction = state.reduction
    clusters = all_clusters(reduction) if clusters is None else clusters
    code = kernel_method(reduction, method)
    A, B, B_self = state.A_classes, state.B_classes, state.B_self
    S, F, K = reduction.n_classes, reduction.n_features, reduction.n_clusters
    gA, gB, gS, losses = np.zeros((S, F)), np.zeros((S, S)), np.zeros(S), np.zeros(S)
    if code == kernels.EXACT:
        unmasked, masked = np.zeros((K, S, kernels.max_areas(reduction))), np.zeros((K, S))
        masses = (unmasked, masked)

        def call(rows):
            kernels.exact_loss_grad_rows(reduction, A, B, B_self, clusters, rows, losses, gA, gB, gS,
                                         unmasked, masked)
    else:
        masses = None

        def call(rows):
            kernels.meanfield_loss_grad_rows(code, reduction, A, B, B_self, clusters, rows, losses, gA, gB, gS)
    run_rows(call, S, threads_for(reduction))
    value = losses.sum()
    return float(value), State(reduction, gA, gB, gS), masses


def loss_rate(gradient: State) -> float:
    """dL/dt along the flow: -(sum over all entries of the squared per-entry gradient).

    A class parameter stands for several entries of A and B (its class's positions, times the
    keys of the other class for B), each moving at minus its own derivative."""
    reduction = gradient.reduction
    n = reduction.class_size
    pairs = n[:, None] * reduction.other_keys
    return -float(np.sum(n[:, None] * gradient.A_classes ** 2) + np.sum(pairs * gradient.B_classes ** 2)
                  + np.sum(n * gradient.B_self ** 2))


class ClassAttention(NamedTuple):
    """Expected attention of masked queries per key class, per cluster (rows sum to one)."""

    unmasked: np.ndarray     # (K, S, S) mass on the unmasked keys of class r (the query excluded)
    masked: np.ndarray       # (K, S, S) mass on the masked keys of class r (the query excluded)
    on_self: np.ndarray      # (K, S) mass on the query itself


def attention_by_class(state: State, method: str = "exact") -> ClassAttention:
    """Expected attention of a masked query of every class on every key class."""
    reduction = state.reduction
    check_memory(2.0 * reduction.n_clusters * reduction.n_classes ** 2,
                 f"attention of {reduction.n_classes} classes on each other")
    code = np.int64(kernels.METHODS[check_method(method)])
    S, K = reduction.n_classes, reduction.n_clusters
    out = ClassAttention(np.zeros((K, S, S)), np.zeros((K, S, S)), np.zeros((K, S)))
    clusters = all_clusters(reduction)

    def call(rows):
        kernels.class_attention_rows(code, reduction, state.A_classes, state.B_classes, state.B_self, clusters,
                                     rows, *out)
    run_rows(call, S, threads_for(reduction))
    return out


def attention_by_area(states: State, method: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """(unmasked (T, K, S, N), masked (T, K, S)) along a trajectory, in one pass over
    its (time, class) rows on threads:
    the mass of a masked query on the unmasked keys of each area of its cluster, and on masked
    keys (itself included)."""
    warmup.wait_for("attention")          # a first run's child may be compiling these kernels
    reduction = states.reduction
    A = np.ascontiguousarray(states.A_classes.reshape((-1,) + states.A_classes.shape[-2:]))
    B = np.ascontiguousarray(states.B_classes.reshape((-1,) + states.B_classes.shape[-2:]))
    Bs = np.ascontiguousarray(states.B_self.reshape((-1, states.B_self.shape[-1])))
    code = np.int64(kernels.METHODS[check_method(method)])
    T, S, K = A.shape[0], reduction.n_classes, reduction.n_clusters
    unmasked, masked = np.zeros((T, K, S, kernels.max_areas(reduction))), np.zeros((T, K, S))
    clusters = all_clusters(reduction)

    def call(rows):
        kernels.area_attention_rows(code, reduction, A, B, Bs, clusters, rows, unmasked, masked)
    run_rows(call, T * S, threads_for(reduction, times=T))
    lead = states.shape
    return unmasked.reshape(lead + unmasked.shape[1:]), masked.reshape(lead + masked.shape[1:])


def own_area_attention(reduction: Reduction, unmasked: np.ndarray) -> np.ndarray:
    """(..., K, S) expected mass on the unmasked keys of the query's own area (the "target"),
    from per-class unmasked masses (..., K, S, S)."""
    same_area = reduction.key_feature[:, :, None] == reduction.key_feature[:, None, :]   # (K, S, S)
    return np.sum(np.where(same_area, unmasked, 0.0), axis=-1)


def mass_by_area(reduction: Reduction, unmasked: np.ndarray) -> np.ndarray:
    """(..., K, S, N) unmasked mass on every area of the cluster (N = most areas of a cluster),
    from per-class unmasked masses (..., K, S, S)."""
    K, S = reduction.n_clusters, reduction.n_classes
    n_areas = int((reduction.feature_stop - reduction.feature_start).max())
    onehot = np.zeros((K, S, n_areas))
    onehot[np.arange(K)[:, None], np.arange(S)[None, :], reduction.area_of_class()] = 1.0   # key -> area
    return np.einsum("...ksr,kra->...ksa", unmasked, onehot)


def attention_maps(state: State, method: str = "exact", part: str = "total", clusters=None) -> np.ndarray:
    """Per-position expected attention (len(clusters), P, P) of a single-time state.

    Row p, column q: expected softmax weight of key q for a masked query p; the diagonal is the
    query's weight on itself. ``part`` keeps only keys that are "unmasked" or "masked".
    """
    choice("part", part, ("total", "unmasked", "masked"))
    reduction = state.reduction
    clusters = range(reduction.n_clusters) if clusters is None else clusters
    P = reduction.n_positions
    # refused before the (slow, at large P) attention pass, not after it
    check_memory(2.0 * reduction.n_clusters * reduction.n_classes ** 2 + len(clusters) * P * P,
                 f"attention maps of {len(clusters)} cluster(s) at P = {P}")
    att = attention_by_class(state, method)
    per_class = {"total": att.unmasked + att.masked, "unmasked": att.unmasked, "masked": att.masked}[part]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_key = np.where(reduction.other_keys > 0, per_class / reduction.other_keys, 0.0)
    c = reduction.class_of
    idx = np.arange(c.size)
    out = np.empty((len(clusters), c.size, c.size))
    for i, k in enumerate(clusters):
        out[i] = per_key[k][c][:, c]
        out[i, idx, idx] = 0.0 if part == "unmasked" else att.on_self[k][c]
    return out


def target_attention_at(model: DataModel, A, B, method: str = "exact") -> np.ndarray:
    """(K, P) expected mass a masked query at p puts on the unmasked keys of its own area."""
    state = State.from_positions(model, A, B)     # validates A, B against the model
    return own_area_attention(state.reduction, attention_by_class(state, check_method(method)).unmasked)
