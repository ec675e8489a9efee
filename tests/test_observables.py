import itertools

import numpy as np
import pytest
from gradflow.presets import global_local

import gradflow
from gradflow import (
    Amplitude,
    Cluster,
    DataModel,
    area_oracle_loss,
    attention_diversity,
    phases,
)
from gradflow.analysis.scaling import fit_power_law, local_slopes, phase_scaling, power_law_range
from gradflow.flow.phase_times import crossing_time, local_mask


def test_area_oracle_loss_by_enumeration():
    m = DataModel(n_patches=6, mask_ratio=0.35, clusters=[
        Cluster([0, 0, 0, 1, 1, 2], prob=0.4, amplitudes={0: Amplitude([0.5, 2.0], [0.3, 0.7])}),
        Cluster([0, 1, 0, 1, 0, 1], prob=0.6, amplitudes=Amplitude([1.5]))])
    g = m.mask_ratio
    total = 0.0
    for k, cl in enumerate(m.clusters):
        ez2 = [a.moment2() for a in cl.amplitudes]
        for mask in itertools.product([0, 1], repeat=6):           # 1 = masked
            pm = np.prod([g if x else 1 - g for x in mask])
            for p in range(6):
                if not mask[p]:
                    continue
                others = [q for q in range(6) if q != p and cl.areas[q] == cl.areas[p] and not mask[q]]
                # the average of the visible same-area patches is x_p itself; none -> predict 0
                total += m.probs[k] * pm * (0.0 if others else 0.5 * ez2[cl.areas[p]])
    assert area_oracle_loss(m) == pytest.approx(total, rel=1e-13)


def test_crossing_interpolates():
    t = np.array([0.0, 1.0, 2.0, 4.0])
    y = np.array([0.0, 0.2, 0.6, 1.0])
    assert crossing_time(t, y, 0.4, above=True) == pytest.approx(1.5)
    assert crossing_time(t, y, 0.8, above=True) == pytest.approx(3.0)
    assert np.isnan(crossing_time(t, y, 1.5, above=True))
    assert crossing_time(t, 1 - y, 0.5, above=False) == pytest.approx(1.75)


def test_phases_on_the_paper_preset(paper_solution):
    ph = phases(paper_solution)
    m = paper_solution.model
    assert ph.T1.shape == ph.T2.shape == ph.T3.shape == (1, 64)
    loc = ph.is_local
    assert loc.sum() == 16 and np.array_equal(loc, local_mask(m))
    assert np.all(ph.T1[loc] < ph.T2[loc]) and np.all(ph.T2[loc] < ph.T3[loc])
    # the times are where the traces cross their levels
    p = int(np.flatnonzero(loc[0])[0])
    tr = ph.target[:, 0, p]
    i = np.searchsorted(paper_solution.t, ph.T2[0, p])
    assert tr[i - 1] < 0.5 * ph.ceiling[0, p] <= tr[i]
    assert ph.distractor[0, 0, p] > ph.target[0, 0, p]          # positive information gap at t = 0
    table = ph.table()
    assert "T1" in table and table.count("yes") == 4            # four local classes
    summary = ph.summary()
    assert summary.primary == "local"
    assert summary.time("T2") == pytest.approx(np.median(ph.T2[loc]), rel=1e-12)
    assert summary.groups["local"].reached["T3"] == (16, 16)


def test_diversity_against_pairwise_maps(paper_solution):
    d = attention_diversity(paper_solution)
    assert abs(d[0]) < 1e-12                                     # Q = 0: everyone attends alike
    for i in (40, len(paper_solution.t) - 1):
        W = paper_solution.attention_map(i)
        P = W.shape[0]
        ov = sum(np.minimum(W[p], W[q]).sum() for p in range(P) for q in range(P) if p != q)
        assert d[i] == pytest.approx(1 - ov / (P * (P - 1)), abs=1e-12)
    assert d[-1] > 0.3
    # at chosen output times only: the same numbers
    np.testing.assert_array_equal(attention_diversity(paper_solution, at=[0, 40, -1]), d[[0, 40, -1]])
    for bad in ([len(d)], [0.5], [[0, 1]]):
        with pytest.raises(ValueError, match="at must be"):
            attention_diversity(paper_solution, at=bad)


