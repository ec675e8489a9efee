"""
Sweeps and phase diagrams
=========================

How do the phases depend on the data? ``gradflow.sweep`` solves a grid of models as Dask tasks,
one task per point, and gathers every point's summary (final and oracle loss, phase times,
target fractions, diversity) into one ``xarray.Dataset``; ``phase_diagram`` is the paper
preset's own diagram over the global-area share and the mask ratio.
"""

# %%
# A sweep
# -------
# The grid is a mapping of preset options to values (their Cartesian product); ``fixed`` holds
# the options every point shares. With ``out`` every finished point is kept on disk and a rerun
# skips it; a point that fails is recorded with its error instead of stopping the sweep.
#
# ``sweep`` starts a ``LocalCluster`` of worker processes when no ``client`` is given, which a
# script must do inside ``if __name__ == "__main__":`` (its workers re-import the script); the
# command line (``gradflow sweep --grid GRID.toml --out DIR``) does that for you. Here the tasks
# run on a worker thread of this process.
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from dask.distributed import Client, LocalCluster

import gradflow

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")
if QUICK:
    grid = {"mask_ratio": [0.2, 0.35, 0.5, 0.65, 0.8], "n_local": [2, 4]}
    fixed = {"P": 36, "local_size": 4}
else:
    grid = {"mask_ratio": list(np.round(np.arange(0.1, 0.91, 0.1), 2)), "n_local": [1, 2, 4, 8]}
    fixed = {"P": 64, "local_size": 4}
out = Path(tempfile.mkdtemp()) / "sweep"

with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
        Client(cluster) as client:
    ds = gradflow.sweep("global_local", grid, t_max=1e4, fixed=fixed, out=out, client=client, progress=False)
    again = gradflow.sweep("global_local", grid, t_max=1e4, fixed=fixed, out=out, client=client, progress=False)
print(ds)
print(f"first run: {ds.attrs['computed']} points solved; rerun: {again.attrs['computed']} solved, "
      f"{again.attrs['points']} read from {out}")

# %%
# Every variable has one dimension per grid parameter. The growth time T2 (median over local
# queries) is longest at extreme mask ratios. The loss at t = 10^4 lies above the area oracle's,
# most at low mask ratios, where the oracle's loss is small and what is left (softmax attention
# leaking onto other areas) decays slowly.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for n in ds["n_local"].values:
    sel = ds.sel(n_local=n)
    axes[0].plot(sel["mask_ratio"], sel["T2"], "o-", label=f"{n} local areas")
    axes[1].plot(sel["mask_ratio"], sel["final_loss"] / sel["oracle_loss"], "o-")
axes[0].set_ylabel("T2 (local queries)")
axes[1].set_ylabel("final loss / area-oracle loss")
for ax in axes:
    ax.set_xlabel("mask ratio")
axes[0].legend()
fig.tight_layout()

# %%
# The same sweep from a file: ``gradflow sweep --example`` prints this commented grid file,
# which ``gradflow sweep --grid GRID.toml --out DIR`` runs (``--scheduler ADDRESS`` uses a
# running Dask scheduler instead of a local cluster).
from gradflow.analysis.sweeps import EXAMPLE  # noqa: E402

print(EXAMPLE)

# %%
# The phase diagram
# -----------------
# ``phase_diagram(P, n_locals, gammas)`` solves the preset over local-area counts (so over the
# global area's share of the patches) and mask ratios, and says where the two phases are
# separated: every local query decouples from the global area (T1) before its own area's
# attention reaches half its ceiling (T2).
P = 36 if QUICK else 64
n_locals = [1, 2, 4] if QUICK else [1, 2, 4, 8, 12]
gammas = [0.2, 0.5, 0.8] if QUICK else list(np.round(np.arange(0.1, 0.91, 0.1), 2))
diagram = gradflow.analysis.phase_diagram(P, n_locals, gammas, local_size=4, t_max=1e4)

fig, ax = plt.subplots(figsize=(5, 3.6))
mesh = ax.pcolormesh(np.arange(len(n_locals) + 1), np.arange(len(gammas) + 1), diagram.T2, cmap="viridis")
for (i, j), two in np.ndenumerate(diagram.two_phases):
    ax.text(j + 0.5, i + 0.5, f"{diagram.T2[i, j]:.0f}" + ("" if two else "\n(T1 > T2)"), ha="center", va="center",
            fontsize=7, color="w")
ax.set_xticks(np.arange(len(n_locals)) + 0.5, [f"{s:.2f}" for s in diagram.share])
ax.set_yticks(np.arange(len(gammas)) + 0.5, [f"{g:g}" for g in diagram.gamma])
ax.set_xlabel("global-area share of the patches")
ax.set_ylabel("mask ratio")
fig.colorbar(mesh, label="T2")
fig.tight_layout()
