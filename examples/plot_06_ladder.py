"""
The realistic-transformer ladder
================================

The flow describes one transformer: one merged :math:`Q`, the key's content as value,
orthonormal embeddings, plain SGD. ``gradflow ladder`` asks whether its findings (the phases,
and area-wide attention) survive in transformers as people build them. Each *rung* is a PyTorch
transformer trained on the same data and loss that departs from the model in one respect
(several heads, LayerNorm, factorised :math:`W_Q^\\top W_K`, Adam, Gaussian embeddings, two
layers, a learned value, ...). Every rung is measured against the flow: its phases, whether it
reaches area-wide attention, and the time scale :math:`c` that best maps it onto the flow.

The rungs need PyTorch (``pip install 'gradflow[torch]'``; a CPU build is enough). Without it,
this tutorial only lists the rungs. In quick mode it runs a tiny ladder: three rungs, two
seeds, 200 steps on a model of 36 patches; at full size, four rungs on the paper preset, two
seeds of 1000 steps each. The README's ladder is every rung, three seeds of 1000 steps
(``gradflow ladder --out ladder/``).
"""

# %%
# The rungs
# ---------
import importlib.util
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import gradflow
from gradflow.analysis import ladder as ladder_module

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")
HAVE_TORCH = importlib.util.find_spec("torch") is not None

for name in ladder_module.rung_names():
    print(f"{name:>14}  {ladder_module.RUNGS[name].description}")
if not HAVE_TORCH:
    print("\nPyTorch is not installed: the ladder below is skipped (pip install 'gradflow[torch]').")

# %%
# A tiny ladder
# -------------
# ``ladder`` trains rungs x seeds as Dask tasks (by default on a ``LocalCluster`` of two worker
# processes, which a script must start inside ``if __name__ == "__main__":``; the command line
# does). Here the tasks run on two worker threads of this process, which suits PyTorch: it
# releases the GIL while it computes. Every run is kept under ``out/runs/`` (a rerun skips it),
# and the report goes to ``out/report.md`` and ``out/report.json`` (the command line also draws
# ``ladder.png`` with ``gradflow.figures.ladder.ladder_figure``).
if QUICK:
    model = gradflow.presets.global_local(P=36, n_local=2, local_size=4, mask_ratio=0.5)
    settings = dict(rungs="model,heads4,adam", seeds=2, steps=200, n_records=20, eval_size=512)
else:
    model = gradflow.presets.global_local(P=64, n_local=4, local_size=4, mask_ratio=0.5)
    settings = dict(rungs="model,heads4,factorized,adam", seeds=2, steps=1000)
out = Path(tempfile.mkdtemp()) / "ladder"

if HAVE_TORCH:
    import torch
    from dask.distributed import Client, LocalCluster

    torch.set_num_threads(1)              # one thread per run: the two runs share the cores
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        result = ladder_module.ladder(model, settings.pop("rungs"), **settings, out=out, client=client,
                                      progress=False)
    print(f"{result.computed} runs trained, {result.skipped} read from {out / 'runs'}")
    print(result.table())

# %%
# Reading the table: *c* is the factor that maps the rung's time onto the flow's (``model`` is
# the flow's own transformer, so c is 1 up to sampling noise; four averaged heads each receive a
# quarter of the gradient, so c is about 1/4); *max deviation* is the largest distance from the
# flow after that rescaling (in brackets: without it). A rung that needs more than one time
# scale keeps the phases but not the dynamics (in the README's ladder: Adam and factorised QK).
# ``gradflow/analysis/ladder.py`` defines every verdict. The runs of quick mode are too short to
# reach T3, so they cannot be area-wide yet.
#
# Own-area attention of local and global queries: the flow (lines) and each rung's seed mean
# and range (dots and band), drawn at c x its time. ``out/ladder.png`` is the command's own
# figure of the same.
if HAVE_TORCH:
    names = list(result.rungs)
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.2), sharey=True)
    for ax, name in zip(axes, names):
        rung = result.rungs[name]
        c = rung.row["time_scale"] or 1.0
        for g, (group, color) in enumerate(zip(result.groups, ("C0", "C1"))):
            ax.semilogx(result.flow_t[1:], result.flow_target[1:, g], color=color, label=f"flow, {group}")
            ax.semilogx(c * rung.t[1:], rung.mean[1:, g], "o", ms=3, color=color)
            ax.fill_between(c * rung.t[1:], rung.low[1:, g], rung.high[1:, g], color=color, alpha=0.25)
        ax.set_xlim(0.5 * c * rung.t[1], 2 * c * rung.t[-1])
        ax.set_title(f"{name}: c = {c:.3g}", fontsize=9)
        ax.set_xlabel("flow time (rung: c x lr x step)")
    axes[0].set_ylabel("own-area attention")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
