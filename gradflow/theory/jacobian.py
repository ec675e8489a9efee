"""Analytic Jacobian of the mean-field flow (point-mass amplitudes), for implicit integrators.

For one masked query, write every key weight as a "slot" with log-weight x_i: the query itself
(c), each key class's masked weight (m' g beta_r) and unmasked weight (m' (1-g) alpha_r). With
shares p_i = e^{x_i} / D, area shares a_j = sum_{i in U_j} z_j p_i (Z[i, j] = z_j for the
unmasked slots of area j), g_j = a_j - z0 [j = j0], h = Z g and Lambda = g . a, the mean-field
loss l = 1/2 (z0^2 - 2 z0 a_j0 + sum_j a_j^2) has

    dl/dx_i      = p_i (h_i - Lambda)
    d2l/dx_i dx_k = delta_ik p_i (h_i - Lambda) - p_i p_k (h_i - Lambda)
                    + p_i [ (Z Ja)_ik - ((a + g)^T Ja)_k ],     Ja[j, k] = p_k (Z[k, j] - a_j).

derivations/derive.py checks this Hessian against SymPy's on a symbolic instance. The flow's
Jacobian is block diagonal over query classes (a class's parameters only enter its own loss):
J = -scale M^T H M with M the linear map from (A[s, :], B[s, :], B_self[s]) to the slots.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .state import State, flat_size


def query_hessian(x: np.ndarray, Z: np.ndarray, z0: float, j0: int):
    """(gradient (n,), Hessian (n, n)) of the mean-field query loss in the slot log-weights."""
    p = np.exp(x - np.logaddexp.reduce(x))
    a = Z.T @ p
    residual = a.copy()                                       # the shares minus the target
    residual[j0] -= z0
    h = Z @ residual
    lam = residual @ a
    grad = p * (h - lam)
    Ja = p[None, :] * (Z.T - a[:, None])                      # (J, n)
    H = np.diag(grad) - np.outer(grad, p) + p[:, None] * (Z @ Ja - ((a + residual) @ Ja)[None, :])
    return grad, H


def meanfield_jacobian(state: State) -> np.ndarray:
    """Jacobian (n, n) of the mean-field flow's right-hand side -grad L in the flat state
    (``State.flat``); point-mass amplitudes only."""
    reduction = state.reduction
    A, B, B_self = state.A_classes, state.B_classes, state.B_self
    if not reduction.all_point:
        raise InvalidInputError("the analytic Jacobian needs point-mass amplitudes (every area's amplitude a "
                                "single atom)")
    S, F = reduction.n_classes, reduction.n_features
    n = flat_size(reduction)
    J = np.zeros((n, n))
    gamma = reduction.mask_ratio
    z = reduction.atom_z[:, 0]
    for s in range(S):
        keys = np.flatnonzero(reduction.other_keys[s] > 0)
        R = keys.size
        # parameters of row s: A[s, :] (F), B[s, :] (S), B_self[s] (1) -> their packed indices
        idx = np.concatenate([s * F + np.arange(F), S * F + s * S + np.arange(S), [S * F + S * S + s]])
        scale = np.ones(F + S + 1)
        scale[F:F + S] = np.where(reduction.other_keys[s] > 0, 1.0 / np.maximum(reduction.other_keys[s], 1.0), 0.0)
        block = np.zeros((F + S + 1, F + S + 1))
        for k in range(reduction.n_clusters):
            lo = reduction.feature_start[k]
            n_areas = reduction.feature_stop[k] - lo
            feat = reduction.key_feature[k, keys]
            # slots: c, then (beta_r, alpha_r) for every key class r
            x = np.concatenate([[B_self[s]],
                                B[s, keys] + np.log(reduction.other_keys[s, keys] * gamma),
                                B[s, keys] + z[feat] * A[s, feat]
                                + np.log(reduction.other_keys[s, keys] * (1 - gamma))])
            Z = np.zeros((1 + 2 * R, n_areas))
            Z[1 + R + np.arange(R), feat - lo] = z[feat]
            f0 = reduction.key_feature[k, s]
            _, H = query_hessian(x, Z, z[f0], int(f0 - lo))
            M = np.zeros((1 + 2 * R, F + S + 1))
            M[0, F + S] = 1.0
            M[1 + np.arange(R), F + keys] = 1.0
            M[1 + R + np.arange(R), F + keys] = 1.0
            M[1 + R + np.arange(R), feat] = z[feat]
            block += reduction.cluster_prob[k] * gamma * (M.T @ H @ M)
        J[np.ix_(idx, idx)] = -scale[:, None] * block
    return J
