"""Observables along a trajectory (docs/model.md section 5): attention by area, the target and
its fraction of the ceiling, and attention diversity.

They take any result with ``t``, ``states`` (a ``State`` with a leading time axis) and ``model``:
a ``Solution`` (per class, any P) and a Monte-Carlo ``TrainRun`` (per position, from its projected
correlations) are measured with the same definitions. The attention is always the exact
expectation over masks and amplitudes of the state, whatever flow produced it: a mean-field
state is a Q like any other, and the ceiling and phase times refer to the exact attention.

The one exception is a ``TrainRun`` that carries measured attention (``attention_by_area``,
from a PyTorch rung, docs/model.md section 6): for it, :func:`area_masses` returns those
measurements, and they are the definition of its T1, T2, T3 (a network that has no projected
A, B has no exact expectation to take).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import trajectory
from ..errors import InvalidInputError
from ..theory.population import attention_by_area, attention_by_class
from ..theory.reduction import Reduction, position_reduction
from ..theory.state import State

OBSERVABLE_METHOD = "exact"     # observables are exact expectations of the state (see above)


class AreaMasses(NamedTuple):
    """Expected attention of masked queries by area, along the result's times."""

    by_area: np.ndarray      # (T, K, S, N) mass on the unmasked keys of each area of the cluster
    masked: np.ndarray       # (T, K, S) mass on masked keys, the query itself included
    reduction: Reduction     # its classes S index the arrays (reduction.class_of maps positions)


def class_attention_along(states: State, method: str = OBSERVABLE_METHOD):
    """(unmasked (T, K, S, S), masked (T, K, S, S), on_self (T, K, S)) at every time."""
    T = len(states)
    reduction = states.reduction
    K, S = reduction.n_clusters, reduction.n_classes
    unmasked = np.empty((T, K, S, S))
    masked = np.empty((T, K, S, S))
    on_self = np.empty((T, K, S))
    for i in range(T):
        unmasked[i], masked[i], on_self[i] = attention_by_class(states[i], method)
    return unmasked, masked, on_self


def observed_states(result) -> State:
    """The states whose exact attention a result's observables are: its own, with the t-integrals'
    rule of the solve that produced them (``Solution.quadrature``; "fast" for large states: the
    attention to ~1e-12, far inside the integrator's own tolerance, for ~0.7 of the work)."""
    states = result.states
    rule = getattr(result, "quadrature", "fine")
    if rule == "fine":
        return states
    return states.with_quadrature(rule)


def own_area(by_area: np.ndarray, reduction: Reduction) -> np.ndarray:
    """(..., K, S) the target: the entry of (..., K, S, N) masses by area at each class's own area."""
    area = reduction.area_of_class()                               # (K, S)
    index = np.broadcast_to(area[..., None], by_area.shape[:-1] + (1,))
    return np.take_along_axis(by_area, index, axis=-1)[..., 0]


def target_attention_along(states: State, method: str = OBSERVABLE_METHOD) -> np.ndarray:
    """(T, K, S) expected mass on the unmasked keys of the query's own area, per class."""
    return own_area(attention_by_area(states, method)[0], states.reduction)


def area_masses(result) -> AreaMasses:
    """Attention by area along a Solution or TrainRun, in one batched kernel call (computed once,
    then kept on the result).

    For a run with measured attention (``result.attention_by_area`` not None) these are the
    measured masses on its evaluation batch, per position (every position its own class); for
    anything else the exact expectation of its states.
    """
    cached = getattr(result, "_area_masses", None)
    if cached is not None:
        return cached
    measured = getattr(result, "attention_by_area", None)
    if measured is not None:
        out = AreaMasses(np.asarray(measured, dtype=np.float64), np.asarray(result.masked_mass, dtype=np.float64),
                         position_reduction(result.model))
    else:
        states = observed_states(result)
        by_area, masked = attention_by_area(states, OBSERVABLE_METHOD)
        out = AreaMasses(by_area, masked, states.reduction)
    try:
        result._area_masses = out               # observables are read repeatedly
    except AttributeError:
        pass
    return out


# above this many state numbers a Solution's phases are read from its step ends by default (the
# size from which ``solve`` integrates with an explicit Runge-Kutta method, "auto")
STEP_TRACES_MIN_STATE = 2000


