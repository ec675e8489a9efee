"""Irregular structure and scale: the Voronoi preset against enumeration, the integrator choice,
the convergence stop and the budgets, the loss from the gradient pass, lazy per-position views,
Dask against local evaluation, threads by work, and refusals before memory runs out."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import random_state
from oracle import brute_force_loss

import gradflow
from gradflow import InvalidInputError, State
from gradflow.presets import global_local, voronoi
from gradflow.theory.population import loss, loss_and_gradient, loss_rate


# ---- irregular layouts ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voronoi_models_against_enumeration(seed):
    """Irregular (Voronoi) layouts with random amplitudes: the exact loss, gradient and attention
    are those of enumerating every mask and atom."""
    m = voronoi(grid=(2, 4), n_clusters=2, n_regions=3, seed=seed, random_fraction=0.5,
                amplitudes="mixed")
    assert any(a.values.size > 1 for c in m.clusters for a in c.amplitudes) or seed != 1
    A, B = random_state(m, np.random.default_rng(seed), 1.5)
    value, att = brute_force_loss(m, A, B, attention=True)
    assert gradflow.population_loss(m, A, B) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(gradflow.expected_attention(m, A, B), att, atol=1e-12)
    gA, gB = gradflow.population_grad(m, A, B)
    eps, rng = 1e-6, np.random.default_rng(seed + 10)
    dA, dB = rng.normal(size=A.shape), rng.normal(size=B.shape)
    fd = (gradflow.population_loss(m, A + eps * dA, B + eps * dB)
          - gradflow.population_loss(m, A - eps * dA, B - eps * dB)) / (2 * eps)
    assert np.sum(gA * dA) + np.sum(gB * dB) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_voronoi_layouts_are_irregular_and_reproducible():
    m = voronoi(grid=(14, 14), n_clusters=16, n_regions=8, seed=0)
    assert (m.grid, m.n_clusters, m.n_features) == ((14, 14), 16, 128)
    assert m.n_classes > 100                                    # layouts overlap into many classes
    sizes = np.concatenate([c.area_sizes() for c in m.clusters])
    assert sizes.min() < sizes.max() / 2                        # irregular, not a tiling
    assert m == voronoi(grid=(14, 14), n_clusters=16, n_regions=8, seed=0)
    assert m != voronoi(grid=(14, 14), n_clusters=16, n_regions=8, seed=1)
    random = sum(a.values.size > 1 for c in m.clusters for a in c.amplitudes)
    assert 0.1 * 128 < random < 0.5 * 128                       # about 30% of the areas
    with pytest.raises(InvalidInputError, match="n_regions"):
        voronoi(grid=(2, 2), n_regions=5)
    with pytest.raises(InvalidInputError, match="grid"):
        voronoi(grid=(0, 3))


# ---- the integrator, the convergence stop, the budgets ---------------------------------------------
def test_auto_integrator_by_state_size():
    small = gradflow.solve(global_local(64), 10.0)
    large_model = voronoi(grid=(8, 8), n_clusters=6, n_regions=5, seed=3, amplitudes="unit")
    assert large_model.n_classes ** 2 > 1500
    large = gradflow.solve(large_model, 5.0, method="meanfield")
    assert (small.integrator, large.integrator) == ("LSODA", "RK45")
    ref = gradflow.solve(large_model, 5.0, method="meanfield", integrator="DOP853", rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(large.A_classes[-1], ref.A_classes[-1], rtol=0, atol=1e-5)


def test_solve_until_converged():
    """t_max=None stops once t |dL/dt| / L < tol over a decade: recomputed here from the final
    state's own loss and gradient, and the loss is then within a few tol of the area oracle."""
    m = global_local(36, n_local=2)
    sol = gradflow.solve(m)
    assert sol.status == 0 and sol.converged and "converged" in sol.message
    final = sol.state(-1)
    value, grad = loss_and_gradient(final)
    assert sol.t[-1] * abs(loss_rate(grad)) / value < 1e-3
    assert value == pytest.approx(gradflow.area_oracle_loss(m), rel=5e-3)
    # the default outputs are the last six decades of the run and t = 0
    assert sol.t[0] == 0.0 and sol.t[1] >= sol.t[-1] * 1e-6 * (1 - 1e-9)
    # a looser tolerance stops earlier
    early = gradflow.solve(m, tol=3e-2)
    assert early.converged and early.t[-1] < sol.t[-1]
    with pytest.raises(InvalidInputError, match="t_eval needs t_max"):
        gradflow.solve(m, t_eval=[0.0, 1.0])


