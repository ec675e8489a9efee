"""The kernels against independent references: brute-force enumeration of masks and amplitude
atoms, the mean-field definition, and central finite differences."""
import numpy as np
import pytest
from conftest import random_state
from oracle import brute_force_loss, meanfield_loss

from gradflow import (
    Amplitude,
    Cluster,
    DataModel,
    expected_attention,
    population_grad,
    population_loss,
)


def _fd_grad(model, A, B, method, eps=1e-5):
    gA = np.zeros_like(A)
    gB = np.zeros_like(B)
    for arr, out in ((A, gA), (B, gB)):
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = population_loss(model, A, B, method)
            arr[idx] = old - eps
            down = population_loss(model, A, B, method)
            arr[idx] = old
            out[idx] = (up - down) / (2 * eps)
    return gA, gB


@pytest.mark.parametrize("seed, scale", [(0, 1.0), (1, 2.5), (2, 0.3)])
def test_exact_loss_equals_brute_force(two_cluster_model, seed, scale):
    A, B = random_state(two_cluster_model, np.random.default_rng(seed), scale)
    exact = population_loss(two_cluster_model, A, B)
    assert exact == pytest.approx(brute_force_loss(two_cluster_model, A, B), rel=1e-10)


def test_exact_loss_equals_brute_force_P8_grid():
    m = DataModel(grid=(2, 4), clusters=[
        Cluster([[0, 0, 1, 1], [0, 2, 2, 1]], amplitudes=Amplitude.uniform(0.5, 2.0, 3)),
        Cluster([[0, 0, 0, 0], [1, 1, 1, 1]], prob=None, amplitudes={1: Amplitude([0.3, 3.0], [0.9, 0.1])}),
    ], mask_ratio=0.6)
    A, B = random_state(m, np.random.default_rng(7), 1.5)
    assert population_loss(m, A, B) == pytest.approx(brute_force_loss(m, A, B), rel=1e-10)


def test_loss_at_zero_state_by_hand():
    # Q = 0: uniform attention over all P keys; one area, z = 1, P = 3, gamma = g.
    g = 0.4
    m = DataModel(n_patches=3, clusters=[Cluster([0, 0, 0])], mask_ratio=g)
    # yhat = (#unmasked others)/3 * v; loss = 1/2 (1 - n/3)^2, n ~ Binomial(2, 1-g)
    pn = np.array([g * g, 2 * g * (1 - g), (1 - g) ** 2])
    per_query = sum(p * 0.5 * (1 - n / 3) ** 2 for n, p in enumerate(pn))
    assert population_loss(m, np.zeros((3, 1)), np.zeros((3, 3))) == pytest.approx(3 * g * per_query, rel=1e-13)


@pytest.mark.parametrize("method", ["exact", "meanfield"])
def test_gradient_equals_finite_differences(two_cluster_model, method):
    A, B = random_state(two_cluster_model, np.random.default_rng(3))
    gA, gB = population_grad(two_cluster_model, A, B, method)
    fA, fB = _fd_grad(two_cluster_model, A, B, method)
    scale = max(np.abs(fA).max(), np.abs(fB).max())
    assert np.abs(gA - fA).max() <= 1e-6 * scale
    assert np.abs(gB - fB).max() <= 1e-6 * scale


@pytest.mark.parametrize("amps", [None, Amplitude([0.6, 1.9], [0.3, 0.7])])
def test_meanfield_equals_its_definition(amps):
    # point masses take the SymPy closed form, random amplitudes the t integral
    m = DataModel(n_patches=7, clusters=[Cluster([0, 0, 1, 1, 1, 2, 2], prob=0.3, amplitudes=amps),
                                         Cluster([0, 1, 0, 1, 0, 1, 1], prob=0.7)], mask_ratio=0.3)
    A, B = random_state(m, np.random.default_rng(4))
    assert population_loss(m, A, B, "meanfield") == pytest.approx(meanfield_loss(m, A, B), rel=1e-12)


def test_meanfield_closed_form_matches_integral_path(monkeypatch):
    from gradflow.theory.population import loss_and_gradient
    from gradflow.theory.state import State
    m = DataModel(n_patches=6, clusters=[Cluster([0, 0, 1, 1, 2, 2])], mask_ratio=0.45)
    A, B = random_state(m, np.random.default_rng(5))
    closed = State.from_positions(m, A, B)
    assert closed.reduction.all_point
    integral = State(closed.reduction._replace(all_point=False), closed.A_classes, closed.B_classes, closed.B_self)
    (l1, g1), (l2, g2) = loss_and_gradient(closed, "meanfield"), loss_and_gradient(integral, "meanfield")
    assert l1 == pytest.approx(l2, rel=1e-11)
    np.testing.assert_allclose(g1.flat(), g2.flat(), rtol=1e-11, atol=1e-14)


