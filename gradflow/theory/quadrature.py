"""The t-grid of the integrals 1/D = int e^{-tD} dt, 1/D^2 = int t e^{-tD} dt (docs/model.md s. 4).

Three kinds of rule, all written as nodes sigma_i = log t_i with weights h_i for integrands in sigma:

* **Double exponential** (any spread of D). In sigma the integrand decays like e^sigma to the
  left of -log D_max and like exp(-e^(sigma + log D_min)) to the right. A second substitution
  sigma = -log D_max + x - e^{-x} (Takahasi-Mori's map for exponentially decaying integrands) makes
  the left tail decay double-exponentially too, so the trapezoid rule in x needs ~4x fewer nodes
  than a plain sigma grid for the same ~1e-15 accuracy (derivations/README.md section 3).
* **Gauss-Laguerre** when D hardly varies over masks and atoms (log(D_max / D_min) <= 0.15, as
  near Q = 0): every integrand is a mixture of t^p e^{-tD}, p <= 2, and an n-point Gauss-Laguerre
  rule at the scale of D integrates them to ~1e-15 with n = 2 (D constant: exact) to 7 nodes
  instead of ~45 (tests/test_population.py checks the rules against each other and brute force).
* **Generalized Gaussian** (log(D_max / D_min) up to 12): every integrand is a mixture of
  (tD)^(p+1) e^{-tD} in sigma with D in [D_min, D_max] and p <= 2; rules built for that family
  (derivations/quadrature_rules.py, tabulated in ``_quadrature_rules``) integrate each member to
  ~1e-12 (fast) with half as many nodes as the family's numerical rank, or to 5e-15 (fine) with
  somewhat more (double precision stops the construction earlier): fast, 13 nodes for a spread of
  1.75 and 23 for 4.5, where the double-exponential grid at step 0.3 has 35 and 44 (~28 and ~37
  before its early stop); fine, 15 and 36, against 54 and 67 at step 0.2. A query takes one when
  it has fewer nodes than the double-exponential grid of its step.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numba import njit

from . import _quadrature_rules, numba_cache

GRID_STEP = 0.2     # step in x: ~1e-15 relative accuracy (the default everywhere)
# a coarser step for flows integrated at rtol >= 1e-6 (``solve``'s large states): with the trims
# below, ~0.62 of the nodes, the loss to ~1e-11 (absolute) and the gradient to ~1e-8 of its
# largest entry (measured on 14 x 14, 8 x 8 and 6 x 6 Voronoi models late in a flow: loss <=
# 1.5e-11, gradient <= 9e-9 at 0.3, against 4.6e-10 / 1.3e-7 at 0.35 and 1e-8 / 2e-6 at 0.4).
# Both steps take their generalized Gaussian rules where those are shorter; the fast rule then
# needs ~0.7 of the fine rule's nodes (late in the 14 x 14 flow: 16 against 22.5 a query), the loss to ~2e-12 and the gradient to ~2e-8 of its largest entry,
# ~3e-7 at a mask ratio of 0.05 (tests/test_population.py holds the two rules to that)
GRID_STEP_FAST = 0.3
GRID_LEFT = 40.0    # first node at e^{-x} = GRID_LEFT: integrand ~ e^{-40} there
GRID_RIGHT = 5.0    # last node at sigma >= -log D_min + GRID_RIGHT
T_CAP = 1e100       # t*w beyond this has e^{-t w} == 0 exactly; the cap keeps products finite
# G(t) = E[e^{-tD}] decreases in t; once below this, the later nodes together add a modest
# multiple of G times the z^2 scale (the mask configurations left have probability <= e G(t);
# measured late in the 14 x 14 flow: 20-130 G), so the grid stops there
G_STOP = 1e-20
# the fast step's grid starts at e^{-x} = 25 and stops at G < 1e-15: 7% fewer nodes than with
# 40 and 1e-20, and no less accurate (measured on 6 x 6, 8 x 8 and 14 x 14 Voronoi models late
# in a flow and at Q = 0: loss <= 1.4e-11, gradient <= 6.9e-9 of its largest entry against the
# fine rule; 20 and 1e-14 gave 5.8e-11 and 1.6e-8)
GRID_LEFT_FAST = 25.0
G_STOP_FAST = 1e-15

DOUBLE_EXPONENTIAL = -1
# Gauss-Laguerre rules: (largest log(D_max / D_min), number of nodes), measured to give a relative
# error <= 1e-15 on t^p e^{-tD}, p = 0, 1, 2, over the whole range of D (the scale is its
# geometric middle); beyond the last one, the step's generalized Gaussian rule or the
# double-exponential one, whichever is shorter
LAGUERRE_RULES = ((0.0, 2), (0.02, 5), (0.15, 7))


def _laguerre_tables():
    """(log tau (rules, n), weight in sigma (rules, n)): sigma_i = log tau_i - log D_mid and
    h_i = w_i e^{tau_i} / tau_i (the Gauss-Laguerre weight of int f dt moved to sigma)."""
    n_max = max(n for _, n in LAGUERRE_RULES)
    log_tau = np.zeros((len(LAGUERRE_RULES), n_max))
    weight = np.zeros((len(LAGUERRE_RULES), n_max))
    for r, (_, n) in enumerate(LAGUERRE_RULES):
        tau, w = np.polynomial.laguerre.laggauss(n)
        log_tau[r, :n] = np.log(tau)
        weight[r, :n] = w * np.exp(tau) / tau
    return log_tau, weight


def _rule_tables():
    """Every tabulated rule as rows of (log t, weight in sigma): the Gauss-Laguerre rules first
    (their sigma is relative to the middle of log D), then the generalized Gaussian ones of the
    fine and of the fast rule (relative to -log D_max), zero-padded to the longest."""
    tables = [_laguerre_tables()] + [(getattr(_quadrature_rules, f"{t}_LOG_T"), getattr(_quadrature_rules, f"{t}_WEIGHT"))
                                     for t in ("FINE", "FAST")]
    n_max = max(log_t.shape[1] for log_t, _ in tables)
    pad = lambda a: np.pad(a, ((0, 0), (0, n_max - a.shape[1])))       # noqa: E731
    return np.vstack([pad(log_t) for log_t, _ in tables]), np.vstack([pad(w) for _, w in tables])


RULE_LOG_T, RULE_WEIGHT = _rule_tables()
LAGUERRE_SPREAD = np.array([spread for spread, _ in LAGUERRE_RULES])
LAGUERRE_NODES = np.array([n for _, n in LAGUERRE_RULES], dtype=np.int64)
# rows of the generalized Gaussian rules of each step, their spreads and numbers of nodes
FINE_FIRST = len(LAGUERRE_RULES)
FINE_SPREAD = _quadrature_rules.FINE_SPREAD
FINE_NODES = _quadrature_rules.FINE_NODES
FAST_FIRST = FINE_FIRST + FINE_SPREAD.size
FAST_SPREAD = _quadrature_rules.FAST_SPREAD
FAST_NODES = _quadrature_rules.FAST_NODES


@njit(cache=True, error_model="numpy")
def grid(log_dmin, log_dmax, step):
    """(rule, sigma offset, first x, number of nodes) of the quadrature for one query, with the
    double-exponential rule's ``step`` in x, or the step's generalized Gaussian rule when that has
    fewer nodes."""
    spread = log_dmax - log_dmin
    for r in range(LAGUERRE_SPREAD.size):
        if spread <= LAGUERRE_SPREAD[r]:
            return r, -0.5 * (log_dmin + log_dmax), 0.0, LAGUERRE_NODES[r]
    fine = step <= GRID_STEP
    x0 = -math.log(GRID_LEFT if fine else GRID_LEFT_FAST)
    n = int(math.ceil((spread + GRID_RIGHT - x0) / step)) + 1
    first = FINE_FIRST if fine else FAST_FIRST
    spreads = FINE_SPREAD if fine else FAST_SPREAD
    nodes = FINE_NODES if fine else FAST_NODES
    for r in range(spreads.size):
        if spread <= spreads[r]:
            if nodes[r] < n:
                return first + r, -log_dmax, 0.0, nodes[r]
            break
    return DOUBLE_EXPONENTIAL, -log_dmax, x0, n


@njit(cache=True, error_model="numpy", inline="always")
def g_stop(step):
    """G(t) below which the grid of ``step`` stops (G_STOP, or G_STOP_FAST for the fast step)."""
    return G_STOP if step <= GRID_STEP else G_STOP_FAST


@njit(cache=True, error_model="numpy")
def node(rule, offset, x0, step, i):
    """sigma = log t and the quadrature weight d sigma of node i."""
    if rule != DOUBLE_EXPONENTIAL:
        return offset + RULE_LOG_T[rule, i], RULE_WEIGHT[rule, i]
    x = x0 + i * step
    em = math.exp(-x)
    return offset + x - em, step * (1.0 + em)


# the rules' tables are compiled into grid and node as constants: regenerating them must drop
# the cached code (numba_cache)
numba_cache.refresh(globals(), tuple(Path(__file__).with_name(name)
                                     for name in ("quadrature.py", "_quadrature_rules.py")))