def test_meanfield_solve_until_converged():
    """The mean-field loss tends to 0 like 1/t (no fully masked areas), so its relative fall per
    e-fold never shrinks: against L itself the run would go on to the 1e12 cap. Judged against
    L(0) it converges, and the rule holds at the final state, recomputed here."""
    m = global_local(36, n_local=2)
    sol = gradflow.solve(m, method="meanfield")
    assert sol.status == 0 and sol.converged and "L(0)" in sol.message and sol.t[-1] < 1e9
    value, grad = loss_and_gradient(sol.state(-1), "meanfield")
    assert sol.t[-1] * abs(loss_rate(grad)) / sol.loss[0] < 1e-3
    assert sol.t[-1] * abs(loss_rate(grad)) / value > 0.5       # relative to itself: still falling
    frac = gradflow.summarize(gradflow.phases(sol)).min_target_fraction
    assert frac > 0.95                                             # area-wide, measured exactly


def test_budgets_stop_with_status_and_message():
    m = voronoi(grid=(5, 5), n_clusters=3, n_regions=4, seed=0, amplitudes="unit")
    with pytest.warns(RuntimeWarning, match="max_wall_time"):
        sol = gradflow.solve(m, 1e6, max_wall_time=0.2)
    assert sol.status == -1 and "max_wall_time" in sol.message and sol.t[-1] < 1e6
    assert np.all(np.isfinite(sol.loss))
    with pytest.warns(RuntimeWarning, match="max_nfev"):
        sol = gradflow.solve(m, 1e6, max_nfev=30)
    assert sol.status == -1 and sol.nfev <= 40
    for bad in (1e-300, 1e20, -1.0, float("nan")):
        with pytest.raises(InvalidInputError, match="t_max"):
            gradflow.solve(m, bad)


def test_losses_the_gradient_pass_computed_are_kept():
    """The loss at the integrator's steps comes free with the gradient pass (exact there); at the
    output times it is the exact loss of the output states, evaluated when asked."""
    m = voronoi(grid=(4, 4), n_clusters=2, n_regions=3, seed=2, amplitudes="unit")
    sol = gradflow.solve(m, 200.0, integrator="RK45", rtol=1e-8)
    steps = sol.step_loss[np.isfinite(sol.step_loss)]
    assert steps.size == sol.step_t.size and np.all(np.diff(steps) <= 1e-12 * steps[0])
    assert np.isfinite(sol._loss[[0, -1]]).all() and np.isnan(sol._loss[1:-1]).any()   # ends known, rest lazy
    assert sol.loss_at(-1) == pytest.approx(loss(sol.state(-1)), rel=1e-13)
    np.testing.assert_allclose(sol.loss, [loss(sol.state(i)) for i in range(sol.t.size)], rtol=1e-14)


# ---- per-position views ------------------------------------------------------------------------------
def test_per_position_views_index_like_the_dense_arrays():
    sol = gradflow.solve(global_local(36, n_local=2, n_clusters=2), 50.0, t_eval=[0, 1, 10, 50])
    for name in ("A", "B"):
        view, dense = getattr(sol, name), np.asarray(getattr(sol, name))
        assert view.shape == dense.shape
        for key in (0, -1, slice(1, 3), (0, 5), (slice(None), 5, 3), (..., 5, 5), (2, slice(None), 3),
                    (..., 3), (1, [1, 5, 9], [0, 2, 2]), (slice(None), 4, slice(2, 6)), ([0, 2], 4, 4)):
            np.testing.assert_array_equal(view[key], dense[key], err_msg=f"{name}{key}")
    assert sol.state(2).B.shape == (36, 36)


def test_huge_requests_are_refused_before_allocating():
    m = global_local(10**6, n_local=4, local_size=1024)
    sol = gradflow.solve(m, 1.0, t_eval=[0.0, 1.0])
    with pytest.raises(InvalidInputError, match="GiB"):
        np.asarray(sol.B)
    assert sol.B[1, 5, 7] == sol.B_classes[1, m.class_of[5], m.class_of[7]]      # one entry is fine
    # each of these refuses at once, naming what was asked, instead of NumPy's MemoryError (B) or
    # an unclear failure after seconds of work (the maps, the per-position Dataset)
    for ask, name in ((lambda: sol.B[-1], r"B\[-1\] of the per-position B \(2, 1000000, 1000000\)"),
                      (lambda: sol.state(-1).B, r"the per-position B \(1000000, 1000000\)"),
                      (lambda: sol.attention_map(-1), r"attention maps of 1 cluster\(s\) at P = 1000000"),
                      (lambda: sol.to_xarray(per_position=True), r"to_xarray\(per_position=True\) \(A, B and target_attention at 2 times, P = 1000000\)")):
        with pytest.raises(InvalidInputError, match=name + r" would need [\d.]+ GiB of memory"):
            ask()
    row = sol.B[-1, 5]                               # one row (P numbers) is fine
    assert row.shape == (10**6,) and row[7] == sol.B[1, 5, 7] and row[5] == sol.B_self[1, m.class_of[5]]
    from gradflow.theory.reduction import position_reduction
    big = gradflow.DataModel(n_patches=10**5, clusters=[gradflow.Cluster(np.arange(10**5) % 3)])
    with pytest.raises(InvalidInputError, match=r"would need 2\d\d\.\d GiB"):   # 3 x 10^10 numbers
        position_reduction(big)                       # every position its own class: 10^10 pairs


