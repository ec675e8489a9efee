"""PyTorch transformers (train_torch): the model's rung is the Numba transformer (draw for draw at
one seed, in distribution over independent seeds), the measured attention is the exact
expectation, the fast and the token forward paths agree, and bad options or divergence are
reported. Skipped without the optional extra gradflow[torch]."""
import numpy as np
import pytest
from gradflow.presets import global_local

import gradflow
from gradflow import TrainRun, compare, phases, train_transformer
from gradflow.flow.observables import area_masses, class_attention_along
from gradflow.theory.population import attention_by_class, mass_by_area

torch = pytest.importorskip("torch")
from gradflow.training.pytorch import Batch, Transformer, train_torch  # noqa: E402
from gradflow.training.sampling import BatchSampler  # noqa: E402
from gradflow.training.transformer import make_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def small():
    return global_local(16, n_local=2, local_size=4, mask_ratio=0.5)


@pytest.mark.parametrize("init_scale", [0.0, 0.2])
def test_model_rung_is_the_numba_transformer_draw_for_draw(two_cluster_model, init_scale):
    """Same seed: same embeddings, Q(0), minibatches and loss, so the same trajectory up to
    rounding (two clusters, random amplitudes, d > F + P)."""
    m = two_cluster_model
    kw = dict(steps=40, lr=0.3, batch_size=32, seed=5, init_scale=init_scale)
    a = train_transformer(m, record_every=10, d=m.n_features + m.n_patches + 2, **kw)
    b = train_torch(m, record_every=10, dim=m.n_features + m.n_patches + 2, eval_size=64, **kw)
    np.testing.assert_array_equal(a.t, b.t)
    for name in ("Q", "A", "B", "target_attention"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.loss[1:], a.loss[1:], rtol=1e-12)
    np.testing.assert_array_equal(b.E, a.E)


def _class_means(model, runs):
    """(seeds, T, K, S) target attention averaged over the positions of each signature class."""
    att = np.stack([r.target_attention for r in runs])
    return np.stack([att[..., model.class_of == s].mean(axis=-1) for s in range(model.n_classes)], axis=-1)


def test_model_rung_agrees_with_numba_in_distribution_and_the_test_has_power(small):
    """Independent seeds (torch 100.., Numba 0..): seed means of the class-averaged target
    attention agree at every record time within 4 combined standard errors + 0.005; the same
    check fails when torch's lr is 30% larger."""
    n, kw = 8, dict(steps=60, batch_size=64, record_every=10)
    numba = _class_means(small, [train_transformer(small, lr=0.5, seed=s, **kw) for s in range(n)])

    def agree(lr):
        runs = [train_torch(small, lr=lr, seed=100 + s, eval_size=64, **kw) for s in range(n)]
        mine = _class_means(small, runs)
        se = np.sqrt(mine.var(axis=0, ddof=1) / n + numba.var(axis=0, ddof=1) / n)
        gap = np.abs(mine.mean(axis=0) - numba.mean(axis=0))
        return np.all(gap <= 4 * se + 0.005), gap.max()

    ok, gap = agree(0.5)
    assert ok, gap
    assert np.ptp(numba.mean(axis=0)) > 0.3            # the attention moved: there was something to compare
    ok, gap = agree(0.65)
    assert not ok and gap > 0.05


def test_measured_attention_is_the_exact_expectation(small):
    """At a random Q(0), the masses measured on a large evaluation batch equal the exact expected
    attention by area of the projected state (within 0.015; a Q 50% larger is refused)."""
    run = train_torch(small, steps=1, lr=1e-9, batch_size=2, init_scale=0.3, eval_size=20000, seed=2)
    states = run.states
    unmasked, masked, on_self = class_attention_along(states[:1])
    exact = mass_by_area(states.reduction, unmasked)[0]
    assert np.abs(run.attention_by_area[0] - exact).max() < 0.015
    assert np.abs(run.masked_mass[0] - (masked.sum(axis=-1) + on_self)[0]).max() < 0.015
    bigger = gradflow.State.from_positions(small, 1.5 * run.A[0], 1.5 * run.B[0])
    other = mass_by_area(bigger.reduction, attention_by_class(bigger).unmasked)
    assert np.abs(run.attention_by_area[0] - other).max() > 0.05


