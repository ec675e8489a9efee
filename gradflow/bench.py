"""``gradflow bench``: how the library compares with what a user would do instead.

Every figure is a ratio measured side by side in one run on this machine. The references (plain
NumPy brute force and the NumPy version of the closed form) live in the source checkout's
``benchmarks/references.py``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
from numba import njit

from ._atomic import atomic_path
from ._generated import exact_key_factors
from .kernels import _grid, _query_weights
from .model import Amplitude, Cluster, DataModel
from .population import population_grad
from .presets import global_local
from .reduction import position_reduction
from .solver import solve

FLOPS_PER_FACTOR = 40   # arithmetic of one exact key-factor evaluation (2 exp/log1p counted as 1 each)


def _references():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "references.py"
    if not path.is_file():
        raise ValueError(f"gradflow bench needs the source checkout's benchmarks/ folder, not found at {path.parent}")
    spec = importlib.util.spec_from_file_location("gradflow_bench_references", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _best(fn, repeat=5, budget=2.0):
    """Best wall time of ``fn`` over up to ``repeat`` runs (fewer when one run is slow)."""
    best, spent = np.inf, 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget:
            break
    return best


def _two_cluster(P: int) -> DataModel:
    """Two clusters of different area structure, a two-atom amplitude in one area."""
    return DataModel(n_patches=P, mask_ratio=0.5, clusters=[
        Cluster(np.arange(P) // 3, amplitudes={0: Amplitude([0.5, 1.5])}), Cluster(np.arange(P) % 3)])


@njit(cache=True)
def _count_factor_evals(A, B, B_self, mprime, class_feature, zval, natoms, gamma, n_clusters):
    """Key-factor evaluations one gradient call performs (nodes x key classes x atoms)."""
    S = mprime.shape[0]
    amax = zval.shape[1]
    la = np.zeros((S, amax))
    lb = np.zeros(S)
    a = np.zeros((S, amax))
    b = np.zeros(S)
    total = 0
    for k in range(n_clusters):
        for s in range(S):
            _, lo, hi = _query_weights(s, k, A, B, B_self, mprime, class_feature, zval, natoms, gamma, la, lb, a, b)
            n = _grid(lo, hi)[2]
            per_node = 0
            for r in range(S):
                if mprime[s, r] > 0:
                    per_node += natoms[class_feature[k, r]]
            total += n * per_node
    return total


@njit(cache=True)
def _factor_peak(n):
    """The same arithmetic in a tight loop with no memory traffic: the loop shape's ceiling."""
    acc = 0.0
    lg, l1g = math.log(0.5), math.log(0.5)
    for i in range(n):
        ta = 0.001 * (i % 997) + 0.01
        out = exact_key_factors(ta, 1.3 * ta, 0.5, lg, l1g)
        acc += out[0] + out[1] + out[2] + out[4] + out[5] + out[6] + out[7] + out[8] + out[9]
    return acc


