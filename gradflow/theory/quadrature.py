"""The t-grid of the integrals 1/D = int e^{-tD} dt, 1/D^2 = int t e^{-tD} dt (docs/model.md s. 4).

In sigma = log t the integrand decays like e^sigma to the left of -log D_max and like
exp(-e^(sigma + log D_min)) to the right. A second substitution sigma = -log D_max + x - e^{-x}
(Takahasi-Mori's double-exponential map for exponentially decaying integrands) makes the left tail
decay double-exponentially too, so the trapezoid rule in x needs ~4x fewer nodes than a plain
sigma grid for the same ~1e-15 accuracy (derivations/README.md section 3).
"""
from __future__ import annotations

import math

from numba import njit

GRID_STEP = 0.2     # step in x
GRID_LEFT = 40.0    # first node at e^{-x} = GRID_LEFT: integrand ~ e^{-40} there
GRID_RIGHT = 5.0    # last node at sigma >= -log D_min + GRID_RIGHT
T_CAP = 1e100       # t*w beyond this has e^{-t w} == 0 exactly; the cap keeps products finite
# G(t) = E[e^{-tD}] decreases in t; once below this, every later node adds less than ~e G of the
# z^2 scale (the mask configurations left have probability <= e G(t)), so the grid stops there
G_STOP = 1e-20


@njit(cache=True)
def grid(log_dmin, log_dmax):
    """(sigma offset, first x, number of nodes) of the quadrature for one query."""
    x0 = -math.log(GRID_LEFT)
    n = int(math.ceil((log_dmax - log_dmin + GRID_RIGHT - x0) / GRID_STEP)) + 1
    return -log_dmax, x0, n


@njit(cache=True)
def node(offset, x0, i):
    """sigma = log t and the quadrature weight d sigma of node i."""
    x = x0 + i * GRID_STEP
    em = math.exp(-x)
    return offset + x - em, GRID_STEP * (1.0 + em)