# ---- Dask ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client
    c = Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None)
    yield c
    c.close()


def test_dask_equals_local(client):
    m = voronoi(grid=(3, 4), n_clusters=5, n_regions=3, seed=4, amplitudes="mixed", random_fraction=0.4)
    A, B = random_state(m, np.random.default_rng(5), 1.0)
    assert gradflow.population_loss(m, A, B, client=client) == pytest.approx(
        gradflow.population_loss(m, A, B), rel=1e-12)
    for local, remote in zip(gradflow.population_grad(m, A, B), gradflow.population_grad(m, A, B, client=client)):
        np.testing.assert_allclose(remote, local, rtol=1e-12, atol=1e-15)
    here = gradflow.solve(m, 20.0, t_eval=[0.0, 5.0, 20.0])
    there = gradflow.solve(m, 20.0, t_eval=[0.0, 5.0, 20.0], client=client)
    np.testing.assert_allclose(there.A_classes, here.A_classes, rtol=1e-9, atol=1e-12)


def test_each_shard_receives_only_its_clusters_columns_of_a(client, monkeypatch):
    """The queries of a cluster read only its own features' FP correlations: a shard is sent
    those columns of A (not the whole state) and returns those columns of the gradient and its
    clusters' attention; the assembled result equals the local one."""
    from gradflow.theory.distributed import ShardedPopulation
    from gradflow.theory.population import loss_gradient_and_masses
    from gradflow.theory.reduction import signature_reduction
    from gradflow.theory.state import State
    m = voronoi(grid=(3, 4), n_clusters=5, n_regions=3, seed=4, amplitudes="mixed", random_fraction=0.4)
    reduction = signature_reduction(m)
    rng = np.random.default_rng(2)
    state = State(reduction, rng.standard_normal((reduction.n_classes, reduction.n_features)),
                  rng.standard_normal((reduction.n_classes,) * 2), rng.standard_normal(reduction.n_classes))
    sharded = ShardedPopulation(client, reduction, "exact", shards=3)
    sent = []
    submit = client.submit
    monkeypatch.setattr(client, "submit", lambda fn, *args, **kw: (sent.append(args[2].shape), submit(fn, *args, **kw))[1])
    value, grad, masses = sharded.loss_gradient_and_masses(state)
    sizes = [int(reduction.feature_stop[shard[-1]] - reduction.feature_start[shard[0]]) for shard in sharded.shards]
    assert sent == [(reduction.n_classes, n) for n in sizes] and sum(sizes) == reduction.n_features
    here, grad_here, masses_here = loss_gradient_and_masses(state)
    assert value == pytest.approx(here, rel=1e-12)
    for name in ("A_classes", "B_classes", "B_self"):
        np.testing.assert_allclose(getattr(grad, name), getattr(grad_here, name), rtol=1e-12, atol=1e-15)
    for there, local in zip(masses, masses_here):
        np.testing.assert_allclose(there, local, rtol=1e-12, atol=1e-15)


def test_closed_client_is_refused():
    from dask.distributed import Client
    c = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    c.close()
    m = global_local(16, n_local=2)
    with pytest.raises(InvalidInputError, match="client"):
        gradflow.solve(m, 1.0, client=c)
    with pytest.raises(InvalidInputError, match="client"):
        gradflow.population_loss(m, np.zeros((16, 3)), np.zeros((16, 16)), client="tcp://nowhere")


# ---- threads --------------------------------------------------------------------------------------------
def test_threads_follow_work_and_the_cpus_the_process_may_use():
    from gradflow.theory.parallel import threads_for
    from gradflow.theory.reduction import signature_reduction
    assert threads_for(signature_reduction(global_local(64))) == 1           # small: one thread
    code = ("import gradflow; from gradflow.theory.parallel import available_cpus, threads_for;"
            "from gradflow.theory.reduction import signature_reduction;"
            "m = gradflow.presets.voronoi(grid=(8, 8), n_clusters=8, n_regions=6);"
            "print(available_cpus(), threads_for(signature_reduction(m)))")
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"taskset unavailable: {out.stderr.strip()[:80]}")
    assert out.stdout.split() == ["1", "1"]                                  # affinity of one CPU
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        State.zeros(signature_reduction(global_local(16, n_local=2)))
