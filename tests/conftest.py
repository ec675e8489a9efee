import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))   # the brute-force oracle module
ROOT = Path(__file__).resolve().parents[1]


def load_source(relative: str):
    """Import a file of the checkout that is not part of the package (derivations/, benchmarks/)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

from gradflow import Amplitude, Cluster, DataModel  # noqa: E402


@pytest.fixture(scope="session")
def paper_solution():
    """The paper's preset (global_local, P = 64, four local areas of 4, gamma = 0.5) to t = 1e4."""
    from gradflow.presets import global_local

    from gradflow import solve
    return solve(global_local(64, n_local=4, local_size=4, mask_ratio=0.5), 1e4)


@pytest.fixture
def two_cluster_model():
    """P = 7, two clusters of different area structure, discrete amplitudes in both."""
    return DataModel(
        n_patches=7,
        clusters=[
            Cluster([0, 0, 1, 1, 1, 2, 2], prob=0.35,
                    amplitudes={0: Amplitude([0.5, 1.5], [0.4, 0.6]), 2: Amplitude([2.0])}),
            Cluster([1, 0, 0, 1, 0, 1, 1], prob=0.65,
                    amplitudes=Amplitude([0.8, 1.1, 1.7], [0.2, 0.5, 0.3])),
        ],
        mask_ratio=0.35,
    )


def random_state(model, rng, scale=1.0):
    P, F = model.n_patches, model.n_features
    return scale * rng.normal(size=(P, F)), scale * rng.normal(size=(P, P))