def test_observables_on_a_training_run(paper_solution):
    m = global_local(16, n_local=2, local_size=4, mask_ratio=0.5)
    sol = gradflow.solve(m, 200.0)
    run = gradflow.train_transformer(m, steps=2000, lr=0.1, batch_size=256, record_every=20, seed=1)
    ph_mc, ph = phases(run), phases(sol)
    loc = ph.is_local
    assert np.all(np.isfinite(ph_mc.T2[loc]))
    assert np.allclose(ph_mc.T2[loc], ph.T2[loc], rtol=0.1)
    assert np.allclose(ph_mc.T1[loc], ph.T1[loc], rtol=0.1)
    d_mc = attention_diversity(run)
    d = gradflow.solve(m, 200.0, t_eval=run.t)
    assert np.abs(d_mc - attention_diversity(d)).max() < 0.02


def test_fit_power_law_recovers_exponent():
    P = np.array([10, 20, 40, 80])
    slope, (lo, hi) = fit_power_law(P, 3.0 * P ** 1.5)
    assert slope == pytest.approx(1.5, abs=1e-12) and hi - lo < 1e-10
    rng = np.random.default_rng(0)
    slope, (lo, hi) = fit_power_law(P, P ** 0.7 * np.exp(0.05 * rng.standard_normal(4)))
    assert lo < 0.7 < hi and hi - lo < 0.6


def _settled_start_brute_force(x, y, tol, min_points):
    """Reference for power_law_range: try every tail, longest first."""
    for start in range(x.size - min_points + 1):
        s = np.diff(np.log(y[start:])) / np.diff(np.log(x[start:]))
        if np.all(np.isfinite(s)) and s.max() - s.min() <= tol:
            return start
    return None


def test_power_law_range():
    x = np.geomspace(10, 1e5, 12)
    assert power_law_range(x, 3.0 * x ** 1.5) == 0                  # an exact law holds everywhere
    # T = c + x: the local slope rises towards 1, so the law holds only at the large-x end
    for c, tol in ((30.0, 0.05), (30.0, 0.01), (300.0, 0.05), (3e4, 0.05)):
        y = c + x
        assert power_law_range(x, y, tol) == _settled_start_brute_force(x, y, tol, 3), (c, tol)
    start = power_law_range(x, 30.0 + x)
    s = local_slopes(x, 30.0 + x)
    assert 0 < start < x.size - 3 and s[start:].max() - s[start:].min() <= 0.05
    assert s[start - 1:].max() - s[start - 1:].min() > 0.05              # the longest such tail
    assert power_law_range(x, 3e4 + x) is None                           # still bending at the end
    y = 3.0 * x ** 1.5
    y[-1] = np.nan                                                       # not reached at the largest x
    assert power_law_range(x, y) is None
    assert power_law_range(x[:2], y[:2]) is None                         # two points are no law
    with pytest.raises(ValueError, match="increasing"):
        power_law_range(x[::-1], y)