def test_expected_attention_equals_brute_force(two_cluster_model):
    A, B = random_state(two_cluster_model, np.random.default_rng(6))
    _, bf = brute_force_loss(two_cluster_model, A, B, attention=True)
    att = expected_attention(two_cluster_model, A, B)
    np.testing.assert_allclose(att, bf, atol=1e-12)
    np.testing.assert_allclose(att.sum(axis=2), 1.0, atol=1e-12)


def test_saturated_attention_stays_accurate():
    # correlations large enough that attention is nearly one-hot: the log-space kernel must agree
    m = DataModel(n_patches=6, clusters=[Cluster([0, 0, 0, 1, 1, 1], amplitudes=Amplitude([0.5, 2.0]))],
                  mask_ratio=0.5)
    A, B = random_state(m, np.random.default_rng(8), 12.0)
    assert population_loss(m, A, B) == pytest.approx(brute_force_loss(m, A, B), rel=1e-10)


@pytest.mark.parametrize("bad, field", [
    (dict(A=np.zeros((3, 2))), "A"), (dict(B=np.zeros((4, 3))), "B"),
    (dict(A=np.full((4, 2), np.nan)), "A"), (dict(B=np.full((4, 4), np.inf)), "B"),
    (dict(method="mc"), "method"), (dict(A=np.full((4, 2), 1e7)), "A, B are too large"),
])
def test_bad_state_is_a_value_error(bad, field):
    m = DataModel(n_patches=4, clusters=[Cluster([0, 0, 1, 1])], mask_ratio=0.5)
    kw = dict(A=np.zeros((4, 2)), B=np.zeros((4, 4)), method="exact") | bad
    with pytest.raises(ValueError, match=field):
        population_loss(m, kw["A"], kw["B"], kw["method"])
    with pytest.raises(ValueError, match=field):
        population_grad(m, kw["A"], kw["B"], kw["method"])


@pytest.mark.parametrize("scale", [0.0, 1e-4, 3e-3, 0.02])
def test_gauss_laguerre_rule_near_uniform_attention(two_cluster_model, scale):
    """When D hardly varies over masks (near Q = 0) the kernels switch to a 2-7 node
    Gauss-Laguerre rule: it must agree with enumeration and with the NumPy double-exponential
    reference as closely as the default rule does."""
    from gradflow.analysis import references
    from gradflow.theory import quadrature
    m = two_cluster_model
    A, B = random_state(m, np.random.default_rng(21), scale)
    spread = max(np.ptp(B[p]) + np.ptp(A[p]) * 2.0 for p in range(m.n_patches))
    assert spread <= quadrature.LAGUERRE_RULES[-1][0] * 10 or scale == 0.02
    loss = population_loss(m, A, B)
    assert loss == pytest.approx(brute_force_loss(m, A, B), rel=1e-13)
    ref_loss, ref_gA, ref_gB = references.numpy_loss_and_grad(m, A, B)
    gA, gB = population_grad(m, A, B)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    scale_g = max(np.abs(ref_gA).max(), np.abs(ref_gB).max(), 1e-300)
    assert np.abs(gA - ref_gA).max() <= 1e-12 * scale_g + 1e-15
    assert np.abs(gB - ref_gB).max() <= 1e-12 * scale_g + 1e-15
    att = expected_attention(m, A, B)
    _, bf = brute_force_loss(m, A, B, attention=True)
    np.testing.assert_allclose(att, bf, atol=1e-13)


