import warnings

import numpy as np
import pytest
from gradflow.presets import global_local
from scipy.integrate import RK45

from gradflow import (
    Amplitude,
    Cluster,
    DataModel,
    InvalidInputError,
    State,
    solve,
)
from gradflow.theory.population import attention_maps, loss


def test_reduced_flow_equals_full_flow():
    m = DataModel(n_patches=10, mask_ratio=0.4, clusters=[
        Cluster([0, 0, 1, 1, 1, 0, 2, 2, 0, 0], amplitudes=Amplitude.uniform(0.5, 1.5, 3)),
        Cluster([1, 1, 0, 0, 0, 0, 0, 2, 2, 2])])
    assert m.n_classes < m.n_patches
    te = np.linspace(0, 50, 11)
    red = solve(m, 50.0, t_eval=te)
    full = solve(m, 50.0, t_eval=te, init=State.from_positions(m, np.zeros((10, m.n_features)), np.zeros((10, 10))))
    assert red.reduction.n_classes == m.n_classes and full.reduction.n_classes == 10
    assert np.abs(red.A[-1]).max() > 0.1          # the flow actually moved
    np.testing.assert_allclose(red.A, full.A, atol=1e-7)
    np.testing.assert_allclose(red.B, full.B, atol=1e-7)
    np.testing.assert_allclose(red.target_attention, full.target_attention, atol=1e-7)


def test_a_flow_goes_on_from_a_solution_on_its_classes():
    """init=(A, B) of a Solution's last state continues on the signature classes, and the flow
    being autonomous, 50 + 50 equals 100 to the integrators' tolerance; an asymmetric init runs per
    position; a State init is taken on its own resolution, and a wrong one is refused by name."""
    m = DataModel(n_patches=10, mask_ratio=0.4, clusters=[
        Cluster([0, 0, 1, 1, 1, 0, 2, 2, 0, 0], amplitudes=Amplitude.uniform(0.5, 1.5, 3)),
        Cluster([1, 1, 0, 0, 0, 0, 0, 2, 2, 2])])
    first, whole = solve(m, 50.0), solve(m, 100.0)
    end = first.state(-1)
    more = solve(m, 50.0, init=(end.A, end.B))
    assert more.reduction.n_classes == m.n_classes < 10
    assert np.abs(more.A[-1] - first.A[-1]).max() > 1e-3            # it moved on
    np.testing.assert_allclose(more.A[-1], whole.A[-1], atol=1e-6)
    np.testing.assert_allclose(more.B[-1], whole.B[-1], atol=1e-6)
    B = end.B.copy()
    B[0, 1] += 1e-3
    assert solve(m, 1.0, init=(end.A, B)).reduction.n_classes == 10
    assert solve(m, 1.0, init=end).reduction.n_classes == m.n_classes
    with pytest.raises(InvalidInputError, match="single State"):
        solve(m, 1.0, init=first.states)
    other = DataModel(n_patches=10, mask_ratio=0.4, clusters=[Cluster([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])])
    with pytest.raises(InvalidInputError, match="signature classes or per position"):
        solve(m, 1.0, init=solve(other, 1.0).state(-1))


def test_paper_preset_converges_to_target_attention(paper_solution):
    sol = paper_solution
    assert sol.status == 0 and sol.t[-1] == 1e4
    frac = sol.target_attention[-1] / sol.model.ceiling()
    assert frac.min() >= 0.90
    # loss never increases along the flow
    assert np.all(np.diff(sol.loss) <= 1e-12 * sol.loss[0])
    assert sol.loss[-1] < 0.1 * sol.loss[0]


def test_initial_observables_by_hand(paper_solution):
    sol, m = paper_solution, paper_solution.model
    # Q = 0: every key weighs 1/P, so the own-area unmasked mass is (C - 1)(1 - gamma)/P
    C = m.clusters[0].area_sizes()[m.clusters[0].areas]
    np.testing.assert_allclose(sol.target_attention[0, 0], (C - 1) * 0.5 / 64, rtol=1e-12)
    per_position = State.from_positions(m, np.zeros((64, 5)), np.zeros((64, 64)))   # independent of the classes
    assert sol.loss[0] == pytest.approx(loss(per_position), rel=1e-14)


