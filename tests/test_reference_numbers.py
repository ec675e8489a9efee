"""Every number of tests/reference_numbers.py as the checkout computes it now, against the stored
reference: refactors of the kernels must not change results (1e-12; trajectories 1e-8)."""
import numpy as np
import pytest
from reference_numbers import PATH, compute


@pytest.fixture(scope="module")
def now():
    return compute()


def test_reference_numbers_are_reproduced(now):
    stored = np.load(PATH)
    assert sorted(stored.files) == sorted(now)
    worst = {}
    for key in stored.files:
        ref, got = stored[key], now[key]
        assert got.shape == ref.shape, key
        rtol = 1e-8 if key.endswith("trajectory") else 1e-12
        scale = max(np.max(np.abs(ref)), 1e-300)
        err = np.max(np.abs(got - ref)) / scale if ref.size else 0.0
        worst[key] = err
        assert err <= rtol, f"{key}: relative difference {err:.2e} > {rtol:g}"
    assert len(worst) > 100           # the comparison covers the models, states and methods
