"""
Irregular structure at scale with Dask
======================================

The presets of the paper have a handful of signature classes whatever P is. Real images do
not: areas of irregular shapes, which differ from one image (cluster) to the next, overlap into
hundreds of classes at the 14 x 14 patch grid of a ViT-B/16. The ``voronoi`` preset makes such
models, and ``solve(..., client=...)`` spreads the expected loss and its gradient over the
workers of a ``dask.distributed`` cluster: the loss is a sum over clusters, so each worker
takes a share of them.

In quick mode this checks a small Voronoi model on two Dask workers; without it, it solves the
14 x 14 grid with 16 layouts on them.
"""

# %%
# An irregular model
# ------------------
# Every cluster cuts the grid into ``n_regions`` Voronoi regions around random seed patches;
# 30% of the areas get a random amplitude, uniform on [0.5, 1.5].
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import gradflow

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")
if QUICK:
    model = gradflow.presets.voronoi(grid=(8, 8), n_regions=4, n_clusters=4, seed=0)
    t_max = 5000.0
else:
    model = gradflow.presets.voronoi(grid=(14, 14), n_regions=8, n_clusters=16, seed=0)
    t_max = 20000.0
print(model)
print(f"{model.n_classes} signature classes for {model.n_patches} patches: the flow evolves "
      f"{model.n_classes * model.n_features + model.n_classes ** 2 + model.n_classes} numbers")

fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
for k, ax in enumerate(axes[:3]):
    ax.imshow(np.asarray(model.clusters[k].areas).reshape(model.grid), cmap="tab10", vmin=0, vmax=9)
    ax.set_title(f"cluster {k}")
axes[3].imshow(model.class_of.reshape(model.grid), cmap="nipy_spectral")
axes[3].set_title(f"{model.n_classes} classes")
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %%
# A Dask cluster
# --------------
# A cluster is a scheduler and workers, started as commands on the machines that take part
# (``dask scheduler`` on one, ``dask worker ADDRESS`` on each of the others). Here both run on
# this machine: one scheduler and two single-threaded worker processes, each with one Numba
# thread, so that they do not compete for the cores.
#
# On a single machine ``LocalCluster(n_workers=2, threads_per_worker=1)`` does the same in one
# line; its workers re-import the script that starts them, so a script must then create it inside
# an ``if __name__ == "__main__":`` block (the command line's ``gradflow sweep`` and
# ``gradflow ladder`` do).
import atexit
import subprocess
import sys
import tempfile
from pathlib import Path

from dask.distributed import Client

scheduler_file = str(Path(tempfile.mkdtemp()) / "scheduler.json")
env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([str(Path(gradflow.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
processes = [
    subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                      "--no-dashboard", "--scheduler-file", scheduler_file], **quiet),
    subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--nworkers", "2", "--nthreads", "1",
                      "--no-dashboard", "--scheduler-file", scheduler_file], **quiet)]
atexit.register(lambda: [p.kill() for p in processes if p.poll() is None])   # whatever happens below

client = Client(scheduler_file=scheduler_file, timeout=120)
client.wait_for_workers(2, timeout=120)
print(client)

# %%
# Solving on the cluster
# ----------------------
# ``solve(model, client=client)`` sends the reduced model to every worker once; each gradient
# evaluation then sends only the state and gathers the workers' partial sums, of the same size.
# The distributed gradient is the same sum as the local one, to rounding: the start of the flow
# solved on the workers and in this process gives the same trajectory.
t_check = 60.0
start = time.perf_counter()
on_workers = gradflow.solve(model, t_max=t_check, client=client)
wall_workers = time.perf_counter() - start
here = gradflow.solve(model, t_max=t_check)
diff = np.max(np.abs(here.states.A_classes - on_workers.states.A_classes))
print(f"to t = {t_check:g}: on 2 workers {on_workers.nfev} gradient evaluations in {wall_workers:.1f} s; "
      f"here {here.nfev} in {here.wall_time:.1f} s; largest difference in A {diff:.1e}")

# %%
# For a model as small as the quick one the round trip to the workers costs more than the
# gradient itself, so the whole flow is solved here; sharding pays for models like the 14 x 14
# one, whose exact gradient takes a third of a second, which the full-size tutorial solves on
# the workers.
if QUICK:
    sol = gradflow.solve(model, t_max=t_max)
else:
    sol = gradflow.solve(model, t_max=t_max, client=client)
print(f"to t = {t_max:g}: {sol.nfev} gradient evaluations, {sol.wall_time:.1f} s, {sol.message}")

client.shutdown()                  # stops the scheduler and the workers
for p in processes:
    p.wait(timeout=60)

# %%
# What the flow learns on irregular areas
# ---------------------------------------
# Every masked query still ends on the unmasked patches of its own area, whatever its shape.
ph = gradflow.phases(sol)
print(gradflow.summarize(ph))

# The maps show T2, the time at which each masked query's own-area attention reaches half its
# ceiling, over the grid of three of the clusters (white lines: their areas); then T2 against the
# size of the query's area.
from matplotlib.colors import LogNorm  # noqa: E402


def draw_borders(ax, labels):
    """Lines between neighbouring patches of different areas."""
    for r, c in zip(*np.nonzero(labels[:, 1:] != labels[:, :-1])):
        ax.plot([c + 0.5, c + 0.5], [r - 0.5, r + 0.5], color="w", lw=1)
    for r, c in zip(*np.nonzero(labels[1:, :] != labels[:-1, :])):
        ax.plot([c - 0.5, c + 0.5], [r + 0.5, r + 0.5], color="w", lw=1)


norm = LogNorm(np.nanmin(ph.T2), np.nanmax(ph.T2))
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for k, ax in enumerate(axes):
    labels = np.asarray(model.clusters[k].areas).reshape(model.grid)
    im = ax.imshow(ph.T2[k].reshape(model.grid), norm=norm, cmap="viridis")
    draw_borders(ax, labels)
    ax.set_title(f"cluster {k}", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.8, label="T2")

size = np.stack([cl.area_sizes()[np.asarray(cl.areas).ravel()] for cl in model.clusters])   # (K, P)
fig, ax = plt.subplots(figsize=(4.5, 3.2))
ax.loglog(size.ravel(), ph.T2.ravel(), "o", ms=3, alpha=0.5)
ax.set_xlabel("patches in the query's area")
ax.set_ylabel("T2")
fig.tight_layout()
