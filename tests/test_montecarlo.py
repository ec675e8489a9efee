"""The Monte-Carlo trainer: its backward pass, its unbiasedness, its agreement with the flow,
and checkpoint/resume."""
import numpy as np
import pytest
from conftest import random_state
from gradflow.presets import global_local

import gradflow
from gradflow import compare, population_grad, population_loss, train_transformer
from gradflow.training.sampling import BatchSampler
from gradflow.training.transformer import batch_loss_grad, make_embeddings


@pytest.mark.parametrize("kind, extra_d", [("orthonormal", 0), ("orthonormal", 5), ("gaussian", 3)])
def test_batch_gradient_equals_finite_differences(two_cluster_model, kind, extra_d):
    m = two_cluster_model
    rng = np.random.default_rng(1)
    d = m.n_features + m.n_patches + extra_d
    V, E = make_embeddings(m, d, kind, rng)
    Q = 0.5 * rng.standard_normal((d, d))
    fq, z, vis = BatchSampler(m).sample(rng, 16)
    _, dQ = batch_loss_grad(Q, E, V, fq, z, vis)
    eps = 1e-6
    fd = np.empty_like(Q)
    for idx in np.ndindex(Q.shape):
        old = Q[idx]
        Q[idx] = old + eps
        up = batch_loss_grad(Q, E, V, fq, z, vis, want_grad=False)[0]
        Q[idx] = old - eps
        down = batch_loss_grad(Q, E, V, fq, z, vis, want_grad=False)[0]
        Q[idx] = old
        fd[idx] = (up - down) / (2 * eps)
    assert np.abs(dQ - fd).max() <= 1e-6 * np.abs(fd).max()


def test_batch_loss_by_hand():
    # one sample, P = 2, one area, patch 0 masked, patch 1 visible, Q = 0: yhat_0 = x_1 / 2
    m = gradflow.DataModel(n_patches=2, clusters=[gradflow.Cluster([0, 0])], mask_ratio=0.5)
    V, E = make_embeddings(m, 3, "orthonormal", np.random.default_rng(0))
    loss, _ = batch_loss_grad(np.zeros((3, 3)), E, V, np.zeros((1, 2), dtype=np.int64),
                              np.array([[2.0, 2.0]]), np.array([[False, True]]))
    assert loss == pytest.approx(0.5 * (2.0 - 1.0) ** 2, rel=1e-14)


def test_mean_batch_gradient_matches_population_gradient(two_cluster_model):
    """Statistical test: the per-batch projected gradients are i.i.d. with mean equal to the
    population gradient, so their average over n batches must lie within 5 standard errors
    (std / sqrt(n)) of it in every entry; the tolerance shrinks like 1/sqrt(n samples)."""
    m = two_cluster_model
    rng = np.random.default_rng(2)
    V, E = make_embeddings(m, m.n_features + m.n_patches, "orthonormal", rng)
    A, B = random_state(m, rng, 0.8)
    Q = E @ B @ E.T + E @ A @ V.T          # the d x d matrix whose projections are (A, B)
    sampler = BatchSampler(m)
    n = 400
    gA, gB, losses = [], [], []
    for _ in range(n):
        loss, dQ = batch_loss_grad(Q, E, V, *sampler.sample(rng, 64))
        gA.append(E.T @ dQ @ V)
        gB.append(E.T @ dQ @ E)
        losses.append(loss)
    pA, pB = population_grad(m, A, B)
    for samples, exact in ((np.array(gA), pA), (np.array(gB), pB)):
        se = samples.std(axis=0, ddof=1) / np.sqrt(n)
        assert np.all(np.abs(samples.mean(axis=0) - exact) <= 5 * se + 1e-12)
        assert se.max() < 0.1 * np.abs(exact).max()       # the test has power
    se_loss = np.std(losses, ddof=1) / np.sqrt(n)
    assert abs(np.mean(losses) - population_loss(m, A, B)) <= 5 * se_loss


@pytest.fixture(scope="module")
def small_flow():
    model = global_local(16, n_local=2, local_size=4, mask_ratio=0.5)
    return model, gradflow.solve(model, 30.0)