@pytest.mark.parametrize("seed, mask_ratio", [(0, 0.3), (1, 0.5), (2, 0.7), (0, 0.05), (2, 0.05)])
def test_the_fast_quadrature_stays_within_its_stated_accuracy(seed, mask_ratio):
    """The fast rule (``quadrature="fast"``, for flows integrated at rtol >= 1e-6) gives the loss
    to ~1e-12 (absolute; the test allows 1e-10) and the gradient to ~3e-7 of its largest entry
    (~2e-8 at mask ratios 0.3-0.7), against the fine rule (itself checked against brute force
    above), on irregular models late in a flow, point and continuous amplitudes, and uses fewer
    nodes."""
    from gradflow.analysis.bench import count_pair_evaluations, trained_like_state
    from gradflow.presets import voronoi
    from gradflow.theory.population import loss_and_gradient
    from gradflow.theory.reduction import signature_reduction
    from gradflow.theory.state import State
    model = voronoi(grid=(6, 6), n_clusters=3, n_regions=4, seed=seed, mask_ratio=mask_ratio)
    reduction = signature_reduction(model)
    fine = trained_like_state(reduction, seed=seed)
    fine = State(reduction, fine.A_classes * (1 + seed), fine.B_classes * (1 + seed), fine.B_self)
    fast = fine.with_quadrature("fast")
    L, g = loss_and_gradient(fine)
    L2, g2 = loss_and_gradient(fast)
    low = mask_ratio < 0.3
    assert abs(L2 - L) <= 1e-10 * max(abs(L), 1.0)
    for name in ("A_classes", "B_classes", "B_self"):
        a, b = getattr(g, name), getattr(g2, name)
        assert np.max(np.abs(b - a)) <= (1e-6 if low else 1e-7) * np.max(np.abs(a)), name
    pairs_fine = count_pair_evaluations(reduction, fine.A_classes, fine.B_classes, fine.B_self)[0]
    pairs_fast = count_pair_evaluations(fast.reduction, fine.A_classes, fine.B_classes, fine.B_self)[0]
    assert pairs_fast < 0.85 * pairs_fine


def test_classes_of_every_size_equal_brute_force_and_the_per_position_kernel():
    """Key classes of m' = 1 .. 5 (the kernel multiplies psi^m' of classes up to SMALL_M = 4 into
    its columns' products and takes one log per key of larger classes): the class-reduced loss
    against brute force, and its gradient against the per-position kernel (every m' = 1)."""
    from gradflow.theory import kernels
    from gradflow.theory.population import loss_and_gradient
    from gradflow.theory.reduction import signature_reduction
    from gradflow.theory.state import State
    sizes = [1, 2, 3, 5]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    P = labels.size
    m = DataModel(n_patches=P, mask_ratio=0.4, clusters=[
        Cluster(labels, prob=0.7, amplitudes={3: Amplitude([0.5, 1.5])}), Cluster(np.zeros(P, int), prob=0.3)])
    reduction = signature_reduction(m)
    assert set(np.unique(reduction.other_keys)) == {0, 1, 2, 3, 4, 5} and kernels.SMALL_M == 4
    rng = np.random.default_rng(3)
    S, F = reduction.n_classes, reduction.n_features
    state = State(reduction, rng.normal(size=(S, F)), rng.normal(size=(S, S)), rng.normal(size=S))
    value, grad = loss_and_gradient(state)
    assert value == pytest.approx(brute_force_loss(m, state.A, state.B), rel=1e-12)
    _, per_position = loss_and_gradient(State.from_positions(m, state.A, state.B))
    gA, gB = per_position.A, per_position.B
    assert per_position.reduction.n_classes == P
    assert np.allclose(gA, grad.A, rtol=0, atol=1e-13 * np.abs(gA).max())
    assert np.allclose(gB, grad.B, rtol=0, atol=1e-13 * np.abs(gB).max())


def test_the_per_position_api_takes_symmetric_states_on_their_classes():
    """A, B equal within the signature classes (as a Solution's) are evaluated on the classes,
    anything else per position; both give the same loss, gradient and attention (to rounding),
    and one unequal entry anywhere, a within-class pair of B included, sends a state per
    position."""
    from gradflow.presets import voronoi
    from gradflow.theory.per_position import evaluated_state
    from gradflow.theory.population import attention_maps, loss_and_gradient
    from gradflow.theory.reduction import signature_reduction
    from gradflow.theory.state import State
    m = voronoi(grid=(5, 5), n_clusters=2, n_regions=3, seed=2, mask_ratio=0.4)
    reduction = signature_reduction(m)
    S, F, P = reduction.n_classes, reduction.n_features, m.n_patches
    assert S < P and reduction.class_size.max() >= 2
    rng = np.random.default_rng(5)
    symmetric = State(reduction, rng.normal(size=(S, F)), rng.normal(size=(S, S)), rng.normal(size=S))
    A, B = symmetric.A, symmetric.B
    on_classes = evaluated_state(m, A, B)
    assert on_classes.reduction.n_classes == S
    forced = State.from_positions(m, A, B)
    assert forced.reduction.n_classes == P
    L, (gA, gB) = population_loss(m, A, B), population_grad(m, A, B)
    L_ref, g_ref = loss_and_gradient(forced)
    assert L == pytest.approx(L_ref, rel=1e-13)
    assert np.max(np.abs(gA - g_ref.A)) <= 1e-13 * np.abs(g_ref.A).max()
    assert np.max(np.abs(gB - g_ref.B)) <= 1e-13 * np.abs(g_ref.B).max()
    att, att_ref = expected_attention(m, A, B), attention_maps(forced)
    assert np.max(np.abs(att - att_ref)) <= 1e-13
    # one entry off: A, the diagonal of B, B between classes, B within a class
    s2 = int(np.flatnonzero(reduction.class_size >= 2)[0])
    p, q = np.flatnonzero(reduction.class_of == s2)[:2]
    r = int(np.flatnonzero(reduction.class_of != s2)[0])
    for which, index in (("A", (p, 0)), ("B", (p, p)), ("B", (p, r)), ("B", (p, q))):
        A2, B2 = A.copy(), B.copy()
        (A2 if which == "A" else B2)[index] += 1e-9
        assert evaluated_state(m, A2, B2).reduction.n_classes == P, (which, index)
        assert population_loss(m, A2, B2) == pytest.approx(L, abs=1e-7)


