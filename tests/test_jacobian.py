"""The analytic mean-field Jacobian: SymPy's Hessian, finite differences, and its use in solve."""
import numpy as np
import pytest
from conftest import load_source
from gradflow.presets import global_local

from gradflow import Amplitude, Cluster, DataModel, solve
from gradflow.theory.jacobian import meanfield_jacobian
from gradflow.theory.population import loss_and_gradient
from gradflow.theory.reduction import position_reduction, signature_reduction
from gradflow.theory.state import State, flat_size


def test_hessian_formula_matches_sympy():
    derive = load_source("derivations/derive.py")
    assert derive.meanfield_hessian_check(seed=1) < 1e-40


@pytest.mark.parametrize("which", ["signature", pytest.param("position", marks=pytest.mark.slow)])
def test_jacobian_equals_finite_differences(which):
    m = DataModel(n_patches=7, mask_ratio=0.35, clusters=[
        Cluster([0, 0, 1, 1, 1, 2, 2], prob=0.4, amplitudes={1: Amplitude([1.7])}),
        Cluster([1, 0, 0, 1, 0, 1, 1], prob=0.6)])
    red = signature_reduction(m) if which == "signature" else position_reduction(m)
    y = np.random.default_rng(0).normal(size=flat_size(red))

    def f(v):
        return -loss_and_gradient(State.from_flat(red, v), "meanfield")[1].flat()
    J = meanfield_jacobian(State.from_flat(red, y))
    eps = 1e-6
    fd = np.stack([(f(y + eps * e) - f(y - eps * e)) / (2 * eps) for e in np.eye(y.size)], axis=1)
    assert np.abs(J - fd).max() <= 1e-7 * np.abs(fd).max()


@pytest.mark.slow
def test_solve_with_analytic_jacobian_agrees(monkeypatch):
    """Radau and BDF with the analytic Jacobian call it, and land on a tight RK45 reference."""
    import gradflow.flow.solver as solve_module
    calls = {"n": 0}
    real = solve_module.meanfield_jacobian

    def counted(state):
        calls["n"] += 1
        return real(state)

    monkeypatch.setattr(solve_module, "meanfield_jacobian", counted)
    m = global_local(64, n_local=4, local_size=4, mask_ratio=0.5)
    te = [0.0, 10.0, 100.0, 1000.0]
    ref = solve(m, 1000.0, method="meanfield", integrator="RK45", rtol=1e-11, atol=1e-12, t_eval=te)
    for integ in ("Radau", "BDF"):
        calls["n"] = 0
        a = solve(m, 1000.0, method="meanfield", integrator=integ, jacobian="analytic", t_eval=te)
        assert calls["n"] > 0, integ
        np.testing.assert_allclose(a.A_classes, ref.A_classes, atol=1e-5)
        calls["n"] = 0
        solve(m, 100.0, method="meanfield", integrator=integ, jacobian="numerical", t_eval=te[:3])
        assert calls["n"] == 0
    with pytest.raises(ValueError, match="jacobian"):
        solve(m, 10.0, method="exact", integrator="Radau", jacobian="analytic")
    with pytest.raises(ValueError, match="jacobian"):
        solve(m, 10.0, jacobian="symbolic")
