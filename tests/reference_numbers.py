"""Numbers the library computes, kept as a reference across refactors (tests/test_reference_numbers.py).

``python tests/reference_numbers.py`` writes ``tests/data/reference_numbers.npz`` from the checkout
it runs in. Regenerate it only when a change is meant to alter results, and say so in the commit:
every restructuring of the kernels must reproduce these to 1e-12 (trajectories, which an adaptive
integrator may step differently, to 1e-8).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import gradflow
from gradflow import Amplitude, Cluster, DataModel
from gradflow.model.presets import balanced, global_local, voronoi
from gradflow.theory.population import attention_by_area, attention_by_class, loss_and_gradient
from gradflow.theory.reduction import position_reduction, signature_reduction
from gradflow.theory.state import State

PATH = Path(__file__).parent / "data" / "reference_numbers.npz"


def models() -> dict[str, DataModel]:
    rng = np.random.default_rng(2024)
    out = {
        "global_local_64": global_local(64),
        "balanced_36": balanced(36),
        "voronoi_5x5": voronoi(grid=(5, 5), n_clusters=4, n_regions=4, seed=1),
        "voronoi_unit_4x6": voronoi(grid=(4, 6), n_clusters=3, n_regions=5, seed=2, amplitudes="unit"),
    }
    for i in range(3):                  # random labels, probabilities, amplitude atoms, mask ratio
        P = 6 + i
        clusters = []
        for k in range(1 + i):
            labels = rng.integers(0, 3, P)
            labels = np.unique(labels, return_inverse=True)[1]
            amps = {0: Amplitude(rng.uniform(0.3, 2.0, 3), rng.dirichlet(np.ones(3)))}
            clusters.append(Cluster(labels, prob=1.0 / (1 + i), amplitudes=amps))
        out[f"random_{i}"] = DataModel(n_patches=P, clusters=clusters, mask_ratio=float(rng.uniform(0.2, 0.8)))
    return out


def states(reduction, rng) -> dict[str, State]:
    S, F = reduction.n_classes, reduction.n_features
    out = {"zero": State.zeros(reduction)}
    for name, scale in (("mild", 0.3), ("strong", 2.0)):
        out[name] = State(reduction, scale * rng.standard_normal((S, F)), scale * rng.standard_normal((S, S)),
                          scale * rng.standard_normal(S))
    return out


def compute() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {}
    for name, model in models().items():
        resolutions = {"signature": signature_reduction(model)}
        if model.n_patches <= 25:
            resolutions["position"] = position_reduction(model)
        for res, reduction in resolutions.items():
            for sname, state in states(reduction, rng).items():
                key = f"{name}/{res}/{sname}"
                for method in ("exact", "meanfield"):
                    value, grad = loss_and_gradient(state, method)
                    out[f"{key}/{method}/loss"] = np.array(value)
                    out[f"{key}/{method}/grad"] = grad.flat()
                attention = attention_by_class(state)
                out[f"{key}/attention"] = np.concatenate([a.ravel() for a in attention])
                unmasked, masked = attention_by_area(State(reduction, state.A_classes[None], state.B_classes[None],
                                                           state.B_self[None]))
                out[f"{key}/area_attention"] = np.concatenate([unmasked.ravel(), masked.ravel()])
        sol = gradflow.solve(model, 50.0, t_eval=[0.0, 1.0, 10.0, 50.0], progress=False)
        out[f"{name}/trajectory"] = sol.states.flat()
    return out


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **compute())
    print(f"wrote {path}")
