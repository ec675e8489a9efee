"""The readable NumPy references the benchmarks compare against, and the bench command."""
import json

import numpy as np
from conftest import load_source, random_state
from oracle import brute_force_loss

from gradflow import population_grad, population_loss


def _refs():
    return load_source("benchmarks/references.py")


def test_numpy_closed_form_agrees_with_kernels(two_cluster_model):
    refs = _refs()
    A, B = random_state(two_cluster_model, np.random.default_rng(11), 1.5)
    loss, dA, dB = refs.numpy_loss_and_grad(two_cluster_model, A, B)
    gA, gB = population_grad(two_cluster_model, A, B)
    assert abs(loss / population_loss(two_cluster_model, A, B) - 1) < 1e-13
    np.testing.assert_allclose(dA, gA, atol=1e-14)
    np.testing.assert_allclose(dB, gB, atol=1e-14)


def test_vectorised_brute_force_agrees_with_oracle(two_cluster_model):
    A, B = random_state(two_cluster_model, np.random.default_rng(12))
    assert abs(_refs().brute_force_loss(two_cluster_model, A, B) / brute_force_loss(two_cluster_model, A, B) - 1) < 1e-12


def test_bench_quick_writes_json(tmp_path):
    from gradflow.cli import main
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    names = [r["name"] for r in rows]
    assert any("brute-force loss / exact gradient" in n for n in names)
    assert any("NumPy closed form / Numba kernels" in n for n in names)
    assert any("Monte Carlo CPU / solve() CPU" in n for n in names)
    assert all(np.isfinite(r["value"]) and r["value"] > 0 for r in rows)
