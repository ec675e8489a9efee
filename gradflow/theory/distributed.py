"""The population loss and gradient sharded over the workers of a ``dask.distributed`` Client.

The loss is a sum over clusters (docs/model.md section 2), so each worker sums its own shard of
the clusters with the same kernels and the results are added. The reduced model goes to every
worker once (``scatter``). A query of cluster k reads only the FP correlations of cluster k's own
features, so each evaluation sends a shard only its clusters' columns of A, and B, B_self (S F_shard
+ S^2 + S numbers), and gets back a partial loss, B-gradient and those columns of the A-gradient
(and, exact, the attention of its clusters' queries). With many layouts A is nearly all of the
state (10,000 layouts of 8 areas at 14 x 14: 196 x 80,000 numbers against 196^2 for B), so a
shard's traffic falls with the number of shards instead of carrying the whole state.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .population import check_method, loss, loss_gradient_and_masses
from .reduction import Reduction
from .state import State


def _check_client(client):
    status = getattr(client, "status", None)
    if status is None or not hasattr(client, "submit"):
        raise InvalidInputError(f"client must be a dask.distributed Client, got {type(client).__name__}")
    if status != "running":
        raise InvalidInputError(f"client is not running (status {status!r}): start a new Client")
    return client


def shard_features(reduction: Reduction, clusters: np.ndarray) -> np.ndarray:
    """The features (columns of A) of ``clusters``: all that their queries read of A."""
    return np.concatenate([np.zeros(0, dtype=np.int64)]
                          + [np.arange(reduction.feature_start[k], reduction.feature_stop[k]) for k in clusters])


def _shard_loss_and_gradient(reduction, method, A_columns, B, B_self, clusters, want_gradient):
    """One worker's partial sum over its clusters (runs on the worker): from its clusters' columns
    of A, their columns of the A-gradient and its clusters' rows of the attention."""
    features = shard_features(reduction, clusters)
    A = np.zeros((reduction.n_classes, reduction.n_features))
    A[:, features] = A_columns                 # the other columns are never read for these clusters
    state = State(reduction, A, B, B_self)
    if not want_gradient:
        return loss(state, method, clusters), None, None
    value, grad, masses = loss_gradient_and_masses(state, method, clusters)
    if masses is not None:
        masses = (masses[0][clusters], masses[1][clusters])
    return value, (grad.A_classes[:, features], grad.B_classes, grad.B_self), masses


class ShardedPopulation:
    """Loss and gradient of one reduced model, evaluated by the workers of ``client``.

    Parameters
    ----------
    client : dask.distributed.Client
    reduction : Reduction
    method : {"exact", "meanfield"}
    shards : int, optional
        Number of cluster shards (default: the client's number of workers, at most K).
    """

    def __init__(self, client, reduction: Reduction, method: str, shards: int | None = None):
        self.client = _check_client(client)
        self.method = check_method(method)
        self.reduction = reduction
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        n = min(reduction.n_clusters, shards or n_workers)
        self.shards = [np.ascontiguousarray(c, dtype=np.int64)
                       for c in np.array_split(np.arange(reduction.n_clusters), n) if c.size]
        self.features = [shard_features(reduction, shard) for shard in self.shards]
        # a key of its own (hash=False): with content-hashed keys, a second sharding of the same
        # model shares the first one's data, which the scheduler drops when the first is released
        # ("lost dependencies")
        self._reduction_future = client.scatter(reduction, broadcast=True, hash=False)

    def _evaluate(self, state: State, want_gradient: bool):
        futures = [self.client.submit(_shard_loss_and_gradient, self._reduction_future, self.method,
                                      np.ascontiguousarray(state.A_classes[:, features]), state.B_classes,
                                      state.B_self, shard, want_gradient, pure=False)
                   for shard, features in zip(self.shards, self.features)]
        return self.client.gather(futures)

    def loss(self, state: State) -> float:
        return float(sum(part[0] for part in self._evaluate(state, False)))

    def loss_and_gradient(self, state: State) -> tuple[float, State]:
        value, gradient, _ = self.loss_gradient_and_masses(state)
        return value, gradient

    def loss_gradient_and_masses(self, state: State):
        """As ``population.loss_gradient_and_masses``: each worker's shard of clusters fills its
        own rows of the attention by area, so the parts add up."""
        parts = self._evaluate(state, True)
        value = sum(p[0] for p in parts)
        gA = np.zeros_like(state.A_classes)
        for part, features in zip(parts, self.features):
            gA[:, features] = part[1][0]             # the shards' features are disjoint
        gB = sum(p[1][1] for p in parts)
        gS = sum(p[1][2] for p in parts)
        masses = None
        if parts[0][2] is not None:
            K, S, N = self.reduction.n_clusters, self.reduction.n_classes, parts[0][2][0].shape[-1]
            masses = (np.zeros((K, S, N)), np.zeros((K, S)))
            for part, shard in zip(parts, self.shards):
                masses[0][shard], masses[1][shard] = part[2]
        return float(value), State(self.reduction, gA, gB, gS), masses
