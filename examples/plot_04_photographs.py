"""
Real photographs
================

``gradflow.images`` turns photographs into data models of the paper's family: each photograph
is cut into a grid of patches and segmented into areas that follow the image; each photograph is
one cluster, and each area's amplitude is its contrast against the image's mean colour. The
flow of such a model shows which parts of real images a masked-reconstruction transformer learns
to attend to first. The photographs ship inside scikit-image (nothing is downloaded).
"""

# %%
# Segmenting a photograph into areas
# ----------------------------------
# ``segment`` works at patch resolution: SLIC on the grid of patch means, then a repair to
# exactly ``n_areas`` 4-connected areas of at least two patches (the ``gradflow.images``
# module docstring describes each step).
import os

import matplotlib.pyplot as plt
import numpy as np

import gradflow
from gradflow.images import area_amplitudes, sample_images, segment

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")
names = ["coffee", "astronaut", "chelsea"] if QUICK else ["coffee", "astronaut", "chelsea", "rocket"]
grid, n_areas = ((10, 10), 6) if QUICK else ((14, 14), 8)

photos = sample_images(names)
for name, image in photos.items():
    labels = segment(image, grid=grid, n_areas=n_areas)
    amps = area_amplitudes(image, labels)
    print(f"{name:>10}: {image.shape} pixels -> {labels.shape} patches; area sizes "
          f"{np.bincount(labels.ravel()).tolist()}, amplitudes {np.round(amps, 2).tolist()}")

# %%
# The photographs, their patch grids and their areas.
fig, axes = plt.subplots(2, len(photos), figsize=(3 * len(photos), 6))
for k, (name, image) in enumerate(photos.items()):
    labels = segment(image, grid=grid, n_areas=n_areas)
    axes[0, k].imshow(image, cmap="gray")
    axes[0, k].set_title(name)
    axes[1, k].imshow(labels, cmap="tab10", vmin=0, vmax=9)
    for (r, c), j in np.ndenumerate(labels):
        axes[1, k].text(c, r, j, ha="center", va="center", fontsize=6, color="w")
    axes[1, k].set_title(f"{n_areas} areas on {grid[0]} x {grid[1]} patches", fontsize=9)
for ax in axes.ravel():
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %%
# The flow of the photographs' model
# ----------------------------------
# ``image_flow`` segments the photographs, builds the model (one cluster per photograph, equal
# probabilities), solves its exact flow and measures the phases (``method="meanfield"`` descends
# the cheaper mean-field loss instead; the attention and the phase times are exact expectations
# of the state either way).
flow = gradflow.image_flow(photos, grid=grid, n_areas=n_areas)
print(flow.model, "|", flow.solution.nfev, "gradient evaluations,", f"{flow.solution.wall_time:.1f} s")
print(flow.area_table().table())

# %%
# Where a masked patch at the centre of each photograph attends at t = 0, at its phase times and
# at the end of the flow (``flow.query_attention``; its area outlined by the numbers above).
moments = ["t = 0", "T1", "T2", "T3", "end"]
fig, axes = plt.subplots(len(photos), len(moments), figsize=(2.2 * len(moments), 2.2 * len(photos)))
r0, c0 = divmod(int(flow.query[0]), grid[1])
for k, name in enumerate(flow.names):
    vmax = flow.query_attention[k].max()          # one colour scale per photograph
    for i, label in enumerate(moments):
        ax = axes[k, i]
        ax.imshow(flow.query_attention[k, i].reshape(grid), cmap="magma", vmin=0, vmax=vmax)
        ax.plot(c0, r0, "x", color="c")
        t = flow.moment_times[k, i]
        ax.set_title(f"{label}: " + ("not reached" if np.isnan(t) else f"t = {t:.3g}"), fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    axes[k, 0].set_ylabel(name)
fig.tight_layout()

# %%
# Which areas are learned last
# ----------------------------
# The growth time T2 of every area against its size and its amplitude: contrast decides.
table = flow.area_table()
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
for ax, column in zip(axes, ("size", "amplitude")):
    for k, name in enumerate(table.names):
        rows = table["image"] == k
        ax.loglog(table[column][rows], table["T2"][rows], "o", label=name)
    ax.set_xlabel(f"area {column}")
axes[0].set_ylabel("T2")
axes[0].legend(fontsize=8)
fig.tight_layout()
print(flow.learned_last().text())

# %%
# The command line does all of this for the 16 photographs of the README:
# ``gradflow images --sample default --out DIR`` (``gradflow images FILE.jpg ... --out DIR`` for
# your own files). ``flow.save("images.nc")`` and ``gradflow.ImageFlow.load`` keep a flow to draw
# again without solving.
