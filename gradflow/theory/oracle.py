"""The loss of the ideal area-wide predictor, in closed form (docs/model.md section 5)."""
from __future__ import annotations

import numpy as np

from ..model import DataModel


def area_oracle_loss(model: DataModel) -> float:
    """Exact expected loss of the ideal area-wide predictor.

    The oracle predicts for a masked patch the average of the unmasked patches of its own area
    (zero when there are none). Patches of an area share the amplitude, so the average is x_p
    exactly whenever one of the C - 1 others is unmasked; the loss is 1/2 z^2 with probability
    gamma^(C-1): L_oracle = sum_k pi_k sum_p gamma^C E[z^2] / 2.

    Examples
    --------
    >>> from gradflow import presets
    >>> area_oracle_loss(presets.balanced(P=16, mask_ratio=0.5)) == 16 * 0.5**4 / 2
    True
    """
    gamma = model.mask_ratio
    total = 0.0
    for k, cl in enumerate(model.clusters):
        C = cl.area_sizes()[cl.areas]
        ez2 = np.array([a.moment2() for a in cl.amplitudes])[cl.areas]
        total += model.probs[k] * np.sum(gamma ** C * 0.5 * ez2)
    return float(total)
