"""Phase diagram of the global/local preset: over the global-area share and the mask ratio,
how long the target takes to grow (T2) and whether the two phases are separated (T1 < T2)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..flow.phase_times import phases, summarize
from ..flow.solver import solve
from ..model.presets import global_local


@dataclass
class PhaseDiagram:
    """T2 and two-phase flags on a (mask ratio, local-area count) grid."""

    n_local: np.ndarray      # (J,) local areas per cluster
    share: np.ndarray        # (J,) global-area share of the patches, 1 - n_local * local_size / P
    gamma: np.ndarray        # (I,) mask ratios
    T2: np.ndarray           # (I, J) median T2 over local queries (``summarize``), NaN where not reached
    two_phases: np.ndarray   # (I, J) every local query has T1 < T2


def phase_diagram(P: int, n_locals, gammas, local_size: int = 4, t_max: float = 1e4) -> PhaseDiagram:
    """Solve ``global_local(P, n_local, local_size, gamma)`` over the grid and read the phases."""
    share = np.array([1.0 - n * local_size / P for n in n_locals])
    T2 = np.full((len(gammas), len(n_locals)), np.nan)
    two = np.zeros_like(T2, dtype=bool)
    for i, g in enumerate(gammas):
        for j, n in enumerate(n_locals):
            ph = phases(solve(global_local(P, n_local=n, local_size=local_size, mask_ratio=g), t_max))
            loc = ph.is_local
            T2[i, j] = summarize(ph).time("T2")      # the one phase summary every report uses
            two[i, j] = bool(np.all(ph.T1[loc] < ph.T2[loc]))
    return PhaseDiagram(np.asarray(n_locals), share, np.asarray(gammas, dtype=float), T2, two)