def test_the_per_position_api_takes_the_fast_rule_when_asked():
    """quadrature="fast" evaluates loss, gradient and attention with the fast rule, on the classes
    (a late symmetric state, spreads where the two rules differ) and per position, here and
    through a Dask client, within its stated accuracy of the fine rule; a rule it does not know is
    refused by name."""
    from dask.distributed import Client, LocalCluster

    from gradflow.analysis.bench import trained_like_state
    from gradflow.errors import InvalidInputError
    from gradflow.presets import voronoi
    from gradflow.theory.per_position import evaluated_state
    from gradflow.theory.reduction import signature_reduction
    m = voronoi(grid=(6, 6), n_clusters=3, n_regions=4, seed=4, mask_ratio=0.5)
    late = trained_like_state(signature_reduction(m), seed=1)
    rng = np.random.default_rng(0)
    P = m.n_patches
    symmetric = (late.A, late.B)
    generic = (3 * rng.normal(size=(P, m.n_features)), 3 * rng.normal(size=(P, P)))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for (A, B), classes in ((symmetric, m.n_classes), (generic, P)):
            fine, fast = evaluated_state(m, A, B), evaluated_state(m, A, B, "fast")
            assert fine.reduction.n_classes == fast.reduction.n_classes == classes
            assert fast.reduction.grid_step > fine.reduction.grid_step
            L, L_fast = population_loss(m, A, B), population_loss(m, A, B, quadrature="fast")
            assert L_fast != L and L_fast == pytest.approx(L, abs=1e-10)
            assert population_loss(m, A, B, quadrature="fast", client=client) == pytest.approx(L_fast, rel=1e-12)
            (gA, gB), (fA, fB) = population_grad(m, A, B), population_grad(m, A, B, quadrature="fast")
            for g, f in ((gA, fA), (gB, fB)):
                assert 0 < np.max(np.abs(f - g)) <= 1e-7 * np.abs(g).max()
            dA, dB = population_grad(m, A, B, quadrature="fast", client=client)
            assert np.max(np.abs(dA - fA)) <= 1e-12 * np.abs(fA).max()
            att, att_fast = expected_attention(m, A, B), expected_attention(m, A, B, quadrature="fast")
            assert 0 < np.max(np.abs(att_fast - att)) <= 1e-9
    with pytest.raises(InvalidInputError, match="quadrature"):
        population_grad(m, *generic, quadrature="coarse")


def test_on_classes_refuses_another_models_reduction_and_keeps_the_rule():
    """A state is put only on the classes of its own model (another mask ratio or other areas are
    refused) and keeps its t-integrals' rule."""
    from gradflow.errors import InvalidInputError
    from gradflow.presets import voronoi
    from gradflow.theory.reduction import signature_reduction
    from gradflow.theory.state import State
    m = voronoi(grid=(5, 5), n_clusters=2, n_regions=3, seed=2, mask_ratio=0.4)
    state = State.from_positions(m, np.zeros((25, m.n_features)), np.zeros((25, 25))).with_quadrature("fast")
    on = state.on_classes(signature_reduction(m))
    assert on.reduction.n_classes == m.n_classes and on.reduction.grid_step == state.reduction.grid_step
    for other in (voronoi(grid=(5, 5), n_clusters=2, n_regions=3, seed=2, mask_ratio=0.2),
                  voronoi(grid=(5, 5), n_clusters=2, n_regions=3, seed=3, mask_ratio=0.4)):
        with pytest.raises(InvalidInputError, match="own model"):
            state.on_classes(signature_reduction(other))