@pytest.mark.parametrize("options", [dict(), dict(heads=2), dict(depth=2), dict(depth=3, heads=2),
                                     dict(value="learned"), dict(value="learned", heads=2),
                                     dict(attention="factorized", heads=3)])
def test_fast_path_equals_the_token_path(two_cluster_model, options):
    """The feature-coordinate forward pass (no (b, P, d) tokens) gives the loss and the masked
    queries' attention of the plain token computation."""
    m = two_cluster_model
    rng = np.random.default_rng(0)
    d = m.n_features + m.n_patches + 3
    V, E = make_embeddings(m, d, "gaussian", rng)
    args = dict(attention="merged", value="identity", heads=1, layernorm=False, depth=1) | options
    net = Transformer(E, V, init_scale=0.4, rng=rng, dtype=torch.float64, device="cpu", **args)
    batch = Batch(*BatchSampler(m).sample(rng, 16), m.n_features, "cpu", torch.float64)
    loss, w = net(batch)
    loss2, w2 = net._forward_tokens(batch)
    q = batch.query.bool()
    assert float(loss.detach()) == pytest.approx(float(loss2.detach()), rel=1e-12)
    np.testing.assert_allclose(w[q].detach().numpy(), w2[q].detach().numpy(), atol=1e-13)


def test_every_rung_trains_and_records(small):
    """Each option trains; A, B exist exactly where the network has one merged Q on orthonormal
    embeddings with an identity value, and the measured observables are proper masses."""
    for options, has_ab in [(dict(attention="factorized"), True), (dict(optimizer="adam", lr=1e-3), True),
                            (dict(heads=2), False), (dict(layernorm=True, lr=1e-3), False), (dict(depth=2), False),
                            (dict(value="learned"), False), (dict(embedding="gaussian", dim=40), False)]:
        kw = dict(steps=20, lr=0.5, batch_size=16, record_every=10, eval_size=64, dtype="float32") | options
        run = train_torch(small, **kw)
        assert run.status == 0 and (run.A is not None) == has_ab, options
        assert run.attention_by_area.shape == (3, 1, 16, 3) and run.masked_mass.shape == (3, 1, 16)
        total = run.attention_by_area.sum(axis=-1) + run.masked_mass
        np.testing.assert_allclose(total, 1.0, atol=1e-5)          # a query's attention sums to one
        assert run.architecture["trainer"] == "torch" and np.all(np.isfinite(run.eval_loss))
    assert run.t.tolist() == [0.0, 5.0, 10.0]


def test_saving_phases_and_compare_for_both_kinds(tmp_path, small):
    sol = gradflow.solve(small, 10.0)
    both = train_torch(small, steps=20, lr=0.5, batch_size=16, record_every=10, eval_size=64, seed=1)
    measured = train_torch(small, steps=20, lr=0.5, batch_size=16, record_every=10, eval_size=64, seed=1, depth=2)
    for run in (both, measured):
        run.save(tmp_path / "r.nc")
        back = TrainRun.load(tmp_path / "r.nc")
        for name in ("t", "A", "B", "Q", "target_attention", "attention_by_area", "masked_mass", "eval_loss", "E"):
            a, b = getattr(run, name), getattr(back, name)
            assert (a is None) == (b is None), name
            if a is not None:
                np.testing.assert_array_equal(a, b)
        assert back.architecture == run.architecture and back.measured
    # a run with measured attention reads its phases from it, a Numba run from its exact state
    assert area_masses(measured).by_area is not None
    np.testing.assert_array_equal(phases(measured).target[..., 0],
                                  measured.attention_by_area[:, :, 0, small.clusters[0].areas[0]])
    c = compare(sol, [measured])
    assert "target_fp" not in c.observables and np.isfinite(c["target_attention"].max_abs_error)
    assert "target_fp" in compare(sol, [both]).observables
    with pytest.raises(ValueError, match="no projected correlations"):
        measured.states


