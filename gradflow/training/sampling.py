"""Minibatches of a DataModel (docs/model.md section 1): cluster, amplitudes and mask per sample,
drawn with an explicit generator so that a seed fixes every number."""
from __future__ import annotations

import numpy as np

from ..model import DataModel


class BatchSampler:
    """Draws minibatches (cluster, amplitudes, mask) of a DataModel with an explicit generator."""

    def __init__(self, model: DataModel):
        self.model = model
        self.cum_probs = np.cumsum(model.probs)
        # feature index of every position in every cluster
        self.feature_of = np.stack([model.feature_index(k, 0) + c.areas
                                    for k, c in enumerate(model.clusters)])        # (K, P)
        self.amplitudes = [a for c in model.clusters for a in c.amplitudes]

    def sample(self, rng: np.random.Generator, batch_size: int):
        """Returns fq (b, P) feature of every patch, z (b, P) its amplitude, vis (b, P) unmasked."""
        m = self.model
        k = np.searchsorted(self.cum_probs, rng.random(batch_size), side="right").clip(max=m.n_clusters - 1)
        z_feat = np.empty((batch_size, m.n_features))
        for f, amp in enumerate(self.amplitudes):   # every area draws independently
            z_feat[:, f] = amp.sample(rng, batch_size)
        fq = self.feature_of[k]
        z = np.take_along_axis(z_feat, fq, axis=1)
        vis = rng.random((batch_size, m.n_patches)) >= m.mask_ratio
        return fq, z, vis
