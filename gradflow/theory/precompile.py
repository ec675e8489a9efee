"""Compile (or load from Numba's cache) the kernels of a flow's two paths by calling them once.

``theory.warmup`` runs this in a child process on a first run's cold cache;
``python -m gradflow.theory.precompile gradient attention`` does it in this process (for
instance when building an image, so that its first run starts warm).
"""
from __future__ import annotations

import sys

import numpy as np

from ..model import Cluster, DataModel
from . import population
from .reduction import signature_reduction
from .state import State

PATHS = ("gradient", "attention")


def _small_state(stacked: bool) -> State:
    """A zero state of a small model: every kernel argument has the types of any model's."""
    model = DataModel(grid=(2, 3), clusters=[Cluster(np.array([0, 0, 1, 1, 1, 2]))], mask_ratio=0.5)
    reduction = signature_reduction(model)
    S, F = reduction.n_classes, reduction.n_features
    lead = (1,) if stacked else ()
    return State(reduction, np.zeros(lead + (S, F)), np.zeros(lead + (S, S)), np.zeros(lead + (S,)))


def compile_path(name: str) -> None:
    """Compile (or load from the cache) the kernels of one path, by calling them once."""
    if name == "gradient":
        population.loss_gradient_and_masses(_small_state(False))
    elif name == "attention":
        population.attention_by_area(_small_state(True))
    else:
        raise ValueError(f"path must be one of {PATHS}, got {name!r}")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        compile_path(path)
