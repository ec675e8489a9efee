"""The kernels' building blocks against independent references: the vectorisable exponential
against the C library, and the exact kernel's fast pair pass against its general form."""
import math
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from gradflow.model.presets import voronoi
from gradflow.theory import _quadrature_rules, kernels, quadrature
from gradflow.theory.reduction import signature_reduction
from gradflow.theory.vector_math import exp_nonpositive, log_normal_positive


@njit(error_model="numpy", fastmath={"reassoc", "contract"})
def _elementwise(fn, x):
    """fn (a vectorisable scalar function of vector_math) at every x, as the kernels call it."""
    out = np.empty(x.size)
    for i in range(x.size):
        out[i] = fn(x[i])
    return out


def _exp_all(x):
    return _elementwise(exp_nonpositive, x)


def _log_all(x):
    return _elementwise(log_normal_positive, x)


def test_exp_nonpositive_against_the_c_library():
    x = -np.concatenate([np.linspace(0.0, 708.0, 1_000_001), np.geomspace(1e-300, 1.0, 2000), [0.0]])
    ref = np.exp(x)
    got = _exp_all(x)
    assert np.max(np.abs(got / ref - 1.0)) < 4e-16
    assert np.array_equal(_exp_all(np.array([-708.5, -1e4, -1e300, -np.inf])), np.zeros(4))


def test_log_normal_positive_against_the_c_library():
    x = np.concatenate([np.geomspace(2.3e-308, 1.0, 1_000_001), np.linspace(0.5, 2.0, 100_001),
                        1.0 + np.linspace(-1e-6, 1e-6, 1001), [1.0, 1e300, np.finfo(float).max]])
    ref = np.log(x)
    err = np.abs(_log_all(x) - ref)
    assert np.max(err / np.maximum(np.abs(ref), 1.0)) < 3e-16          # absolute near x = 1
    far = np.abs(ref) > 1e-3
    assert np.max(err[far] / np.abs(ref[far])) < 4e-16
    assert _log_all(np.array([1.0]))[0] == 0.0


@njit(error_model="numpy")
def _area_terms_three_ways(reduction, A, B, B_self, s, k):
    """Per-area sums at every node of one query, from the vectorised pair pass with the columns'
    logs of psi, from the general pass (logs where need be), which the kernel takes when a
    weight is not linear-safe, and from the vectorised pass with one log per key (which the
    kernel takes when min(gamma, 1 - gamma) < 1e-19)."""
    keys, terms, work, log_c, rule, offset, x0, n = kernels.query_setup(reduction, A, B, B_self, s, k)
    general = kernels.QueryKeys(keys.pair_class, keys.pair_m, keys.pair_z, keys.log_alpha, keys.alpha,
                                keys.log_beta, keys.beta, keys.seg_col, keys.seg_multi, keys.area_seg, False)
    per_key = kernels.QueryWork(work.stored, work.columns, work.sums, work.coef, work.acc, False)
    worst = 0.0
    for i in range(n):
        sigma, h = kernels.node(rule, offset, x0, reduction.grid_step, i)
        fast = kernels.area_terms(kernels.EXACT, reduction, k, sigma, keys, terms, work)
        e1, e2 = terms.e1.copy(), terms.e2.copy()
        for other in range(2):
            if other == 0:
                slow = kernels.area_terms(kernels.EXACT, reduction, k, sigma, general, terms, work)
            else:
                slow = kernels.area_terms(kernels.EXACT, reduction, k, sigma, keys, terms, per_key)
            worst = max(worst, abs(fast - slow) / max(1.0, abs(slow)))
            for j in range(e1.size):
                worst = max(worst, abs(e1[j] - terms.e1[j]) / max(1.0, abs(terms.e1[j])),
                            abs(e2[j] - terms.e2[j]) / max(1.0, abs(terms.e2[j])))
    return worst, n, keys.linear


def test_fast_pair_pass_equals_the_general_one():
    m = voronoi(grid=(5, 6), n_clusters=3, n_regions=4, seed=5, random_fraction=0.5)
    reduction = signature_reduction(m)
    rng = np.random.default_rng(0)
    S, F = reduction.n_classes, reduction.n_features
    assert reduction.other_keys.max() > kernels.SMALL_M          # keys of both kinds of class
    checked = 0
    for scale in (0.2, 2.0, 6.0):
        A, B, Bs = scale * rng.standard_normal((S, F)), scale * rng.standard_normal((S, S)), rng.standard_normal(S)
        for s in range(0, S, 3):
            for k in range(reduction.n_clusters):
                worst, n, linear = _area_terms_three_ways(reduction, A, B, Bs, np.int64(s), np.int64(k))
                assert linear and n > 0
                assert worst < 1e-13, (scale, s, k, worst)
                checked += 1
    assert checked > 20


