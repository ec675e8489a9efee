"""
Comparing with Monte-Carlo transformers
=======================================

The flow is the expected behaviour of a real transformer. This tutorial trains the
transformer of docs/model.md section 2 by SGD on sampled images (a minibatch of masked images
per step, the full :math:`d \\times d` matrix :math:`Q` updated along the minibatch gradient),
reads off its attention correlations, and compares it with the flow at the matching time
:math:`t = \\eta \\times \\text{steps}`. ``compare`` reports the error of the seed mean and
whether the flow lies inside the band of the seeds.
"""

# %%
# The flow and the runs
# ---------------------
# In quick mode (``GRADFLOW_DOCS_QUICK=1``) a smaller model (P = 36, two local areas) and two
# short seeds; otherwise the paper preset at P = 64 with three seeds of 1000 steps.
import os

import matplotlib.pyplot as plt
import numpy as np

import gradflow

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")
if QUICK:
    model = gradflow.presets.global_local(P=36, n_local=2, local_size=4, mask_ratio=0.5)
    steps, lr, seeds = 250, 2.0, 2
else:
    model = gradflow.presets.global_local(P=64, n_local=4, local_size=4, mask_ratio=0.5)
    steps, lr, seeds = 1000, 1.0, 3

sol = gradflow.solve(model, t_max=steps * lr)
runs = [gradflow.train_transformer(model, steps=steps, lr=lr, batch_size=256, seed=s, record_every=steps // 25)
        for s in range(seeds)]
for run in runs:
    print(f"seed {run.seed}: {run.steps} SGD steps of lr {run.lr} (t = {run.t[-1]:g}), width d = {run.d}, "
          f"{run.wall_time:.1f} s")

# %%
# ``compare`` evaluates the flow at the runs' record times and sets the mean over seeds against
# it: the target attention, the target feature-position correlation and the loss.
cmp = gradflow.compare(sol, runs)
print(cmp.table())
print("MC mean within 0.05 of the flow everywhere:", cmp.ok(tol=0.05))

# %%
# The target attention of a local and a global query: the flow (line) and each seed (dots).
areas = np.asarray(model.clusters[0].areas).ravel()
queries = {"local": int(np.flatnonzero(areas == 1)[0]), "global": int(np.flatnonzero(areas == 0)[0])}
target = cmp["target_attention"]                     # flow, mc_mean, mc_std: (T, K, P)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, (name, p) in zip(axes, queries.items()):
    ax.plot(sol.t, sol.target_attention[:, 0, p], color="C0", label="flow")
    for run in runs:
        ax.plot(run.t, run.target_attention[:, 0, p], ".", color="C1", ms=4,
                label="SGD seeds" if run is runs[0] else None)
    ax.set_title(f"{name} query (patch {p}): own-area attention")
    ax.set_xlabel("t = lr x steps")
axes[0].legend()
fig.tight_layout()

# %%
# The difference between the seed mean and the flow, with the seeds' spread (two standard
# deviations): the runs scatter around the flow, and their mean follows it.
fig, ax = plt.subplots(figsize=(5.5, 3.2))
for (name, p), color in zip(queries.items(), ("C0", "C3")):
    diff = target.mc_mean[:, 0, p] - target.flow[:, 0, p]
    band = 2 * target.mc_std[:, 0, p]
    ax.plot(cmp.t, diff, color=color, label=f"{name} query")
    ax.fill_between(cmp.t, diff - band, diff + band, color=color, alpha=0.2)
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("t")
ax.set_ylabel("MC mean - flow")
ax.legend()
fig.tight_layout()

# %%
# The same runs as the command line makes them: ``gradflow train --steps N --lr X --seeds S
# --out R.nc`` writes one NetCDF file per seed, and ``gradflow compare F.nc R_seed0.nc ...``
# prints this table (exit status 1 when the target attention is off by more than ``--tol``).
# ``TrainRun.save`` and ``TrainRun.load`` are the files' Python side.
