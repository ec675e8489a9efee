"""The public per-position API: ``population_loss``, ``population_grad`` and ``expected_attention``
take any real A (P x F) and B (P x P) of a DataModel and evaluate here or, with ``client``,
sharded over the workers of a Dask client (``distributed``). (``target_attention_at``, which the
trainers call on their own, never symmetric, correlations, runs per position always.)

No symmetry is assumed: when A and B are exactly equal within the model's signature classes (a
state a flow from a symmetric start reached, e.g. ``Solution.A[i]``, ``Solution.B[i]``) they are
evaluated on those classes, else with every position its own class. The two give the same numbers
to rounding; the first costs (S / P)^2 of the second or less.
"""
from __future__ import annotations

import numpy as np

from .._validate import choice, instance
from ..model import DataModel
from .distributed import ShardedPopulation
from .population import attention_maps, check_method, loss, loss_and_gradient, target_attention_at
from .reduction import signature_reduction
from .state import State

__all__ = ["expected_attention", "population_grad", "population_loss", "target_attention_at"]
QUADRATURES = ("fine", "fast")


def evaluated_state(model: DataModel, A, B, quadrature: str = "fine") -> State:
    """The validated state of per-position A, B on the fewest classes that hold it exactly (the
    signature classes when A, B are equal within them, else every position its own), its
    t-integrals taken with ``quadrature``."""
    instance("model", model, DataModel)
    choice("quadrature", quadrature, QUADRATURES)
    state = State.from_positions(model, A, B)
    if model.n_classes < model.n_patches:
        on_classes = state.on_classes(signature_reduction(model))
        state = state if on_classes is None else on_classes
    return state if quadrature == "fine" else state.with_quadrature(quadrature)


def population_loss(model: DataModel, A, B, method: str = "exact", *, quadrature: str = "fine",
                    client=None) -> float:
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
    quadrature : {"fine", "fast"}
        The t-integrals' rule (docs/model.md section 4): "fine" to ~1e-15; "fast" the loss to
        ~1e-12 and the gradient to ~2e-8 of its largest entry, for ~0.7 of the work (the rule
        ``solve`` evaluates large flows with).
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
    instance("model", model, DataModel)        # the model first, then the method, then A, B
    check_method(method)
    state = evaluated_state(model, A, B, quadrature)
    if client is not None:
        return ShardedPopulation(client, state.reduction, method).loss(state)
    return loss(state, method)


def population_grad(model: DataModel, A, B, method: str = "exact", *, quadrature: str = "fine", client=None):
    """Gradient of :func:`population_loss`: ``(dL/dA (P, F), dL/dB (P, P))``, the derivative
    along every entry; ``quadrature`` and ``client`` as there."""
    instance("model", model, DataModel)        # the model first, then the method, then A, B
    check_method(method)
    state = evaluated_state(model, A, B, quadrature)
    if client is not None:
        _, grad = ShardedPopulation(client, state.reduction, method).loss_and_gradient(state)
    else:
        _, grad = loss_and_gradient(state, method)
    return grad.A, grad.B


def expected_attention(model: DataModel, A, B, method: str = "exact", part: str = "total", *,
                       quadrature: str = "fine") -> np.ndarray:
    """Expected attention maps (K, P, P) of masked queries for per-position correlations.

    Entry [k, p, q] is E[w_pq | p masked, cluster k], averaged over the other masks and the
    amplitudes; ``part`` keeps only the cases where q is "unmasked" or "masked". Rows of the
    "total" map sum to one. ``quadrature`` as in :func:`population_loss`.
    """
    instance("model", model, DataModel)
    check_method(method)
    return attention_maps(evaluated_state(model, A, B, quadrature), method, part)