def test_solution_attention_and_dense_output(paper_solution):
    sol = paper_solution
    i = 80
    att = sol.attention_map(i)
    np.testing.assert_allclose(att.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(att, attention_maps(State.from_positions(sol.model, sol.A[i], sol.B[i]))[0], atol=1e-13)
    own = sol.model.clusters[0].areas
    unm = sol.attention_map(i, part="unmasked")
    target = np.array([unm[p, (own == own[p]) & (np.arange(64) != p)].sum() for p in range(64)])
    np.testing.assert_allclose(target, sol.target_attention[i, 0], atol=1e-13)
    st = sol.at(sol.t[i])
    np.testing.assert_allclose(st.A, sol.A[i], atol=1e-6)
    np.testing.assert_allclose(st.B, sol.B[i], atol=1e-6)


def test_attention_index_errors(paper_solution):
    with pytest.raises(ValueError, match="cluster"):
        paper_solution.attention_map(0, cluster=1.5)
    with pytest.raises(ValueError, match="output index"):
        paper_solution.attention_map(10**6)


def test_integrators_agree():
    m = global_local(36, n_local=2, local_size=4, mask_ratio=0.5, n_clusters=2)
    te = [0.0, 1.0, 10.0, 100.0]
    ref = solve(m, 100.0, t_eval=te, rtol=1e-10, atol=1e-12)
    for integ in ("Radau", "RK45", "BDF"):
        other = solve(m, 100.0, t_eval=te, integrator=integ)
        np.testing.assert_allclose(other.A_classes, ref.A_classes, atol=1e-5)


def test_meanfield_approaches_exact_as_P_grows():
    gaps = []
    for P in (16, 64, 256):
        m = global_local(P, n_local=2, local_size=4, mask_ratio=0.5)
        te = np.geomspace(0.1, 100.0, 13)
        e = solve(m, 100.0, t_eval=te)
        mf = solve(m, 100.0, t_eval=te, method="meanfield")
        gaps.append(np.max(np.abs(e.loss - mf.loss) / e.loss))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.2 * gaps[0]


class _FailingRK45(RK45):
    """An integrator that gives up after a few steps, to check the failure is reported."""

    def _step_impl(self):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 3:
            return False, "forced failure"
        return super()._step_impl()


def test_integrator_failure_is_reported():
    m = global_local(36, n_local=2, local_size=4, mask_ratio=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = solve(m, 100.0, integrator=_FailingRK45)
    assert sol.status == -1 and not sol.success
    assert "forced failure" in sol.message and "before t_max" in sol.message
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert sol.t[-1] < 100.0 and sol.loss.size == sol.t.size


@pytest.mark.parametrize("kw, field", [
    (dict(t_max=-1.0), "t_max"), (dict(t_max=float("nan")), "t_max"),
    (dict(integrator="Euler"), "integrator"), (dict(method="exactly"), "method"),
    (dict(t_eval=[0.0, 5.0, 3.0]), "t_eval"), (dict(t_eval=[0.0, 20.0]), "t_eval"),
    (dict(init=(np.zeros((3, 3)), np.zeros((4, 4)))), "A"), (dict(rtol=0.0), "rtol"),
    (dict(rtol="x"), "rtol"), (dict(atol=None), "atol"), (dict(t_eval=["a"]), "t_eval"),
    (dict(t_eval=[[0.0, 1.0], [2.0, 3.0]]), "t_eval"), (dict(max_nfev=0), "max_nfev"),
])
def test_solve_bad_input(kw, field):
    m = DataModel(n_patches=4, clusters=[Cluster([0, 0, 1, 1])], mask_ratio=0.5)
    args = dict(t_max=10.0) | kw
    t_max = args.pop("t_max")
    with pytest.raises(ValueError, match=field):
        solve(m, t_max, **args)


def test_meanfield_flow_is_observed_with_the_exact_attention():
    """A mean-field flow's state is measured like any other: exact expected attention, so the
    target stays below its ceiling (the mean-field attention itself exceeds it)."""
    from gradflow.theory.population import attention_by_class, own_area_attention
    m = global_local(64, n_local=4, local_size=4, mask_ratio=0.5)
    sol = solve(m, 2000.0, method="meanfield")
    st = sol.state(-1)
    exact = own_area_attention(st.reduction, attention_by_class(st, "exact").unmasked)
    mean_field = own_area_attention(st.reduction, attention_by_class(st, "meanfield").unmasked)
    np.testing.assert_allclose(sol.target_attention_classes[-1], exact, rtol=1e-12)
    assert np.nanmax(sol.target_fraction) <= 1.0
    assert np.max(mean_field[:, 1:] / (1 - 0.5 ** 3)) > 1.0       # what it would report otherwise


def test_dense_output_too_large_to_keep_falls_back_to_splines_through_the_outputs(monkeypatch):
    """When the dense output would not fit (stepping.DENSE_OUTPUT_LIMIT), ``at`` interpolates the
    stored outputs with Hermite splines whose slopes are the flow's velocities (was: an error)."""
    import numpy as np
    import gradflow
    from gradflow.flow import stepping
    from gradflow.presets import global_local
    m = global_local(36, n_local=2, local_size=4)
    full = gradflow.solve(m, 200.0)
    monkeypatch.setattr(stepping, "DENSE_OUTPUT_LIMIT", 10)
    small = gradflow.solve(m, 200.0)
    assert small.dense_range() == (0.0, 200.0)
    for t in (0.0, 3.3, 47.0, 199.0):
        np.testing.assert_allclose(small.at(t).flat(), full.at(t).flat(), rtol=2e-3, atol=1e-6)


def test_budget_is_checked_inside_a_step():
    """A step of RK45 takes six gradients: a budget spent in the middle of one stops the run
    there (the last accepted step stands), not at the step's end."""
    import warnings
    import gradflow
    from gradflow.presets import global_local
    m = global_local(36, n_local=2, local_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sol = gradflow.solve(m, 100.0, integrator="RK45", max_nfev=4)
    assert sol.status == -1 and "max_nfev" in sol.message and sol.t[-1] == 0.0
    assert sol.nfev <= 4 + 1                  # the budget and the first measurement (was 2 + 6 + 1)


def test_the_progress_bar_shows_the_time_reached():
    """The command line's bar reads 't=37.5' (tqdm's own postfix put ', ' before the number)."""
    from gradflow.flow.stepping import Progress
    bar = Progress(True, 100.0, 1.0)
    try:
        bar.update(37.5)
        assert str(bar.bar).endswith("| t=37.5") and "79%" in str(bar.bar)
    finally:
        bar.close()


def test_auto_quadrature_is_fast_only_where_the_integrator_is_coarse():
    """``quadrature="auto"``: the fine t-grid for small states (LSODA, rtol 1e-8), the fast one at
    rtol >= 1e-6; flows with either rule agree far within the integrator's tolerance."""
    from gradflow.presets import voronoi
    small = global_local(16, n_local=2, local_size=4)
    assert solve(small, 50.0).quadrature == "fine"
    assert solve(small, 50.0, rtol=1e-5).quadrature == "fast"
    m = voronoi(grid=(6, 6), n_clusters=3, n_regions=4, seed=1)
    fine = solve(m, 300.0, rtol=1e-6, quadrature="fine", t_eval=[0.0, 30.0, 300.0])
    fast = solve(m, 300.0, rtol=1e-6, t_eval=[0.0, 30.0, 300.0])
    assert fast.quadrature == "fast" and fine.quadrature == "fine"
    np.testing.assert_allclose(fast.target_attention, fine.target_attention, rtol=0, atol=2e-6)
    np.testing.assert_allclose(fast.A_classes[-1], fine.A_classes[-1], rtol=0, atol=2e-5 * np.abs(fine.A_classes).max())
    with pytest.raises(ValueError, match="quadrature"):
        solve(small, 50.0, quadrature="coarse")
