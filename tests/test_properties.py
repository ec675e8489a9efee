"""Property-based tests (hypothesis): random valid data models and states, random invalid specs.

Run more cases with ``GRADFLOW_HYPOTHESIS_EXAMPLES=2000 python -m pytest tests/test_properties.py``.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from oracle import brute_force_loss, loss_scale

from gradflow import (
    Amplitude,
    Cluster,
    DataModel,
    InvalidInputError,
    population_grad,
    population_loss,
)

EXAMPLES = int(os.environ.get("GRADFLOW_HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _relabel(raw):
    """Map arbitrary ints onto labels 0..N-1 in order of first appearance."""
    seen = {}
    return [seen.setdefault(x, len(seen)) for x in raw]


@st.composite
def models(draw, max_P=7, max_combos=16):
    P = draw(st.integers(1, max_P))
    K = draw(st.integers(1, 3))
    weights = draw(st.lists(st.floats(0.05, 1.0), min_size=K, max_size=K))
    probs = np.array(weights) / np.sum(weights)
    clusters = []
    for k in range(K):
        areas = _relabel(draw(st.lists(st.integers(0, P - 1), min_size=P, max_size=P)))
        n = max(areas) + 1
        amps = {}
        for j in range(n):
            if draw(st.booleans()):
                n_at = draw(st.integers(1, 2))
                vals = draw(st.lists(st.floats(0.05, 5.0), min_size=n_at, max_size=n_at, unique=True))
                w = draw(st.lists(st.floats(0.1, 1.0), min_size=n_at, max_size=n_at))
                amps[j] = Amplitude(vals, np.array(w) / np.sum(w))
        clusters.append(Cluster(areas, prob=float(probs[k]), amplitudes=amps))
    # keep the brute force affordable: joint amplitude atoms per cluster
    combos = max(int(np.prod([a.values.size for a in c.amplitudes])) for c in clusters)
    assume(combos <= max_combos)
    gamma = draw(st.floats(0.01, 0.99))
    # probabilities may miss 1 by rounding: renormalise exactly through the model's check
    fix = 1.0 - sum(float(p) for p in probs)
    clusters[0].prob += fix
    return DataModel(n_patches=P, clusters=clusters, mask_ratio=gamma)


@st.composite
def model_and_state(draw, max_P=7, bound=300.0):
    m = draw(models(max_P=max_P))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, bound]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    A = np.clip(scale * rng.standard_normal((m.n_patches, m.n_features)), -bound, bound)
    B = np.clip(scale * rng.standard_normal((m.n_patches, m.n_patches)), -bound, bound)
    return m, A, B


@SETTINGS
@given(model_and_state())
def test_exact_loss_matches_brute_force_and_is_finite(case):
    m, A, B = case
    loss = population_loss(m, A, B)
    gA, gB = population_grad(m, A, B)
    assert np.isfinite(loss) and np.all(np.isfinite(gA)) and np.all(np.isfinite(gB))
    scale = loss_scale(m)
    assert loss >= -1e-12 * scale
    # tolerance relative to the loss's natural size: a saturated state can have a loss many
    # orders below it, where float64 (brute force included) resolves only ~1e-16 * scale
    assert abs(loss - brute_force_loss(m, A, B)) <= 1e-10 * scale


@SETTINGS
@given(model_and_state(max_P=5, bound=6.0))
def test_gradient_matches_finite_differences(case):
    m, A, B = case
    gA, gB = population_grad(m, A, B)
    eps = 1e-5
    rng = np.random.default_rng(0)
    for arr, g in ((A, gA), (B, gB)):
        for _ in range(3):
            idx = tuple(rng.integers(0, s) for s in arr.shape)
            old = arr[idx]
            arr[idx] = old + eps
            up = population_loss(m, A, B)
            arr[idx] = old - eps
            down = population_loss(m, A, B)
            arr[idx] = old
            fd = (up - down) / (2 * eps)
            assert abs(g[idx] - fd) <= 1e-6 * (abs(fd) + 1e-3 * loss_scale(m))


@SETTINGS
@given(model_and_state(max_P=6, bound=20.0), st.integers(0, 2**32 - 1))
def test_invariant_under_relabelling_and_permutation(case, seed):
    m, A, B = case
    rng = np.random.default_rng(seed)
    base = population_loss(m, A, B)
    for method in ("exact", "meanfield"):
        ref = population_loss(m, A, B, method)
        # permute positions together with the rows/columns of A and B
        perm = rng.permutation(m.n_patches)
        clusters = [Cluster(c.areas[perm], prob=c.prob, amplitudes=dict(enumerate(c.amplitudes)))
                    for c in m.clusters]
        mp = DataModel(n_patches=m.n_patches, clusters=clusters, mask_ratio=m.mask_ratio)
        assert population_loss(mp, A[perm], B[perm][:, perm], method) == pytest.approx(ref, rel=1e-10, abs=1e-14)
        # relabel the areas of every cluster, moving A's feature columns with them
        new_A = np.empty_like(A)
        clusters = []
        for k, c in enumerate(m.clusters):
            relab = rng.permutation(c.n_areas)
            clusters.append(Cluster(relab[c.areas], prob=c.prob,
                                    amplitudes={int(relab[j]): a for j, a in enumerate(c.amplitudes)}))
            for j in range(c.n_areas):
                new_A[:, m.feature_index(k, 0) + relab[j]] = A[:, m.feature_index(k, j)]
        mr = DataModel(n_patches=m.n_patches, clusters=clusters, mask_ratio=m.mask_ratio)
        assert population_loss(mr, new_A, B, method) == pytest.approx(ref, rel=1e-10, abs=1e-14)
    # the gradient moves with the positions: grad at the permuted state = permuted grad
    gA, gB = population_grad(m, A, B)
    pA, pB = population_grad(mp, A[perm], B[perm][:, perm])
    scale = max(np.abs(gA).max(), np.abs(gB).max(), 1e-300)
    assert np.abs(pA - gA[perm]).max() <= 1e-9 * scale + 1e-14
    assert np.abs(pB - gB[perm][:, perm]).max() <= 1e-9 * scale + 1e-14
    assert base == pytest.approx(population_loss(m, A, B), rel=0, abs=0)      # deterministic


# ---- invalid input: always an InvalidInputError that names the field ----------------------------
# the words an error about each field must contain (a bad grid may surface as an areas-length error)
FIELD_WORDS = {"areas": ("areas",), "prob": ("prob",), "amp_values": ("amplitude values",),
               "amp_weights": ("amplitude weights",), "mask_ratio": ("mask_ratio",),
               "n_patches": ("n_patches",), "grid": ("grid", "areas"), "clusters": ("clusters",)}

junk = st.one_of(st.none(), st.text(max_size=3), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(-5, 5), st.lists(st.integers(-2, 3), max_size=4),
                 st.lists(st.lists(st.integers(0, 2), max_size=3), max_size=3),
                 st.just([np.nan, 1.0]), st.just(np.inf), st.just(1 + 2j), st.just(True))


@SETTINGS
@given(st.sampled_from(sorted(FIELD_WORDS)), junk)
def test_invalid_model_specs_raise_value_error(field, value):
    kw = dict(areas=[0, 0, 1], prob=None, amps=None, mask_ratio=0.5, n_patches=3, grid=None)
    try:
        if field == "areas":
            kw["areas"] = value
        elif field == "prob":
            kw["prob"] = value
        elif field == "amp_values":
            kw["amps"] = Amplitude(value)
        elif field == "amp_weights":
            kw["amps"] = Amplitude([1.0, 2.0], value)
        elif field == "grid":
            kw["grid"], kw["n_patches"] = value, None
        elif field == "clusters":
            DataModel(n_patches=3, clusters=value, mask_ratio=0.5)
            return
        else:
            kw[field] = value
        cl = Cluster(kw["areas"], prob=kw["prob"], amplitudes=kw["amps"])
        DataModel(n_patches=kw["n_patches"], grid=kw["grid"], clusters=[cl], mask_ratio=kw["mask_ratio"])
    except InvalidInputError as exc:
        assert any(word in str(exc) for word in FIELD_WORDS[field]), (field, str(exc))
        return
    # a junk value that happens to be valid must give a model the kernels accept
    m = DataModel(n_patches=kw["n_patches"], grid=kw["grid"],
                  clusters=[Cluster(kw["areas"], prob=kw["prob"], amplitudes=kw["amps"])],
                  mask_ratio=kw["mask_ratio"])
    assert np.isfinite(population_loss(m, np.zeros((m.n_patches, m.n_features)),
                                       np.zeros((m.n_patches, m.n_patches))))


@SETTINGS
@given(st.sampled_from(["A", "B"]), junk)
def test_invalid_states_raise_value_error(which, value):
    m = DataModel(n_patches=3, clusters=[Cluster([0, 0, 1])], mask_ratio=0.5)
    A, B = np.zeros((3, 2)), np.zeros((3, 3))
    args = {"A": A, "B": B, which: value}
    try:
        valid = np.asarray(value, dtype=float).shape == {"A": A, "B": B}[which].shape and \
            np.all(np.isfinite(np.asarray(value, dtype=float)))
    except (TypeError, ValueError):
        valid = False
    if valid:      # junk that happens to be a valid state must simply work
        assert np.isfinite(population_loss(m, args["A"], args["B"]))
        return
    # the message starts with the field's name: "A must ...", "B must ..." (not just any "A")
    for fn in (population_loss, population_grad):
        with pytest.raises(InvalidInputError, match=rf"^{which} must "):
            fn(m, args["A"], args["B"])


# ---- phases and observables do not depend on labels ----------------------------------------------
def _relabelled(m, rng):
    """The same model with the areas of every cluster relabelled and the clusters permuted."""
    order = rng.permutation(m.n_clusters)
    clusters = []
    for k in order:
        c = m.clusters[k]
        relab = rng.permutation(c.n_areas)
        clusters.append(Cluster(relab[c.areas], prob=c.prob,
                                amplitudes={int(relab[j]): a for j, a in enumerate(c.amplitudes)}))
    return DataModel(n_patches=m.n_patches, clusters=clusters, mask_ratio=m.mask_ratio), order


@settings(max_examples=max(10, EXAMPLES // 3), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models(max_P=6, max_combos=4), st.integers(0, 2**32 - 1))
def test_relabelling_areas_and_permuting_clusters_changes_no_phase_time(m, seed):
    """T1 (ties for the largest other area included), T2, T3, the target and distractor traces,
    the loss and the diversity are the same for the same partition under other labels."""
    from gradflow import attention_diversity, phases, solve
    m2, order = _relabelled(m, np.random.default_rng(seed))
    te = np.r_[0.0, np.geomspace(0.1, 300.0, 40)]
    s1, s2 = solve(m, 300.0, t_eval=te), solve(m2, 300.0, t_eval=te)
    p1, p2 = phases(s1), phases(s2)
    for name in ("T1", "T2", "T3"):
        np.testing.assert_allclose(getattr(p2, name), getattr(p1, name)[order], rtol=1e-6, atol=1e-9,
                                   err_msg=name)
    np.testing.assert_allclose(p2.target, p1.target[:, order], atol=1e-9)
    np.testing.assert_allclose(p2.distractor, p1.distractor[:, order], atol=1e-9)
    np.testing.assert_allclose(s2.loss, s1.loss, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(attention_diversity(s2), attention_diversity(s1), atol=1e-9)


def test_tied_largest_areas_share_the_distractor():
    """Four equal areas: a query's three other areas tie, and T1 reads the mass on all three, the
    same under any labelling (the first-label rule gave 60.5 or 31.8 for one partition)."""
    from gradflow import phases, solve
    from gradflow.presets import balanced
    m = balanced(grid=(4, 4), area_shape=(2, 2), mask_ratio=0.5)
    ph = phases(solve(m, 200.0))
    # at t = 0 every other key weighs 1/16: three other areas of 4 unmasked-on-average keys
    np.testing.assert_allclose(ph.distractor[0], 3 * 4 * 0.5 / 16, rtol=1e-12)
    assert np.all(np.isfinite(ph.T1))