def test_old_trainrun_files_still_read(tmp_path, small):
    run = train_transformer(small, steps=10, lr=0.1, batch_size=4, record_every=5)
    ds = run.to_xarray()
    ds.attrs["gradflow_format"] = 2
    del ds.attrs["architecture"]
    ds.to_netcdf(tmp_path / "v2.nc")
    back = TrainRun.load(tmp_path / "v2.nc")
    np.testing.assert_array_equal(back.A, run.A)
    assert back.architecture == {} and not back.measured


def test_divergence_is_stopped_and_reported(small):
    # (the model's own loss is bounded, its prediction a convex mixture; a learned value is not)
    with pytest.warns(RuntimeWarning, match="diverged"):
        run = train_torch(small, steps=50, lr=1e3, batch_size=16, record_every=1, eval_size=32, value="learned")
    assert run.status == -1 and "diverged at step" in run.message
    assert run.step[-1] < 50 and np.all(np.isfinite(run.target_attention))


@pytest.mark.parametrize("kw, field", [
    (dict(attention="fused"), "attention"), (dict(value="zero"), "value"), (dict(heads=0), "heads"),
    (dict(depth=1.5), "depth"), (dict(layernorm="yes"), "layernorm"), (dict(embedding="random"), "embedding"),
    (dict(optimizer="sgdm"), "optimizer"), (dict(dim=3), r"dim must be an integer >= F \+ P = 19"), (dict(init_scale=-1.0), "init_scale"),
    (dict(attention="factorized", init_scale=0.0), "saddle"), (dict(record_steps=[5, 99]), "record_steps"),
    (dict(dtype="half"), "dtype"), (dict(eval_size=0), "eval_size"), (dict(lr=0.0), "lr"),
    (dict(device="warp-drive"), "device"),
])
def test_bad_options(small, kw, field):
    with pytest.raises(ValueError, match=field):
        train_torch(small, **(dict(steps=10, lr=0.1, batch_size=4) | kw))


def test_top_level_wrapper_is_the_trainer(small):
    import inspect
    a = gradflow.train_torch(small, steps=5, lr=0.1, batch_size=4, record_every=5, eval_size=16, seed=3,
                             attention="factorized", init_scale=0.2)
    b = train_torch(small, steps=5, lr=0.1, batch_size=4, record_every=5, eval_size=16, seed=3,
                    attention="factorized", init_scale=0.2)
    np.testing.assert_array_equal(a.Q, b.Q)
    # the wrapper shows the trainer's keywords and defaults (it is torch-free until called)
    wrapper, trainer = inspect.signature(gradflow.train_torch), inspect.signature(train_torch)
    assert list(wrapper.parameters) == list(trainer.parameters)
    assert {"attention", "value", "heads", "layernorm", "depth", "embedding", "dim", "optimizer"} <= set(wrapper.parameters)
    for name, par in wrapper.parameters.items():
        assert par.default == trainer.parameters[name].default and par.kind == trainer.parameters[name].kind, name
    with pytest.raises(TypeError, match="unexpected keyword"):
        gradflow.train_torch(small, steps=1, lr=0.1, atention="merged")


def test_steps_per_second_of_both_trainers(small):
    """Both trainers take the same steps; the function returns a positive finite rate for each
    (no timing is asserted), and refuses an unknown trainer."""
    from gradflow.analysis.ladder import steps_per_second
    rates = steps_per_second(small, steps=3, batch_size=8, warmup=1)
    assert set(rates) == {"numba", "torch"} and all(np.isfinite(v) and v > 0 for v in rates.values())
    assert set(steps_per_second(small, steps=2, batch_size=8, which="torch")) == {"torch"}
    with pytest.raises(ValueError, match="which"):
        steps_per_second(small, steps=2, which=("numba", "jax"))


@pytest.mark.slow
def test_model_rung_follows_the_flow_on_the_paper_preset(paper_solution):
    """The bottom rung on the paper's preset (3 seeds, lr 1, to t = 600) stays within 0.03 of the
    flow's target attention, and its measured phases are ordered."""
    model = paper_solution.model
    runs = [train_torch(model, steps=600, lr=1.0, seed=s, record_every=20, eval_size=1024) for s in range(3)]
    assert compare(paper_solution, runs)["target_attention"].max_abs_error < 0.03
    for run in runs:
        s = gradflow.summarize(phases(run))
        assert s.time("T1") < s.time("T2") < s.time("T3")