def test_phase_scaling_global_local():
    r = phase_scaling("global_local", [256, 36, 144, 64], n_local=4, local_size=4, mask_ratio=0.5)
    assert r.which == "local"
    assert list(r.Ps) == [36, 64, 144, 256]                              # reported in ascending order
    assert np.all(np.diff(r.times["T2"]) > 0)                  # the target grows later at larger P
    # the local slope of T2 rises (0.61 -> 0.75) over these sizes: no power law is fitted
    s2 = r.local_slopes["T2"]
    assert np.all(np.diff(s2) > 0) and 0.5 < s2[0] and s2[-1] < 1.0 and s2[-1] - s2[0] > r.tol
    assert r.fit_start["T2"] is None and np.isnan(r.slopes["T2"]) and r.fit_range("T2") is None
    # T1 is nearly flat: fitted on all four sizes, and the fitted law goes through the points
    assert r.fit_range("T1") == (36, 256) and abs(r.slopes["T1"]) < 0.1
    np.testing.assert_allclose(r.fitted("T1", r.Ps), r.times["T1"], rtol=0.02)
    assert r.slopes["T1"] == pytest.approx(fit_power_law(r.Ps, r.times["T1"])[0], rel=1e-12)
    assert "slope" in r.table() and "none" in r.table() and "nan" not in r.table()
    slope_row = next(line for line in r.table().splitlines() if line.strip().startswith("slope"))
    assert slope_row.split() == ["slope", f"{r.slopes['T1']:.3f}", "-", "-"]
    with pytest.raises(ValueError, match="Ps"):
        phase_scaling("global_local", [64])


def test_T1_is_measured_from_t0_even_when_outputs_start_later():
    from gradflow.presets import balanced
    m = balanced(grid=(6, 6), area_shape=(3, 3), mask_ratio=0.5, n_clusters=2)
    te = np.linspace(5.0, 200.0, 200)
    with_zero = phases(gradflow.solve(m, 200.0, t_eval=np.r_[0.0, te]))
    without = phases(gradflow.solve(m, 200.0, t_eval=te))
    np.testing.assert_allclose(without.T1, with_zero.T1, rtol=1e-6)
    loaded_path = None
    sol = gradflow.solve(m, 200.0, t_eval=te)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        loaded_path = f"{d}/s.nc"
        sol.save(loaded_path)
        loaded = gradflow.Solution.load(loaded_path)
        # the attention recorded at the step ends (from t = 0) is saved with the file ...
        np.testing.assert_allclose(phases(loaded, traces="steps").T1, phases(sol, traces="steps").T1, rtol=1e-12)
        with pytest.raises(ValueError, match="t = 0"):
            phases(loaded)                           # ... without it a file cannot reach back to t = 0
        with pytest.raises(ValueError, match="t must be in"):
            loaded.at(0.0)


def test_single_patch_areas_have_no_target():
    m = DataModel(n_patches=6, mask_ratio=0.5, clusters=[Cluster([0, 0, 0, 0, 0, 1])])
    sol = gradflow.solve(m, 1e4)
    ph = phases(sol)
    assert ph.ceiling[0, 5] == 0 and np.isnan(ph.T2[0, 5]) and np.isnan(ph.T3[0, 5])
    assert np.all(np.isfinite(ph.T3[0, :5]))
    assert gradflow.verify(m, t_max=1e4).passed


def test_phase_scaling_by_preset_name_balanced():
    r = phase_scaling("balanced", [16, 36, 64])
    assert r.which == "all" and abs(r.slopes["T2"]) < 0.2 and r.fit_range("T2") == (16, 64)
    with pytest.raises(ValueError, match="Ps"):
        phase_scaling("global_local", [16.5, 36])


def test_ideal_diversity_against_pairwise_maps():
    """The area-wide ideal: every query spreads evenly over the other patches of its area (a
    one-patch area's query stays on itself); its diversity from the per-position maps."""
    from gradflow.flow.observables import ideal_diversity
    from gradflow.presets import balanced
    assert ideal_diversity(balanced(P=16)) == pytest.approx(1 - (48 / 240) * (2 / 3), rel=1e-12)
    m = DataModel(n_patches=7, mask_ratio=0.5, clusters=[Cluster([0, 0, 0, 1, 1, 2, 0], prob=0.3),
                                                         Cluster([0, 1, 1, 1, 0, 0, 1], prob=0.7)])
    expected = 0.0
    for prob, c in zip(m.probs, m.clusters):
        W = np.zeros((7, 7))
        for p in range(7):
            mates = np.flatnonzero((c.areas == c.areas[p]) & (np.arange(7) != p))
            if mates.size:
                W[p, mates] = 1.0 / mates.size
            else:
                W[p, p] = 1.0
        overlap = sum(np.minimum(W[p], W[q]).sum() for p in range(7) for q in range(7) if p != q)
        expected += prob * (1 - overlap / 42)
    assert ideal_diversity(m) == pytest.approx(expected, rel=1e-12)