def run(quick: bool = False, progress=print) -> list:
    """Run the benchmarks; returns rows of dicts (name, value, unit, note)."""
    ref = _references()
    rows = []

    def row(name, value, unit, note=""):
        rows.append({"name": name, "value": float(value), "unit": unit, "note": note})
        if progress:
            progress(f"{name:<58} {value:>12.4g} {unit:<10} {note}")

    rng = np.random.default_rng(0)
    # 1, 2: exact gradient versus brute force and versus the NumPy closed form
    for P in ((8, 10, 12) if quick else (8, 10, 12, 14, 16)):
        m = _two_cluster(P)
        A, B = rng.normal(size=(P, m.n_features)), rng.normal(size=(P, P))
        population_grad(m, A, B)
        t_grad = _best(lambda: population_grad(m, A, B), repeat=20)
        t_bf = _best(lambda: ref.brute_force_loss(m, A, B), repeat=1)
        t_np = _best(lambda: ref.numpy_loss_and_grad(m, A, B), repeat=3)
        row(f"P={P} exact gradient (2 clusters, per position)", t_grad * 1e3, "ms")
        row(f"P={P} brute-force loss / exact gradient", t_bf / t_grad, "x", f"brute force {t_bf * 1e3:.0f} ms")
        row(f"P={P} NumPy closed form / Numba kernels (gradient)", t_np / t_grad, "x", f"NumPy {t_np * 1e3:.1f} ms")

    # 3: solve() versus Monte Carlo following the same trajectory
    P_mc, t_mc = (16, 100.0) if quick else (64, 1000.0)
    model = global_local(P_mc, n_local=2 if quick else 4, local_size=4, mask_ratio=0.5)
    solve(model, t_mc)
    c0 = time.process_time()
    sol = solve(model, t_mc)
    cpu_solve = time.process_time() - c0
    from .compare import compare
    from .montecarlo import train_transformer
    for lr in (2.0, 1.0, 0.5, 0.25, 0.1, 0.05):
        steps = int(round(t_mc / lr))
        c0 = time.process_time()
        run_ = train_transformer(model, steps=steps, lr=lr, batch_size=256, record_every=max(1, steps // 50),
                                 progress=False)
        cpu = time.process_time() - c0
        err = compare(sol, run_)["area_attention"].max_abs_error
        if err <= 0.05:
            row(f"P={P_mc} to t={t_mc:g}: Monte Carlo CPU / solve() CPU", cpu / cpu_solve, "x",
                f"MC lr={lr} err {err:.3f}: {cpu:.2f} s vs {cpu_solve:.3f} s")
            break
        if progress:
            progress(f"  (MC lr={lr}: area attention off by {err:.3f}, trying a smaller step)")

    # 4, 5: exact versus mean-field, and cost versus P at a fixed number of classes
    Ps = (64, 10**3, 10**4) if quick else (64, 10**3, 10**4, 10**5, 10**6)
    for P in Ps:
        mp = global_local(P, n_local=4, local_size=4 if P < 10**4 else 1024, mask_ratio=0.5)
        for method in ("exact", "meanfield"):
            solve(mp, 100.0, method=method)
            t = _best(lambda: solve(mp, 100.0, method=method), repeat=3)
            row(f"P={P} global_local ({mp.n_classes} classes) {method} solve to t=100", t, "s")
    m64 = global_local(64, n_local=4, local_size=4, mask_ratio=0.5)
    row("paper preset P=64 exact solve to t=2000 (warm)", _best(lambda: solve(m64, 2000.0), repeat=5), "s")

    # 6: cost versus the number of classes (generic areas: every position its own class)
    for S in ((16, 32, 64) if quick else (16, 32, 64, 128, 256)):
        mg = DataModel(n_patches=S, mask_ratio=0.5, clusters=[Cluster(rng.permutation(np.arange(S) % 4))])
        A, B = rng.normal(size=(S, 4)), rng.normal(size=(S, S))
        population_grad(mg, A, B)
        row(f"S=P={S} generic areas: exact gradient", _best(lambda: population_grad(mg, A, B), repeat=5) * 1e3, "ms")

    # 7: kernel throughput against the same loop shape's ceiling
    P = 64
    mg = DataModel(n_patches=P, mask_ratio=0.5, clusters=[Cluster(np.arange(P) % 4)])
    A, B = rng.normal(size=(P, 4)), rng.normal(size=(P, P))
    red = position_reduction(mg)
    n_eval = _count_factor_evals(A, B, np.diag(B).copy(), red.mprime, red.class_feature, red.zval,
                                 red.natoms, red.gamma, red.n_clusters)
    population_grad(mg, A, B)
    t = _best(lambda: population_grad(mg, A, B), repeat=10)
    _factor_peak(1000)
    n_peak = 20_000_000
    t_peak = _best(lambda: _factor_peak(n_peak), repeat=3)
    rate, peak = n_eval / t, n_peak / t_peak
    row("kernel key-factor evaluations per second (P=64 gradient)", rate, "1/s",
        f"~{rate * FLOPS_PER_FACTOR / 1e9:.2f} GFLOP/s")
    row("same loop shape, no memory traffic, one core", peak, "1/s", f"~{peak * FLOPS_PER_FACTOR / 1e9:.2f} GFLOP/s")
    row("kernel rate / single-core loop ceiling", rate / peak, "x", "2 threads in the kernel")
    return rows


def main(quick: bool = False, json_path=None) -> list:
    rows = run(quick)
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps({"quick": quick, "rows": rows}, indent=1))
    return rows
