"""Speed of the Monte-Carlo trainer (issue 3) and its cost against solve() for one trajectory.

Run: ``python benchmarks/montecarlo.py``.
"""
from __future__ import annotations

import time

import gradflow
from gradflow.presets import global_local


def main():
    model = global_local(64, n_local=4, local_size=4, mask_ratio=0.5)
    gradflow.train_transformer(model, steps=5, lr=0.01, batch_size=256, progress=False)   # JIT
    steps = 1000
    t0 = time.perf_counter()
    gradflow.train_transformer(model, steps=steps, lr=0.01, batch_size=256, record_every=steps,
                               progress=False)
    wall = time.perf_counter() - t0
    print(f"SGD global_local(P=64), d=F+P={model.n_features + 64}, batch 256: {steps / wall:.0f} steps/s")

    t_max = 30.0
    c0 = time.process_time()
    sol = gradflow.solve(model, t_max)
    cpu_solve = time.process_time() - c0
    print(f"solve() to t={t_max:g}: {cpu_solve:.3f} s CPU")
    moved = abs(sol.area_attention[-1] - sol.area_attention[0]).max()
    print(f"(the flow's area attention moves by up to {moved:.3f} over this span)")
    for lr in (2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01):
        c0 = time.process_time()
        run = gradflow.train_transformer(model, steps=int(round(t_max / lr)), lr=lr, batch_size=256,
                                         record_every=max(1, int(round(1 / lr))), progress=False)
        cpu = time.process_time() - c0
        err = gradflow.compare(sol, run)["area_attention"].max_abs_error
        print(f"MC lr={lr:<5g} batch 256, one seed, to t={t_max:g}: max |area attention error| "
              f"{err:.4f}, {cpu:.2f} s CPU ({cpu / cpu_solve:.0f}x solve)")
        if err <= 0.05:
            print(f"-> cheapest MC run following the flow within 0.05: lr={lr}, {cpu:.2f} s CPU "
                  f"versus {cpu_solve:.3f} s for solve()")
            break


if __name__ == "__main__":
    main()