def test_lane_layout_and_neutral_padding():
    """Pairs fill whole columns of L lanes per segment, small classes (m' <= SMALL_M) before
    larger ones; the slots left over are padding with weight 0; every (atom, key) pair appears
    once; L is the most lanes that pad by at most LANE_PADDING."""
    lanes_used = set()
    for grid, n_clusters, n_regions in (((14, 14), 4, 2), ((5, 6), 3, 4)):
        m = voronoi(grid=grid, n_clusters=n_clusters, n_regions=n_regions, seed=5)
        reduction = signature_reduction(m)
        S, F = reduction.n_classes, reduction.n_features
        rng = np.random.default_rng(1)
        A, B = rng.standard_normal((S, F)), rng.standard_normal((S, S))
        for s in range(S):
            for k in range(reduction.n_clusters):
                keys, _, _, _ = kernels.query_keys(reduction, A, B, np.zeros(S), np.int64(s), np.int64(k))
                lanes = keys.pair_class.shape[0]
                lanes_used.add(lanes)
                assert keys.pair_class.shape == (lanes, keys.seg_col[-1]) and lanes in kernels.LANES
                pad = keys.pair_class < 0
                assert np.all(keys.alpha[pad] == 0) and np.all(keys.beta[pad] == 0)
                assert np.all(np.isneginf(keys.log_alpha[pad])) and np.all(keys.pair_m[pad] == 1)
                assert pad.sum() <= kernels.LANE_PADDING * (~pad).sum() + 1e-9
                seen = []
                for q in range(keys.seg_multi.size):
                    for c in range(keys.seg_col[q], keys.seg_col[q + 1]):
                        small = c < keys.seg_multi[q]
                        for lane in range(lanes):
                            r = keys.pair_class[lane, c]
                            if r >= 0:
                                mq = keys.pair_m[lane, c]
                                assert mq == reduction.other_keys[s, r] and (mq <= kernels.SMALL_M) == small
                                seen.append((q, r))
                assert len(seen) == len(set(seen))
                assert math.isclose(keys.pair_m[~pad].sum(), sum(
                    reduction.other_keys[s, r] * reduction.n_atoms[reduction.key_feature[k, r]] for r in range(S)))
    assert 4 in lanes_used and min(lanes_used) < 4, lanes_used


