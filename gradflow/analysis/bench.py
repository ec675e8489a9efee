"""``gradflow bench``: how the library compares with what a user would do instead.

Every figure is a ratio or a time measured side by side in one run on this machine, after a
warm-up call (Numba compiles on first use; compilation is never timed). The references (plain
NumPy brute force and the NumPy version of the closed form) are in ``references``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from numba import njit

from ..flow.solver import solve
from ..io import atomic_path, check_output_path
from ..model import Amplitude, Cluster, DataModel
from ..model.presets import global_local, voronoi
from ..theory import kernels, numba_cache
from ..theory.parallel import threads_for
from ..theory.quadrature import g_stop
from ..theory.per_position import population_grad
from ..theory.state import State
from ..training.sgd import train_transformer
from . import references
from .comparison import compare

def best_time(fn, repeat=5, budget=2.0, warm=True):
    """Best wall time of ``fn`` over up to ``repeat`` runs (fewer when one run is slow), after one
    untimed warm-up call when ``warm``."""
    if warm:
        fn()
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


# floating-point operations per (atom, key) pair and node in one exact gradient: the pair pass
# (weights, the exponential's range reduction and degree-13 polynomial, psi, 1/psi, u, w, the
# three moments, psi^m', five column sums: ~63), the column's log of psi shared by its pairs
# (~8 per pair with 4 lanes) and the derivative pass (six SymPy derivatives, the two
# combinations, two sums: ~27); a division counts as one
FLOPS_PER_PAIR = 98


@njit(cache=True, error_model="numpy")
def count_pair_evaluations(reduction, A, B, B_self):
    """(pair evaluations, of them padding) that one exact gradient performs: nodes actually
    evaluated (the early stop at G < g_stop included) times the query's (atom, key) pairs."""
    total = 0
    padding = 0
    for k in range(reduction.cluster_prob.size):
        for s in range(reduction.other_keys.shape[0]):
            keys, terms, work, log_c, rule, offset, x0, n = kernels.query_setup(reduction, A, B, B_self, s, k)
            n_pad = 0
            for lane in range(keys.pair_class.shape[0]):
                for c in range(keys.pair_class.shape[1]):
                    if keys.pair_class[lane, c] < 0:
                        n_pad += 1
            for i in range(n):
                sigma, h = kernels.node(rule, offset, x0, reduction.grid_step, i)
                sum_log_phi = kernels.area_terms(kernels.EXACT, reduction, k, sigma, keys, terms, work)
                total += keys.pair_class.size
                padding += n_pad
                if math.exp(sum_log_phi - min(math.exp(sigma + log_c), kernels.T_CAP)) < g_stop(reduction.grid_step):
                    break
    return total, padding


@njit(cache=True, error_model="numpy")
def _pair_arithmetic(alpha, beta, reps):
    """The kernel's own per-pair passes (pair pass, column logs, derivative pass) over one
    query's worth of pairs small enough to stay in the first-level cache (``alpha``, ``beta``:
    (4 lanes, n_cols)), ``reps`` times: the ceiling of that arithmetic on one core, without the
    per-node, per-area and per-query work around it."""
    lanes, n_cols = alpha.shape
    pair_m = np.ones((lanes, n_cols))
    stored = np.zeros((lanes, kernels.N_STORED, n_cols))
    columns = np.zeros((kernels.N_COLUMN, n_cols))
    coef = np.ones((3, n_cols))
    acc = np.zeros((lanes, 2, n_cols))
    for r in range(reps):
        t = 0.5 + 1e-9 * r
        for c in range(n_cols):
            columns[kernels.COL_SHIFT, c] = 0.0
            columns[kernels.COL_LOG_PSI, c] = 1.0
            columns[kernels.COL_M, c] = 0.0
            columns[kernels.COL_V, c] = 0.0
            columns[kernels.COL_Q, c] = 0.0
        for lane in range(lanes):
            kernels.exact_lane_linear(t, 0.5, alpha, beta, pair_m, lane, stored, columns)
        kernels.column_logs(columns)
        for lane in range(lanes):
            kernels.lane_gradients(kernels.EXACT_RUNTIME, 0.5, lane, stored, coef, acc)
    return acc.sum() + columns.sum()