def test_gradient_pass_attention_equals_the_attention_kernel():
    """The attention by area the exact gradient pass computes on the side (what phases read at
    every step end) is the attention kernel's, at random states of an irregular model."""
    from gradflow.presets import voronoi
    from gradflow.theory.population import attention_by_area, loss_gradient_and_masses
    from gradflow.theory.reduction import signature_reduction
    from gradflow.theory.state import State
    m = voronoi(grid=(4, 5), n_clusters=3, n_regions=4, seed=3, random_fraction=0.5)
    reduction = signature_reduction(m)
    rng = np.random.default_rng(1)
    S, F = reduction.n_classes, reduction.n_features
    for scale in (0.0, 0.5, 3.0):
        st = State(reduction, scale * rng.standard_normal((S, F)), scale * rng.standard_normal((S, S)),
                   scale * rng.standard_normal(S))
        _, _, (unmasked, masked) = loss_gradient_and_masses(st)
        ref_unmasked, ref_masked = attention_by_area(State(reduction, st.A_classes[None], st.B_classes[None],
                                                           st.B_self[None]))
        np.testing.assert_allclose(unmasked, ref_unmasked[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(masked, ref_masked[0], rtol=1e-12, atol=1e-15)
        assert np.allclose(unmasked.sum(-1) + masked, 1.0)           # every query's mass sums to one


def test_phases_of_a_runge_kutta_flow_read_its_step_ends():
    """An explicit Runge-Kutta flow records the exact attention at every step end; its phase times
    agree with those read from dense output times."""
    from gradflow.presets import global_local
    m = global_local(36, n_local=2, local_size=4)
    sol = gradflow.solve(m, 2000.0, integrator="RK45")
    assert sol.step_masses is not None and sol.step_masses.by_area.shape[0] == sol.step_t.size
    ph = phases(sol, traces="steps")
    assert np.array_equal(ph.t, sol.step_t)
    assert np.array_equal(phases(sol).t, sol.t)                    # "auto" for a small state: the outputs
    dense = gradflow.solve(m, 2000.0, integrator="RK45", t_eval=np.linspace(0, 2000.0, 20001))
    ref = phases(dense, traces="outputs")
    for name in ("T1", "T2", "T3"):
        np.testing.assert_allclose(getattr(ph, name), getattr(ref, name), rtol=5e-3)   # linear between samples


@pytest.mark.parametrize("bad", ["x", None, 3.0])
def test_observables_refuse_what_is_not_a_trajectory(bad):
    with pytest.raises(gradflow.InvalidInputError, match="result must be a Solution or TrainRun"):
        phases(bad)
    with pytest.raises(gradflow.InvalidInputError, match="result must be a Solution or TrainRun"):
        attention_diversity(bad)
    with pytest.raises(gradflow.InvalidInputError, match="t_eval"):
        gradflow.solve(global_local(36, n_local=2), 1.0, t_eval=["0", "1"])


def test_summaries_take_medians_over_positions_not_classes():
    """docs/model.md section 5: the median of a phase time runs over (cluster, position) pairs,
    so a large area weighs by its size; a phase reached by fewer than half is "not reached"."""
    from gradflow.flow.phase_times import median_time, summarize
    labels = [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [2, 2, 2, 2, 2, 1]]     # global 11, local 5 and 2
    model = DataModel(grid=(3, 6), mask_ratio=0.5, clusters=[Cluster(labels)])
    ph = phases(gradflow.solve(model, t_max=400.0))
    area = np.asarray(labels).ravel()
    T2_big, T2_small = ph.T2[0, area == 2], ph.T2[0, area == 1]
    assert np.ptp(T2_big) == 0 and np.ptp(T2_small) == 0 and T2_big[0] != T2_small[0]
    local = summarize(ph).groups["local"]
    assert local.n_queries == 7 and local.reached["T2"] == (7, 7)
    assert local.median["T2"] == T2_big[0]                      # 5 of the 7 local positions
    assert local.median["T2"] != 0.5 * (T2_big[0] + T2_small[0])     # what a median over classes gives
    assert median_time([1.0, 2.0, np.nan]) == 2.0
    assert np.isnan(median_time([1.0, np.nan, 2.0, np.nan]))   # half not reached: not reached


def test_phase_traces_refuse_what_they_cannot_read(paper_solution):
    """A traces name that does not exist, and step ends asked of a solution without them, are
    InvalidInputErrors that say so."""
    import dataclasses

    from gradflow.flow.observables import phase_traces
    with pytest.raises(ValueError, match=r"traces must be one of \['auto', 'outputs', 'steps'\], got 'x'"):
        phase_traces(paper_solution, "x")
    without = dataclasses.replace(paper_solution, step_masses=None)
    with pytest.raises(ValueError, match="traces='steps' needs a Solution"):
        phase_traces(without, "steps")
    t, _ = phase_traces(without, "auto")                  # a small state: the output times
    np.testing.assert_array_equal(t, paper_solution.t)


def test_observables_of_a_solve_use_its_quadrature():
    """A Solution's attention by area, target and diversity are those of its states under the
    t-rule its solve used: the fast rule's for a fast solve (within 1e-10 of the fine rule's)."""
    from gradflow.flow.observables import area_masses, attention_diversity
    from gradflow.presets import voronoi
    from gradflow.theory.population import attention_by_area
    model = voronoi(grid=(5, 5), n_clusters=2, n_regions=3, seed=1)
    sol = gradflow.solve(model, 50.0, quadrature="fast", progress=False)
    assert sol.quadrature == "fast"
    states = sol.states
    fast = states.with_quadrature("fast")
    by_area_fast, _ = attention_by_area(fast, "exact")
    by_area_fine, _ = attention_by_area(states, "exact")
    got = area_masses(sol).by_area
    assert np.array_equal(got, by_area_fast)
    assert np.max(np.abs(by_area_fast - by_area_fine)) < 1e-10
    assert np.abs(by_area_fast - by_area_fine).max() > 0            # the two rules do differ
    fine_sol = gradflow.solve(model, 50.0, quadrature="fine", progress=False)
    assert np.array_equal(area_masses(fine_sol).by_area, attention_by_area(fine_sol.states, "exact")[0])
    assert abs(attention_diversity(sol, at=[-1])[0] - attention_diversity(fine_sol, at=[-1])[0]) < 1e-8


def test_min_target_fraction_at_one_time_computes_that_time_only():
    """``Solution.min_target_fraction(i)`` on a fresh solution computes output i's attention only
    (a large mean-field flow's summary needs one exact pass, not one per output time), and
    agrees bit for bit with the whole trajectory's."""
    from gradflow.presets import voronoi
    model = voronoi(grid=(5, 5), n_clusters=2, n_regions=3, seed=1)
    for method in ("exact", "meanfield"):
        sol = gradflow.solve(model, 80.0, method=method, progress=False)
        single = [sol.min_target_fraction(i) for i in (0, 5, -1)]
        assert getattr(sol, "_area_masses", None) is None and sol._target_classes is None
        whole = sol.target_fraction
        expected = [np.nanmin(whole[i]) for i in (0, 5, -1)]
        assert single == expected