def test_numba_cache_is_dropped_when_a_compiled_in_source_changes(tmp_path):
    """Numba checks a cached function only against its own file; numba_cache.refresh drops a
    module's cached code when any file it compiles in changed (and only then)."""
    from types import SimpleNamespace

    from gradflow.theory import kernels, numba_cache
    dep = tmp_path / "dep.py"
    dep.write_text("X = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()

    def fake():
        pass
    fake.__module__ = "pkg.mod"
    dispatcher = SimpleNamespace(py_func=fake, _cache=SimpleNamespace(_cache_path=str(cache)))
    module = {"__name__": "pkg.mod", "f": dispatcher}
    cached = [cache / "mod.f-1.py311.nbi", cache / "mod.f-1.py311.1.nbc"]
    other = cache / "modx.g-1.py311.nbi"                      # another module's cache stays
    for path in cached + [other]:
        path.write_text("code")
    assert numba_cache.refresh(module, [dep])                  # no stamp yet: dropped, stamped
    assert not any(p.exists() for p in cached) and other.exists()
    for path in cached:
        path.write_text("code")                                # compiled again
    assert not numba_cache.refresh(module, [dep]) and all(p.exists() for p in cached)
    dep.write_text("X = 2\n")                                  # the source changes
    assert numba_cache.refresh(module, [dep]) and not any(p.exists() for p in cached)
    # the kernels' own stamp covers every file they compile in
    stamp = Path(kernels.exact_loss_grad_rows._cache._cache_path) / "kernels.sources.sha256"
    assert {p.name for p in kernels.CACHE_SOURCES} == {"kernels.py", "_generated.py", "quadrature.py",
                                                      "_quadrature_rules.py", "vector_math.py"}
    if stamp.exists():
        assert stamp.read_text() == numba_cache.source_digest(kernels.CACHE_SOURCES)
    # ... and the quadrature's covers its tables (compiled into grid and node as constants)
    stamp = Path(quadrature.grid._cache._cache_path) / "quadrature.sources.sha256"
    if stamp.exists():
        assert stamp.read_text() == numba_cache.source_digest(
            [Path(quadrature.__file__), Path(quadrature.__file__).with_name("_quadrature_rules.py")])


@pytest.mark.parametrize("table, row", [(t, r) for t in ("FINE", "FAST")
                                        for r in range(len(getattr(quadrature, f"{t}_SPREAD")))])
def test_generalized_gaussian_rules_integrate_their_family(table, row):
    """Each tabulated rule integrates (tD)^(p+1) e^{-tD} d sigma = p! for D anywhere in its spread
    (random D, not the construction's grid) and p = 0 .. 2 (the loss has p <= 1, its gradient
    p <= 2) to 1e-14 (fine) or 5e-12 (fast), with sorted nodes (the grid's early stop needs t
    increasing) and positive weights; the rule is not good past its spread (so the first check
    can fail); a query of this spread takes it, unless the trapezoid rule is as short."""
    spread = getattr(quadrature, f"{table}_SPREAD")[row]
    r = getattr(quadrature, f"{table}_FIRST") + row
    n = getattr(quadrature, f"{table}_NODES")[row]
    log_t, w = quadrature.RULE_LOG_T[r, :n], quadrature.RULE_WEIGHT[r, :n]
    assert np.all(np.diff(log_t) > 0) and np.all(w > 0)
    rng = np.random.default_rng(row)

    def worst(log_d):
        tau = np.exp(log_d[:, None] + log_t[None, :])
        return max(np.abs((tau ** (p + 1) * np.exp(-tau)) @ w / math.factorial(p) - 1.0).max()
                   for p in _quadrature_rules.POWERS)
    step = quadrature.GRID_STEP if table == "FINE" else quadrature.GRID_STEP_FAST
    rule, offset, _, nodes = quadrature.grid(-spread, 0.0, step)
    if rule == quadrature.DOUBLE_EXPONENTIAL:      # the trapezoid rule is as short: this row is never used
        assert nodes <= n
        return
    assert (rule, offset, nodes) == (r, 0.0, n)
    assert worst(rng.uniform(-spread, 0.0, 2000)) <= (1e-14 if table == "FINE" else 5e-12)
    assert worst(-np.array([1.6 * spread + 1.0])) > 1e-9



WARMUP_SCRIPT = """
import numpy as np
from gradflow.presets import global_local
from gradflow.flow.solver import solve
from gradflow.theory import kernels, warmup
from gradflow.theory.parallel import available_cpus
assert not kernels.compiled_before()
warmup.start()                                   # returns at once; the child compiles meanwhile
sol = solve(global_local(16, n_local=2, local_size=4), 50.0, t_eval=[0.0, 25.0, 50.0])
target = sol.target_attention[-1]                # the first attention call waits for the child
stats = kernels.area_attention_rows.stats
print(kernels.compiled_before(), sum(stats.cache_hits.values()), sum(stats.cache_misses.values()),
      available_cpus(), repr(target.tolist()))
"""


def test_the_first_run_compiles_the_attention_path_in_a_child_process(tmp_path):
    """On a cold cache the command line starts a child compiling the attention kernels while it
    goes on (and compiles the gradient itself); the first attention call waits for the child and
    loads its cached kernels instead of compiling them, with the numbers of a process that
    compiled everything itself."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", WARMUP_SCRIPT], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    cached, hits, misses, cpus, target = out.stdout.split(" ", 4)
    assert cached == "True"
    assert (hits, misses) == (("0", "1") if int(cpus) < 2 else ("1", "0"))
    from gradflow.flow.solver import solve
    from gradflow.presets import global_local
    here = solve(global_local(16, n_local=2, local_size=4), 50.0, t_eval=[0.0, 25.0, 50.0]).target_attention[-1]
    np.testing.assert_array_equal(np.array(eval(target)), here)


def test_a_child_that_does_not_finish_is_stopped_and_the_path_compiled_here(monkeypatch):
    """A child that hangs costs at most the wait limit: it is stopped, and nothing is left running."""
    import subprocess
    import sys
    import time

    from gradflow.theory import warmup
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setitem(warmup._children, "attention", child)
    start = time.perf_counter()
    warmup.wait_for("attention", limit=0.5)
    assert time.perf_counter() - start < 5 and child.poll() is not None and not warmup._children


PARENT_SCRIPT = """
import sys, time
from gradflow.theory import warmup
warmup.start()
child = warmup._children.get("attention")
print(child.pid if child else -1, flush=True)
time.sleep(60)
"""


def test_the_warmup_child_ends_when_the_command_is_killed(tmp_path):
    """A SIGTERM (or kill) of the command skips its cleanup; the compiling child still ends with
    it (Linux: the child asks the kernel for a signal when its parent dies)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from gradflow.theory.parallel import available_cpus
    if available_cpus() < 2 or not sys.platform.startswith("linux"):
        import pytest
        pytest.skip("needs two CPUs and Linux")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))      # cold: the child compiles ~8 s
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    pid = int(parent.stdout.readline())
    assert pid > 0
    time.sleep(1.0)
    os.kill(pid, 0)                                   # the child is compiling
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:                                          # reap it if it is our grandchild zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("the warm-up child outlived its parent by 10 s")