def phase_traces(result, traces: str = "auto") -> tuple[np.ndarray, AreaMasses]:
    """(times, AreaMasses) the phase times are read from.

    ``traces="outputs"``: the attention at the output times (``area_masses``: one exact pass per
    output time). ``"steps"``: a Solution's attention at every step end, which its exact gradient
    pass computed for free (``step_masses``; explicit Runge-Kutta methods evaluate the velocity at
    each step end). ``"auto"`` (default): the step ends for states of more than
    STEP_TRACES_MIN_STATE numbers when the solution has them, where measuring at every output
    time would cost more than the flow; else the output times. Both read the crossings by linear
    interpolation between samples (step ends are 30-50 per decade where the flow moves, output
    times 20 per decade): the two agree to ~0.3%; the output times are the same for any
    labelling of the model, the step ends only to that accuracy.
    """
    if traces not in ("auto", "outputs", "steps"):
        raise InvalidInputError(f"traces must be one of ['auto', 'outputs', 'steps'], got {traces!r}")
    steps = getattr(result, "step_masses", None)
    if traces == "steps" and steps is None:
        raise InvalidInputError("traces='steps' needs a Solution whose exact gradient pass recorded the attention at "
                                "its step ends (an exact flow integrated by RK45, RK23 or DOP853)")
    if steps is not None and (traces == "steps" or (traces == "auto" and result.states.flat().shape[-1]
                                                      > STEP_TRACES_MIN_STATE)):
        return np.asarray(result.step_t, dtype=np.float64), steps
    return np.asarray(result.t, dtype=np.float64), area_masses(result)


def target_fraction(target: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """target / ceiling, NaN for queries whose area is a single patch (ceiling 0: no target)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ceiling > 0, target / np.where(ceiling > 0, ceiling, 1.0), np.nan)


# ---- attention diversity ----------------------------------------------------------------------
def _diversity_one(per_key: np.ndarray, self_w: np.ndarray, sizes: np.ndarray) -> float:
    """1 - mean over pairs p != p' of sum_q min(w_p(q), w_p'(q)), from class-level maps.

    per_key[s, r]: weight of one key of class r (r != the query) for a query of class s;
    self_w[s]: weight of the query on itself. Exact for any class sizes, O(S^3).
    """
    S = sizes.size
    n = sizes.astype(np.float64)
    P = n.sum()
    total = 0.0
    for s in range(S):
        for s2 in range(S):
            pairs = n[s] * n[s2] - (n[s] if s == s2 else 0.0)
            if pairs <= 0:
                continue
            # keys other than p and p': generic members of every class
            generic = n - (np.arange(S) == s) - (np.arange(S) == s2)
            overlap = np.sum(generic * np.minimum(per_key[s], per_key[s2]))
            overlap += min(self_w[s], per_key[s2, s])        # key q = p
            overlap += min(per_key[s, s2], self_w[s2])       # key q = p'
            total += pairs * overlap
    return 1.0 - total / (P * (P - 1.0))


def ideal_diversity(model) -> float:
    """Diversity of the area-wide attention the paper predicts (docs/model.md section 5): every
    masked query spreads its attention evenly over the other patches of its own area (a
    single-patch area's query stays on itself). What ``attention_diversity`` can approach: near 1
    for many small areas, small for one dominant area."""
    from ..theory.reduction import signature_reduction
    reduction = signature_reduction(model)
    out = 0.0
    for k in range(reduction.n_clusters):
        area = reduction.key_feature[k]                               # (S,) feature of each class
        sizes = np.bincount(area, weights=reduction.class_size, minlength=reduction.n_features)[area]
        same = area[:, None] == area[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_key = np.where(same & (sizes[:, None] > 1), 1.0 / (sizes[:, None] - 1.0), 0.0)
        self_w = np.where(sizes > 1, 0.0, 1.0)
        out += reduction.cluster_prob[k] * _diversity_one(per_key, self_w, reduction.class_size)
    return float(out)


def attention_diversity(result, at=None) -> np.ndarray:
    """Attention diversity (docs/model.md section 5), per cluster, weighted by probability, at
    every output time (T,) or at the output time indices ``at`` only (each costs an attention
    pass over every pair of classes: a report that needs the start and the end asks for
    ``at=[0, -1]``).

    0 means every masked query attends to the same keys (e.g. Q = 0); values near 1 mean
    disjoint attention patterns.
    """
    trajectory("result", result)
    states = observed_states(result)
    reduction = states.reduction
    T = len(states)
    if at is None:
        indices = np.arange(T)
    else:
        indices = np.asarray(at)
        if indices.size == 0 and indices.ndim == 1:
            indices = indices.astype(np.int64)
        if indices.ndim != 1 or indices.dtype.kind not in "iu" or np.any((indices < -T) | (indices >= T)):
            raise InvalidInputError(f"at must be a 1-d sequence of output time indices in [-{T}, {T}), got {at!r}")
    out = np.zeros(indices.size)
    if reduction.class_size.sum() < 2:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        inverse = np.where(reduction.other_keys > 0, 1.0 / reduction.other_keys, 0.0)
    for j, i in enumerate(indices):
        att = attention_by_class(states[int(i)], OBSERVABLE_METHOD)
        for k in range(reduction.n_clusters):
            out[j] += reduction.cluster_prob[k] * _diversity_one((att.unmasked[k] + att.masked[k]) * inverse,
                                                           att.on_self[k], reduction.class_size)
    return out