def bench_gradient_vs_references(row, quick, rng):
    """The exact gradient against brute force and against the same closed form in NumPy."""
    for P in ((8, 10, 12) if quick else (8, 10, 12, 14, 16)):
        m = _two_cluster(P)
        A, B = rng.normal(size=(P, m.n_features)), rng.normal(size=(P, P))
        t_grad = best_time(lambda: population_grad(m, A, B), repeat=20)
        t_bf = best_time(lambda: references.brute_force_loss(m, A, B), repeat=1, warm=False)
        t_np = best_time(lambda: references.numpy_loss_and_grad(m, A, B), repeat=3, warm=False)
        row(f"P={P} exact gradient (2 clusters, per position)", t_grad * 1e3, "ms")
        row(f"P={P} brute-force loss / exact gradient", t_bf / t_grad, "x", f"brute force {t_bf * 1e3:.0f} ms")
        row(f"P={P} NumPy closed form / Numba kernels (gradient)", t_np / t_grad, "x", f"NumPy {t_np * 1e3:.1f} ms")


def bench_flow_vs_monte_carlo(row, quick, progress):
    """CPU of ``solve`` against SGD training that follows the same trajectory within 0.05."""
    P, t_end = (16, 100.0) if quick else (64, 1000.0)
    model = global_local(P, n_local=2 if quick else 4, local_size=4, mask_ratio=0.5)
    solve(model, t_end)
    c0 = time.process_time()
    sol = solve(model, t_end)
    cpu_solve = time.process_time() - c0
    train_transformer(model, steps=2, lr=1.0, batch_size=256, progress=False)          # warm-up
    for lr in (2.0, 1.0, 0.5, 0.25, 0.1, 0.05):
        steps = int(round(t_end / lr))
        c0 = time.process_time()
        run = train_transformer(model, steps=steps, lr=lr, batch_size=256, record_every=max(1, steps // 50),
                                progress=False)
        cpu = time.process_time() - c0
        err = compare(sol, run)["target_attention"].max_abs_error
        if err <= 0.05:
            row(f"P={P} to t={t_end:g}: Monte Carlo CPU / solve() CPU", cpu / cpu_solve, "x",
                f"MC lr={lr} err {err:.3f}: {cpu:.2f} s vs {cpu_solve:.3f} s")
            return
        if progress:
            progress(f"  (MC lr={lr}: target attention off by {err:.3f}, trying a smaller step)")


def bench_solve_over_P(row, quick):
    """Exact and mean-field solves at a fixed number of classes, P from 64 to 10^6."""
    for P in ((64, 10**3, 10**4) if quick else (64, 10**3, 10**4, 10**5, 10**6)):
        model = global_local(P, n_local=4, local_size=4 if P < 10**4 else 1024, mask_ratio=0.5)
        for method in ("exact", "meanfield"):
            t = best_time(lambda: solve(model, 100.0, method=method), repeat=3)
            row(f"P={P} global_local ({model.n_classes} classes) {method} solve to t=100", t, "s")
    paper = global_local(64, n_local=4, local_size=4, mask_ratio=0.5)
    row("paper preset P=64 exact solve to t=2000 (warm)", best_time(lambda: solve(paper, 2000.0), repeat=5), "s")


def bench_classes(row, quick, rng):
    """Cost of one exact gradient against the number of classes (generic areas)."""
    for S in ((16, 32, 64) if quick else (16, 32, 64, 128, 256)):
        m = DataModel(n_patches=S, mask_ratio=0.5, clusters=[Cluster(rng.permutation(np.arange(S) % 4))])
        A, B = rng.normal(size=(S, 4)), rng.normal(size=(S, S))
        row(f"S=P={S} generic areas: exact gradient", best_time(lambda: population_grad(m, A, B)) * 1e3, "ms")


def bench_throughput(row, quick):
    """The exact gradient kernel's rate on the 14 x 14 Voronoi model late in a flow: (atom, key)
    pair evaluations per second (padding not counted) and GFLOP/s, against the same arithmetic
    over data in the first-level cache on one core."""
    from ..theory.population import loss_and_gradient
    from ..theory.reduction import signature_reduction
    model = voronoi(grid=(14, 14), n_clusters=16, n_regions=8, seed=0)
    reduction = signature_reduction(model)
    state = trained_like_state(reduction)
    total, padding = count_pair_evaluations(reduction, state.A_classes, state.B_classes, state.B_self)
    t = best_time(lambda: loss_and_gradient(state), repeat=2 if quick else 3)
    threads = threads_for(reduction)
    rate = (total - padding) / t
    rng = np.random.default_rng(0)
    beta = np.exp(0.3 * rng.standard_normal((4, 128)))
    alpha = beta * np.exp(np.where(np.arange(128) % 2 == 0, -2.0, 3.0))
    reps = 2000 if quick else 20000
    t_peak = best_time(lambda: _pair_arithmetic(alpha, beta, reps), repeat=3)
    peak = alpha.size * reps / t_peak
    row("exact gradient 14x14: (atom, key) pairs per second", rate, "1/s",
        f"~{rate * FLOPS_PER_PAIR / 1e9:.2f} GFLOP/s on {threads} thread(s); {padding / total:.0%} padding not counted")
    row("the same arithmetic from cache, one core", peak, "1/s", f"~{peak * FLOPS_PER_PAIR / 1e9:.2f} GFLOP/s")
    row("kernel rate / (one-core ceiling x threads)", rate / (peak * threads), "x",
        "the rest: memory traffic of the pair rows, per-area and per-node work, thread balance")


def trained_like_state(reduction, seed: int = 0) -> State:
    """A state like those late in a flow (own-area FP correlations grown, the others negative),
    for timings that should not be those of Q = 0 (where the Gauss-Laguerre rule makes a
    gradient ~20x cheaper)."""
    rng = np.random.default_rng(seed)
    S, F = reduction.n_classes, reduction.n_features
    A = -0.5 + 0.2 * rng.standard_normal((S, F))
    for k in range(reduction.n_clusters):
        A[np.arange(S), reduction.key_feature[k]] = 4.0 + 0.2 * rng.standard_normal(S)
    return State(reduction, A, 0.3 * rng.standard_normal((S, S)), 0.3 * rng.standard_normal(S))


def bench_dask(row, quick):
    """Strong scaling of one exact gradient over a local Dask cluster of 1 and 2 workers (one
    thread each), the clusters of a Voronoi model sharded among them; and the round trip of an
    evaluation with no clusters to sum (the communication)."""
    from ..theory.distributed import ShardedPopulation
    from ..theory.population import loss_and_gradient
    from ..theory.reduction import signature_reduction
    from .cluster import local_client
    layouts = 16 if quick else 64
    model = voronoi(grid=(14, 14), n_clusters=layouts, n_regions=8, seed=0)
    reduction = signature_reduction(model)
    state = trained_like_state(reduction)
    local = best_time(lambda: loss_and_gradient(state), repeat=2)
    row(f"{layouts} layouts 14x14 (S={reduction.n_classes}): exact gradient, here", local, "s",
        f"{state.flat().size} state numbers")
    for workers in (1, 2):
        with local_client(workers) as client:
            sharded = ShardedPopulation(client, reduction, "exact")
            t = best_time(lambda: sharded.loss_and_gradient(state), repeat=2)
            sharded.shards = [np.zeros(0, np.int64) for _ in sharded.shards]   # no clusters: the
            sharded.features = [np.zeros(0, np.int64) for _ in sharded.shards]  # round trip of B alone
            comm = best_time(lambda: sharded.loss_and_gradient(state), repeat=3)
        row(f"{layouts} layouts: exact gradient on {workers} Dask worker(s)", t, "s",
            f"round trip with no work {comm * 1e3:.0f} ms; per cluster {t * workers / layouts * 1e3:.0f} ms-worker")


def bench_vit_scale(row, quick):
    """Irregular layouts at ViT scale: gradients, whole solves with the defaults, observables."""
    from ..flow.phase_times import phases, summarize
    from ..theory.population import loss_and_gradient
    from ..theory.reduction import signature_reduction
    from ..theory.state import State as _State
    model = voronoi(grid=(14, 14), n_clusters=16, n_regions=8, seed=0)
    reduction = signature_reduction(model)
    zero, late = _State.zeros(reduction), trained_like_state(reduction)
    note = f"S={reduction.n_classes}, F={reduction.n_features}, {zero.flat().size} state numbers"
    row("14x14, 16 Voronoi layouts: exact gradient at Q = 0", best_time(lambda: loss_and_gradient(zero)), "s", note)
    row("14x14, 16 Voronoi layouts: exact gradient, late-flow state", best_time(lambda: loss_and_gradient(late),
                                                                           repeat=2), "s", "fine quadrature (the default)")
    late_fast = late.with_quadrature("fast")
    row("14x14: exact gradient, late-flow state, fast quadrature", best_time(lambda: loss_and_gradient(late_fast),
                                                                             repeat=3), "s", "the rule a large solve uses")
    row("14x14: mean-field gradient, late-flow state", best_time(lambda: loss_and_gradient(late, "meanfield")), "s")
    if quick:
        return
    for method in ("meanfield", "exact"):
        start = time.perf_counter()
        sol = solve(model, 2e4, method=method, progress=False)
        took = time.perf_counter() - start
        start = time.perf_counter()
        summary = summarize(phases(sol))
        observed = time.perf_counter() - start
        row(f"14x14: {method} solve to t=2e4, defaults", took, "s",
            f"{sol.integrator}, {sol.nfev} gradients, status {sol.status}, target/ceiling min "
            f"{summary.min_target_fraction:.3f} mean {summary.mean_target_fraction:.3f}")
        row(f"14x14: phases of that solve (attention at {sol.t.size} times)", observed, "s",
            f"{observed / took:.0%} of the solve")
    big = voronoi(grid=(32, 32), n_clusters=16, n_regions=8, seed=0)
    big_reduction = signature_reduction(big)
    big_late = trained_like_state(big_reduction)
    row("32x32, 16 Voronoi layouts: exact gradient, late-flow state",
        best_time(lambda: loss_and_gradient(big_late), repeat=1), "s", f"S={big_reduction.n_classes}, fine quadrature")
    big_fast = big_late.with_quadrature("fast")
    row("32x32: exact gradient, late-flow state, fast quadrature", best_time(lambda: loss_and_gradient(big_fast),
                                                                             repeat=1), "s")
    start = time.perf_counter()
    sol = solve(big, 1e5, method="meanfield", progress=False)
    took = time.perf_counter() - start
    row("32x32: meanfield solve to t=1e5, defaults", took, "s",
        f"{sol.integrator}, {sol.nfev} gradients, status {sol.status}; target/ceiling min "
        f"{sol.min_target_fraction():.3f} at the end (exact attention)")


def bench_shared_machine(row, quick):
    """A small and a large solve alone and beside one busy process: threads chosen by work
    against every thread always (the process's usable CPUs)."""
    import subprocess
    import sys

    import numba

    from ..theory import parallel
    small = global_local(64)
    large = voronoi(grid=(8, 8), n_clusters=6, n_regions=5, seed=3, amplitudes="unit")
    cases = (("small (paper preset)", small, 2000.0), ("large (8x8, 6 layouts)", large, 200.0 if quick else 2000.0))
    busy = [sys.executable, "-c", "while True: pass"]
    default_limit = parallel.PARALLEL_WORK
    for beside in (False, True):
        hog = subprocess.Popen(busy) if beside else None
        try:
            for name, model, t_end in cases:
                for label, limit in (("threads by work", default_limit), ("all threads", 0)):
                    parallel.PARALLEL_WORK = limit
                    took = best_time(lambda: solve(model, t_end, progress=False), repeat=3, budget=20.0)
                    row(f"{name} solve {'beside a busy process' if beside else 'alone'}, {label}", took, "s",
                        f"up to {numba.config.NUMBA_NUM_THREADS} threads")
        finally:
            parallel.PARALLEL_WORK = default_limit
            if hog is not None:
                hog.kill()
                hog.wait()


# what ``bench_memory``'s child process runs: the P = 1024 global/local preset through solve,
# phases, verify and a save/load round trip, printing its peak resident memory after each
_MEMORY_SCRIPT = """
import os, tempfile
import gradflow
def peak():   # VmHWM: this process image's peak (ru_maxrss would carry the parent's over from fork)
    with open("/proc/self/status") as status:
        print("peak MB", next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024.0,
              flush=True)
peak()
model = gradflow.presets.global_local(P=1024, n_local=4, local_size=4)
sol = gradflow.solve(model, 1e4, progress=False)
peak()
gradflow.phases(sol).summary()
peak()
gradflow.verify(model)
peak()
with tempfile.TemporaryDirectory() as folder:
    sol.save(os.path.join(folder, "flow.nc"))
    gradflow.phases(gradflow.Solution.load(os.path.join(folder, "flow.nc"))).summary()
peak()
"""


def bench_memory(row, quick):
    """Peak resident memory of the P = 1024 global/local preset through solve, phases, verify and
    save/load, in a fresh process (nothing of the other benchmarks in it; Numba's cache warm, as
    the other rows have left it); Linux only."""
    import subprocess
    import sys
    if not sys.platform.startswith("linux"):
        return
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the memory benchmark's process failed:\n{out.stderr}")
    imported, solved, phased, verified, saved = (float(line.split()[-1]) for line in out.stdout.splitlines()
                                                 if line.startswith("peak MB"))
    row("P=1024 global/local: peak memory of solve, phases, verify, save/load", saved, "MB",
        f"after import {imported:.0f}, solve {solved:.0f}, phases {phased:.0f}, verify {verified:.0f} MB")


def bench_training(row, quick):
    """SGD steps per second of the Numba trainer and of the PyTorch bottom rung (the same
    transformer) on the paper preset, one thread each as the ladder's workers run them."""
    import importlib.util

    from .ladder import steps_per_second
    which = ("numba", "torch") if importlib.util.find_spec("torch") is not None else ("numba",)
    rates = steps_per_second(global_local(64), steps=20 if quick else 100, which=which)
    for name, rate in rates.items():
        row(f"training P=64, batch 256, one thread: {name}", rate, "steps/s",
            "float64, no records" + ("" if "torch" in rates else "; PyTorch not installed"))


def run(quick: bool = False, progress=print) -> list:
    """Run the benchmarks; returns rows of dicts (name, value, unit, note)."""
    rows = []

    def row(name, value, unit, note=""):
        rows.append({"name": name, "value": float(value), "unit": unit, "note": note})
        if progress:
            progress(f"{name:<58} {value:>12.4g} {unit:<10} {note}")

    rng = np.random.default_rng(0)
    bench_gradient_vs_references(row, quick, rng)
    bench_flow_vs_monte_carlo(row, quick, progress)
    bench_solve_over_P(row, quick)
    bench_classes(row, quick, rng)
    bench_throughput(row, quick)
    bench_vit_scale(row, quick)
    bench_memory(row, quick)
    bench_shared_machine(row, quick)
    bench_training(row, quick)
    bench_dask(row, quick)
    return rows


def main(quick: bool = False, json_path=None) -> list:
    if json_path is not None:
        check_output_path(json_path, "--json")
    rows = run(quick)
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps({"quick": quick, "rows": rows}, indent=1))
    return rows


numba_cache.refresh(globals(), (Path(__file__), *kernels.CACHE_SOURCES))    # its kernels compile in theory's
