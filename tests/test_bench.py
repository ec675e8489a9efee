"""The benchmarks' references and their own arithmetic (speed itself is never asserted)."""
import json
import re
import sys

import numpy as np
import pytest
from conftest import random_state
from oracle import brute_force_loss

from gradflow import Cluster, DataModel, population_grad, population_loss
from gradflow.analysis import bench, references
from gradflow.theory.reduction import position_reduction
from gradflow.theory.state import State


def test_numpy_closed_form_agrees_with_kernels(two_cluster_model):
    A, B = random_state(two_cluster_model, np.random.default_rng(11), 1.5)
    loss, dA, dB = references.numpy_loss_and_grad(two_cluster_model, A, B)
    gA, gB = population_grad(two_cluster_model, A, B)
    assert abs(loss / population_loss(two_cluster_model, A, B) - 1) < 1e-13
    np.testing.assert_allclose(dA, gA, atol=1e-14)
    np.testing.assert_allclose(dB, gB, atol=1e-14)


def test_vectorised_brute_force_agrees_with_oracle(two_cluster_model):
    A, B = random_state(two_cluster_model, np.random.default_rng(12))
    assert abs(references.brute_force_loss(two_cluster_model, A, B)
               / brute_force_loss(two_cluster_model, A, B) - 1) < 1e-12


def test_pair_count_matches_an_independent_count():
    """The throughput row divides by the (atom, key) pair evaluations of one gradient: count them
    again over the nodes of each query's rule (``quadrature.grid``: the count, not the rule, is
    under test), stopping where G(t) = e^{-tc} prod_keys phi, computed here, falls below G_STOP,
    with one pair per key (point-mass amplitudes)."""
    from gradflow.theory.quadrature import G_STOP, GRID_STEP, grid, node
    m = DataModel(n_patches=9, mask_ratio=0.3, clusters=[Cluster(np.arange(9) % 3), Cluster(np.arange(9) // 5)])
    rng = np.random.default_rng(3)
    A, B = random_state(m, rng, 2.0)
    st = State.from_positions(m, A, B)
    g = m.mask_ratio
    expected = 0
    for k, cl in enumerate(m.clusters):
        fidx = np.array([m.feature_index(k, j) for j in cl.areas])
        for p in range(9):
            keys = np.arange(9) != p
            la, lb = B[p, keys] + A[p, fidx[keys]], B[p, keys]
            lo = np.logaddexp.reduce(np.r_[B[p, p], np.minimum(la, lb)])
            hi = np.logaddexp.reduce(np.r_[B[p, p], np.maximum(la, lb)])
            rule, offset, x0, n = grid(lo, hi, GRID_STEP)
            for i in range(n):
                t = np.exp(node(rule, offset, x0, GRID_STEP, i)[0])
                expected += keys.sum()
                G = np.exp(-t * np.exp(B[p, p])) * np.prod(g * np.exp(-t * np.exp(lb)) + (1 - g) * np.exp(-t * np.exp(la)))
                if G < G_STOP:
                    break
    total, padding = bench.count_pair_evaluations(position_reduction(m), st.A_classes, st.B_classes, st.B_self)
    from gradflow.theory.kernels import LANE_PADDING
    assert total - padding == expected and 0 <= padding <= LANE_PADDING * expected


@pytest.mark.slow
def test_bench_quick_report_is_consistent(tmp_path):
    """The JSON holds exactly the rows printed, and every ratio row equals the ratio of the
    times it reports."""
    out = tmp_path / "bench.json"
    rows = bench.main(quick=True, json_path=out)
    assert json.loads(out.read_text())["rows"] == rows
    by_name = {r["name"]: r for r in rows}
    for P in (8, 10, 12):
        grad_ms = by_name[f"P={P} exact gradient (2 clusters, per position)"]["value"]
        ratio = by_name[f"P={P} brute-force loss / exact gradient"]
        brute_ms = float(re.search(r"brute force (\d+) ms", ratio["note"]).group(1))
        assert ratio["value"] * grad_ms == pytest.approx(brute_ms, abs=0.5 + 1e-3 * brute_ms)
    if sys.platform.startswith("linux"):     # a peak: no stage before the end was above it
        memory = by_name["P=1024 global/local: peak memory of solve, phases, verify, save/load"]
        stages = [float(x) for x in re.findall(r"(\d+)(?:,| MB)", memory["note"])]
        assert len(stages) == 4 and max(stages) <= memory["value"] + 0.5 and min(stages) > 0
    mc = next(r for r in rows if "Monte Carlo CPU / solve() CPU" in r["name"])
    err = float(re.search(r"err (\d\.\d+)", mc["note"]).group(1))
    assert err <= 0.05


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak is read from Linux's /proc")
def test_bench_memory_measures_its_own_process_alone():
    """The memory row is the peak of the benchmark's own process, not of the one that started it
    (which ru_maxrss would report: it carries the parent's peak over from fork)."""
    ballast = np.ones(80_000_000)            # 640 MB, touched, in this process
    rows = []
    bench.bench_memory(lambda *r: rows.append(r), quick=True)
    ((name, value, unit, note),) = rows
    assert unit == "MB" and 100.0 < value < 600.0 < ballast.nbytes / 2**20
