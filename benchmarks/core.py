"""Speed of the core (issue 2): warm solve, exact gradient versus brute force, import time.

Run: ``python benchmarks/core.py``. Prints one line per measurement.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

import gradflow
from references import brute_force_loss
from gradflow import Amplitude, Cluster, DataModel
from gradflow.presets import global_local


def timeit(fn, repeat=5):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    model = global_local(64, n_local=4, local_size=4, mask_ratio=0.5)
    gradflow.solve(model, 2000.0)                      # JIT / cache load
    t_solve = timeit(lambda: gradflow.solve(model, 2000.0), repeat=3)
    print(f"solve global_local(P=64, n_local=4, local_size=4, gamma=0.5) to t=2000, warm: {t_solve:.3f} s")

    rng = np.random.default_rng(0)
    for P in (8, 10, 12, 14, 16):
        model_p = DataModel(n_patches=P, mask_ratio=0.5, clusters=[
            Cluster(np.arange(P) // 3, amplitudes={1: Amplitude([0.5, 1.5])}),
            Cluster(np.arange(P) % 3)])
        A, B = rng.normal(size=(P, model_p.n_features)), rng.normal(size=(P, P))
        gradflow.population_grad(model_p, A, B)
        t_grad = timeit(lambda: gradflow.population_grad(model_p, A, B), repeat=20)
        t_bf = timeit(lambda: brute_force_loss(model_p, A, B), repeat=1)
        err = abs(gradflow.population_loss(model_p, A, B) / brute_force_loss(model_p, A, B) - 1)
        print(f"P={P:2d}, 2 clusters, per position: exact gradient {t_grad * 1e3:.2f} ms, "
              f"vectorised brute-force loss {t_bf * 1e3:.0f} ms, ratio {t_bf / t_grad:.0f}x "
              f"(loss relative difference {err:.1e})")

    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import gradflow"],
                         capture_output=True, text=True)
    last = [ln for ln in out.stderr.splitlines() if ln.rstrip().endswith("gradflow")][-1]
    us = int(last.split("|")[1])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradflow"], check=True)
    print(f"import gradflow (numba cache warm): {us / 1e6:.3f} s cumulative import, "
          f"{time.perf_counter() - t0:.3f} s for a whole fresh interpreter")


if __name__ == "__main__":
    main()
