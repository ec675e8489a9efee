"""The public per-position API: ``population_loss``, ``population_grad``, ``expected_attention``
and ``target_attention_at`` take any real A (P x F) and B (P x P) of a DataModel, assume no
symmetry (every position its own class), and evaluate here or, with ``client``, sharded over the
workers of a Dask client (``distributed``).
"""
from __future__ import annotations

import numpy as np

from .._validate import instance
from ..model import DataModel
from .distributed import ShardedPopulation
from .population import attention_maps, check_method, loss, loss_and_gradient, target_attention_at

__all__ = ["expected_attention", "population_grad", "population_loss", "target_attention_at"]
from .state import State


def population_loss(model: DataModel, A, B, method: str = "exact", *, client=None) -> float:
    """Expected masked-reconstruction loss L(Q) of docs/model.md section 2.

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
    client : dask.distributed.Client, optional
        Shard the clusters over its workers (the loss is a sum over clusters).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from gradflow import presets
    >>> m = presets.global_local(P=16, n_local=1, local_size=4)
    >>> round(population_loss(m, np.zeros((16, 2)), np.zeros((16, 16))), 6)   # Q = 0
    2.359375
    """
    instance("model", model, DataModel)
    check_method(method)
    state = State.from_positions(model, A, B)
    if client is not None:
        return ShardedPopulation(client, state.reduction, method).loss(state)
    return loss(state, method)


def population_grad(model: DataModel, A, B, method: str = "exact", *, client=None):
    """Gradient of :func:`population_loss`: ``(dL/dA (P, F), dL/dB (P, P))``; ``client``
    shards the clusters over a Dask client's workers."""
    instance("model", model, DataModel)
    check_method(method)
    state = State.from_positions(model, A, B)
    if client is not None:
        _, grad = ShardedPopulation(client, state.reduction, method).loss_and_gradient(state)
    else:
        _, grad = loss_and_gradient(state, method)
    gB = grad.B_classes.copy()
    np.fill_diagonal(gB, grad.B_self)
    return grad.A_classes, gB


def expected_attention(model: DataModel, A, B, method: str = "exact", part: str = "total") -> np.ndarray:
    """Expected attention maps (K, P, P) of masked queries for per-position correlations.

    Entry [k, p, q] is E[w_pq | p masked, cluster k], averaged over the other masks and the
    amplitudes; ``part`` keeps only the cases where q is "unmasked" or "masked". Rows of the
    "total" map sum to one.
    """
    instance("model", model, DataModel)
    check_method(method)
    return attention_maps(State.from_positions(model, A, B), method, part)