def _rms_error(sol, lr, seeds):
    runs = [train_transformer(sol.model, steps=int(round(30 / lr)), lr=lr, batch_size=256,
                              record_every=int(round(1 / lr)), seed=s) for s in seeds]
    c = compare(sol, runs)
    return c, float(np.sqrt(np.mean(c["target_attention"].abs_error ** 2)))


def test_training_follows_the_flow(small_flow):
    _, sol = small_flow
    c, _ = _rms_error(sol, 0.02, seeds=range(4))
    assert c.ok(0.05) and c["target_attention"].max_abs_error < 0.05
    assert np.ptp(c["target_attention"].flow) > 0.1          # the attention did move a lot


@pytest.mark.slow
def test_training_converges_to_the_flow_as_lr_shrinks(small_flow):
    _, sol = small_flow
    c1, rms1 = _rms_error(sol, 0.01, seeds=range(4))
    assert c1.ok(0.05) and c1["target_attention"].max_abs_error < 0.05
    _, rms2 = _rms_error(sol, 0.005, seeds=range(4))
    assert rms2 < rms1


def test_checkpoint_resume_is_identical(tmp_path, small_flow, monkeypatch):
    model, _ = small_flow
    kw = dict(lr=0.02, batch_size=32, record_every=100, seed=3)
    full = train_transformer(model, steps=450, **kw)
    ck = tmp_path / "run.npz"
    train_transformer(model, steps=250, checkpoint=ck, **kw)      # stops off the record grid
    resumed = train_transformer(model, steps=450, checkpoint=ck, resume=ck, **kw)
    for name in ("t", "step", "A", "B", "loss", "target_attention", "Q"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name))

    # an interruption (Ctrl-C) mid-run leaves the last record's checkpoint, which resumes exactly
    import gradflow.training.sgd as mc
    calls = {"n": 0}
    real = mc.batch_loss_grad

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 333:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    ck2 = tmp_path / "interrupted.npz"
    monkeypatch.setattr(mc, "batch_loss_grad", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_transformer(model, steps=450, checkpoint=ck2, **kw)
    monkeypatch.setattr(mc, "batch_loss_grad", real)
    again = train_transformer(model, steps=450, resume=ck2, **kw)
    np.testing.assert_array_equal(again.Q, full.Q)
    np.testing.assert_array_equal(again.loss, full.loss)


def test_resume_refuses_mismatch_and_corruption(tmp_path, small_flow):
    model, _ = small_flow
    ck = tmp_path / "run.npz"
    train_transformer(model, steps=100, lr=0.02, batch_size=8, record_every=50, checkpoint=ck)
    with pytest.raises(ValueError, match="lr"):
        train_transformer(model, steps=200, lr=0.03, batch_size=8, record_every=50, resume=ck)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(ck.read_bytes()[:200])
    with pytest.raises(ValueError, match="checkpoint"):
        train_transformer(model, steps=200, lr=0.02, batch_size=8, record_every=50, resume=bad)


def test_reproducible_and_seed_dependent(small_flow):
    model, _ = small_flow
    a = train_transformer(model, steps=50, lr=0.05, batch_size=16, record_every=25, seed=1)
    b = train_transformer(model, steps=50, lr=0.05, batch_size=16, record_every=25, seed=1)
    c = train_transformer(model, steps=50, lr=0.05, batch_size=16, record_every=25, seed=2)
    np.testing.assert_array_equal(a.Q, b.Q)
    assert not np.array_equal(a.Q, c.Q)
    assert a.t.tolist() == [0.0, 1.25, 2.5] and a.A.shape == (3, 16, 3) and a.B.shape == (3, 16, 16)
    assert a.target_attention.shape == (3, 1, 16) and np.isnan(a.loss[0])


@pytest.mark.parametrize("kw, field", [
    (dict(steps=0), "steps"), (dict(lr=-1.0), "lr"), (dict(batch_size=2.5), "batch_size"),
    (dict(d=3), "d"), (dict(embeddings="random"), "embeddings"), (dict(seed=-1), "seed"),
])
def test_trainer_bad_input(small_flow, kw, field):
    model, _ = small_flow
    args = dict(steps=10, lr=0.1, batch_size=4) | kw
    with pytest.raises(ValueError, match=field):
        train_transformer(model, **args)


@pytest.mark.parametrize("lr", [1e12, 1e300])
def test_a_diverging_run_stops_and_says_so(lr):
    model = global_local(16, n_local=2, local_size=4)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        run = train_transformer(model, steps=40, lr=lr, batch_size=16, record_every=10)
    assert run.status == -1 and "lower lr" in run.message
    assert run.step[-1] < 40 and np.all(np.isfinite(run.target_attention))       # the records kept are sane


@pytest.mark.parametrize("embeddings", ["orthonormal", "gaussian"])
def test_the_embedding_width_is_at_least_f_plus_p(small_flow, embeddings):
    """docs/model.md section 2: d >= F + P for both kinds of embeddings; F + P itself is the
    default, one less is refused naming the bound, and a wider run keeps A and B of shape
    (P, F) and (P, P)."""
    model, _ = small_flow
    d_min = model.n_features + model.n_patches
    args = dict(steps=4, lr=0.1, batch_size=4, record_every=2, embeddings=embeddings)
    assert train_transformer(model, **args).Q.shape == (d_min, d_min)
    with pytest.raises(ValueError, match=rf"d must be an integer >= F \+ P = {d_min}.*got {d_min - 1}"):
        train_transformer(model, d=d_min - 1, **args)
    wide = train_transformer(model, d=d_min + 5, **args)
    assert wide.Q.shape == (d_min + 5, d_min + 5) and wide.A.shape[1:] == (model.n_patches, model.n_features)


def test_the_loss_is_compared_over_the_steps_it_averages(small_flow):
    """A run records the mean of its batch losses since the previous record; the flow's side of
    the comparison is its loss averaged over the same steps (one loss per step's start, summed
    directly here as the reference), not its loss at the interval's midpoint, which sits below
    such a mean where the loss curves (README's 2 x 3 model, records every 100 steps at lr 0.5:
    0.37 against 0.57). With few, wide records the two sides agree."""
    from gradflow.analysis.comparison import _flow_interval_losses
    from gradflow.theory.population import loss
    _, sol = small_flow
    lr, every = 0.1, 100
    runs = [train_transformer(sol.model, steps=300, lr=lr, batch_size=256, record_every=every, seed=s)
            for s in range(3)]
    flow = _flow_interval_losses(sol, runs[0].t, runs[0].step)
    assert np.isnan(flow[0])
    for i in range(1, runs[0].t.size):           # the flow's loss at every step's start
        starts = lr * np.arange(runs[0].step[i - 1], runs[0].step[i])
        direct = np.mean([loss(sol.at(ti)) for ti in starts])
        assert flow[i] == pytest.approx(direct, rel=2e-4)
    # records a few steps apart (log-spaced early records): averaged exactly, at each step's start
    steps = np.array([0, 1, 3, 9, 15])
    short = _flow_interval_losses(sol, lr * steps, steps)
    for i in range(1, steps.size):
        direct = np.mean([loss(sol.at(ti)) for ti in lr * np.arange(steps[i - 1], steps[i])])
        assert short[i] == pytest.approx(direct, rel=1e-12)
    c = compare(sol, runs)["loss"]
    np.testing.assert_array_equal(c.flow[1:], flow[1:])
    assert c.max_abs_error < 3 * np.max(c.mc_std[1:]) + 1e-3


def test_the_same_seed_gives_the_same_bits_on_any_number_of_threads():
    """A batch large enough to be split is split into the same chunks, summed in the same order,
    whether one thread or several run them: a run does not depend on the machine's cores."""
    from gradflow.theory.parallel import at_most_threads
    from gradflow.training.transformer import TRAIN_PARALLEL_WORK
    model = global_local(144, n_local=4, local_size=4, mask_ratio=0.5)
    assert 256 * 144 * 144 >= TRAIN_PARALLEL_WORK                  # split into chunks
    runs = []
    for threads in (1, 2):
        with at_most_threads(threads):
            runs.append(train_transformer(model, steps=3, lr=0.5, batch_size=256, record_every=3, seed=4))
    np.testing.assert_array_equal(runs[0].Q, runs[1].Q)
