"""
The paper preset and its phases
===============================

The paper's setting (Huang, Wen, Chi and Liang 2024): an image of :math:`P` patches holds one
dominant *global* area and a few small *local* areas; every patch is masked with probability
:math:`\\gamma`, and a one-layer softmax transformer learns to reconstruct the masked patches
from the visible ones. This tutorial solves the exact gradient flow of that transformer from
:math:`Q = 0`, and reads off what the paper predicts: the loss falls to the area oracle, each
masked patch ends up attending to the unmasked patches of its own area, and a local patch gets
there in phases (T1: it decouples from the dominant global area; T2, T3: its own area's
attention grows to half, then 95% of its ceiling). :doc:`/model` defines every quantity.
"""

# %%
# The model
# ---------
# ``global_local`` puts ``n_local`` compact local areas of ``local_size`` patches on the most
# square grid of ``P`` patches; the rest is the global area (area 0). Positions with the same
# areas in every cluster stay equal along the flow, so the flow runs on a handful of *signature
# classes*, whatever ``P`` is.
import os

import matplotlib.pyplot as plt
import numpy as np

import gradflow

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")

model = gradflow.presets.global_local(P=64, n_local=4, local_size=4, mask_ratio=0.5)
print(model)
print("area sizes:", model.clusters[0].area_sizes(), "| ceiling of a local patch:",
      model.ceiling()[0, model.clusters[0].areas.ravel() == 1][0])

fig, ax = plt.subplots(figsize=(3.2, 3.2))
ax.imshow(np.asarray(model.clusters[0].areas).reshape(model.grid), cmap="tab10", vmin=0, vmax=9)
ax.set_title("areas of the 8 x 8 grid (0: global)")
ax.set_xticks([]), ax.set_yticks([])
for (r, c), j in np.ndenumerate(np.asarray(model.clusters[0].areas).reshape(model.grid)):
    ax.text(c, r, j, ha="center", va="center", fontsize=7, color="w")

# %%
# Solving the flow
# ----------------
# ``solve`` integrates :math:`dA/dt = -\partial L/\partial A`, :math:`dB/dt = -\partial L/\partial B`
# with the loss taken exactly over all :math:`2^{64}` masks. It takes a fraction of a second once
# the Numba kernels are compiled (the first call in a fresh environment compiles them).
sol = gradflow.solve(model, t_max=2000.0)
print(sol)
oracle = gradflow.area_oracle_loss(model)
print(f"loss {sol.loss[0]:.4f} -> {sol.loss[-1]:.4f}; area oracle {oracle:.4f}")

fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogx(sol.t[1:], sol.loss[1:], label="exact loss of the flow")
ax.axhline(oracle, color="k", ls=":", label="area oracle")
ax.set_xlabel("gradient-flow time t")
ax.set_ylabel("population loss")
ax.legend()
fig.tight_layout()

# %%
# Phases
# ------
# ``phases`` reads T1, T2, T3 for every (cluster, masked query) pair from the expected attention;
# ``summarize`` gives the medians over local and global queries that every report uses.
ph = gradflow.phases(sol)
print(gradflow.summarize(ph))

# %%
# A local query (a patch of area 1) and a global one, with their phase times. The *target* is
# the mass on the unmasked patches of the query's own area, drawn as a fraction of its ceiling
# :math:`1 - \gamma^{C-1}`; the *distractor* is the mass on the largest other area (for a local
# query: the global area).
areas = np.asarray(model.clusters[0].areas).ravel()
local_p, global_p = int(np.flatnonzero(areas == 1)[0]), int(np.flatnonzero(areas == 0)[0])

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for ax, p, name in zip(axes, (local_p, global_p), ("local", "global")):
    ax.semilogx(ph.t[1:], ph.target[1:, 0, p] / ph.ceiling[0, p], label="target / ceiling")
    ax.semilogx(ph.t[1:], ph.distractor[1:, 0, p], label="distractor mass")
    for tn, color in (("T1", "C2"), ("T2", "C3"), ("T3", "C4")):
        value = getattr(ph, tn)[0, p]
        if np.isfinite(value):
            ax.axvline(value, color=color, ls="--", lw=1)
            ax.text(value, 1.02, tn, color=color, ha="center", fontsize=8)
    ax.set_title(f"{name} query (patch {p})", pad=14)
    ax.set_xlabel("t")
axes[0].legend(loc="center left")
fig.tight_layout()

# %%
# Where a masked patch attends
# ----------------------------
# ``attention_map(i)`` is the expected attention (averaged over the other masks) of every
# masked query on every key at output ``i``. At :math:`t = 0` it is uniform; at T3 the local
# query attends to its own area.
moments = {"t = 0": 0.0, "T1": ph.T1[0, local_p], "T2": ph.T2[0, local_p], "T3": ph.T3[0, local_p]}
index = {label: int(np.argmin(np.abs(sol.t - t))) for label, t in moments.items()}     # nearest outputs
maps = {label: sol.attention_map(i)[local_p].reshape(model.grid) for label, i in index.items()}
vmax = max(m.max() for m in maps.values())
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
for ax, (label, att) in zip(axes, maps.items()):
    im = ax.imshow(att, cmap="viridis", vmin=0, vmax=vmax)
    ax.set_title(f"{label}: t = {sol.t[index[label]]:.3g}", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.85, label="attention")
fig.suptitle(f"attention of masked patch {local_p} (area 1) on every key")

# %%
# The paper's claims, checked
# ---------------------------
# ``verify`` integrates until the flow has converged and checks global convergence, area-wide
# attention, the phase order, a monotone loss and attention diversity, each against a stated
# threshold (docs/model.md section 7).
report = gradflow.verify(model)            # integrates until the flow has converged
print(report.table())

# %%
# Phase times versus P
# --------------------
# The decoupling time T1 barely moves with the number of patches while the growth time T2 rises
# towards linear in P (the README's table goes to P = 65536).
Ps = [36, 64, 144, 256] if QUICK else [36, 64, 144, 256, 576, 1024, 2304, 4096]
scaling = gradflow.phase_scaling("global_local", Ps, n_local=4, local_size=4, mask_ratio=0.5)
print(scaling.table())
