"""
Your own data model
===================

Any model of the paper's family can be written down directly: a grid of patches, one or more
*clusters* (each a partition of the patches into areas, with a probability), an amplitude law
per area, and the mask ratio. This tutorial builds one, looks at the signature classes the flow
runs on, checks the exact expected loss against brute-force enumeration of every mask, solves
the flow (exact and mean field), and saves it, and the model, to files.
"""

# %%
# Clusters, areas and amplitudes
# ------------------------------
# Two clusters on a 4 x 4 grid: the first cuts it into four quadrants, the second into two
# halves. Area 1 of the second cluster has a random amplitude (two atoms); every other area
# carries its feature with amplitude 1.
import itertools
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import gradflow
from gradflow import Amplitude, Cluster, DataModel

QUICK = os.environ.get("GRADFLOW_DOCS_QUICK", "0") not in ("", "0")

quadrants = [[0, 0, 1, 1],
             [0, 0, 1, 1],
             [2, 2, 3, 3],
             [2, 2, 3, 3]]
halves = [[0, 0, 0, 0],
          [1, 1, 1, 1],
          [0, 0, 0, 0],
          [1, 1, 1, 1]]
model = DataModel(grid=(4, 4), mask_ratio=0.5, clusters=[
    Cluster(quadrants, prob=0.6),
    Cluster(halves, prob=0.4, amplitudes={1: Amplitude([0.5, 2.0], [0.5, 0.5])})])
print(model)

# %%
# The flow runs on *signature classes*: positions with the same area in every cluster are
# exchangeable, so from :math:`Q = 0` they keep equal correlations (docs/model.md section 3).
# Here the two layouts overlap into eight classes of two patches each.
print("classes:", model.n_classes, "| class sizes:", model.class_sizes)
print("signature (area in cluster 0, area in cluster 1) of each class:\n", model.class_signatures)

fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
for ax, data, title in zip(axes, [np.asarray(c.areas).reshape(model.grid) for c in model.clusters]
                           + [model.class_of.reshape(model.grid)],
                           ["cluster 0 areas", "cluster 1 areas", "signature classes"]):
    ax.imshow(data, cmap="tab10", vmin=0, vmax=9)
    for (r, c), v in np.ndenumerate(data):
        ax.text(c, r, v, ha="center", va="center", color="w")
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %%
# The exact expected loss, against brute force
# ---------------------------------------------
# ``population_loss(model, A, B)`` takes any per-position correlations ``A`` (P x F) and
# ``B`` (P x P) and returns the loss of docs/model.md section 2, the expectation over all
# :math:`2^P` masks and the amplitude atoms taken in closed form. For a small model that is
# checked directly: enumerate every mask, compute the softmax attention of every masked patch
# and its reconstruction error.
small = DataModel(grid=(2, 3), mask_ratio=0.4, clusters=[
    Cluster([[0, 0, 1], [0, 1, 1]], prob=0.6, amplitudes={1: Amplitude.uniform(0.5, 1.5, n_atoms=4)}),
    Cluster([[0, 1, 1], [0, 0, 1]], prob=0.4)])
rng = np.random.default_rng(0)
P, F = small.n_patches, small.n_features
A, B = rng.normal(0, 0.5, (P, F)), rng.normal(0, 0.5, (P, P))


def brute_force_loss(m, A, B):
    """Enumerate every mask and every joint amplitude atom (docs/model.md section 2)."""
    total = 0.0
    for k, cl in enumerate(m.clusters):
        labels = np.asarray(cl.areas).ravel()
        f = np.array([m.feature_index(k, j) for j in labels])        # feature of every patch
        laws = [list(zip(a.values, a.weights)) for a in cl.amplitudes]
        for atoms in itertools.product(*laws):
            z = np.array([v for v, _ in atoms])[labels]                 # amplitude of every patch
            w_z = np.prod([w for _, w in atoms])
            X = np.zeros((P, F))
            X[np.arange(P), f] = z                                      # contents x_p
            for mask in itertools.product([False, True], repeat=P):     # True: masked
                mask = np.array(mask)
                w_mask = np.prod(np.where(mask, m.mask_ratio, 1 - m.mask_ratio))
                visible = ~mask
                for p in np.flatnonzero(mask):
                    scores = B[p] + visible * z * A[p, f]
                    att = np.exp(scores - scores.max())
                    att /= att.sum()
                    err = (att * visible) @ X - X[p]
                    total += m.probs[k] * w_z * w_mask * 0.5 * err @ err
    return total


exact = gradflow.population_loss(small, A, B)
brute = brute_force_loss(small, A, B)
print(f"closed form {exact:.15f}\nenumeration {brute:.15f}\nrelative difference {abs(exact - brute) / brute:.1e}")

# %%
# The gradient is exact too: it matches central finite differences of the loss.
gA, gB = gradflow.population_grad(small, A, B)
h, (p, f), (q, r) = 1e-5, (1, 0), (2, 4)
E = np.zeros_like(A); E[p, f] = h
fd_A = (gradflow.population_loss(small, A + E, B) - gradflow.population_loss(small, A - E, B)) / (2 * h)
E = np.zeros_like(B); E[q, r] = h
fd_B = (gradflow.population_loss(small, A, B + E) - gradflow.population_loss(small, A, B - E)) / (2 * h)
print(f"dL/dA[{p},{f}]: {gA[p, f]:.10f} (finite difference {fd_A:.10f})")
print(f"dL/dB[{q},{r}]: {gB[q, r]:.10f} (finite difference {fd_B:.10f})")

# %%
# Solving it, exact and mean field
# --------------------------------
# ``method="meanfield"`` replaces every count of unmasked keys by its mean: the large-P limit.
# At P = 16 the difference is visible. Whatever loss drives the flow, the attention is measured
# exactly on its state, so the target fractions of the two can be compared directly.
t_max = 500.0 if QUICK else 5000.0
flows = {method: gradflow.solve(model, t_max=t_max, method=method) for method in ("exact", "meanfield")}
for method, sol in flows.items():
    last = sol.state(-1)
    print(f"{method:>9}: {sol.nfev} gradient evaluations, {sol.wall_time:.2f} s; the loss it descends "
          f"{sol.loss[-1]:.4f}, the exact loss of its final state {gradflow.population_loss(model, last.A, last.B):.4f}, "
          f"min target / ceiling {sol.min_target_fraction():.3f}")

sol = flows["exact"]
print("state shapes: A_classes", sol.states.A_classes.shape, "B_classes", sol.states.B_classes.shape,
      "| per position: A", sol.state(-1).A.shape, "B", sol.state(-1).B.shape)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for k, ax in enumerate(axes):
    for method, ls in (("exact", "-"), ("meanfield", "--")):
        frac = flows[method].target_fraction[:, k]              # (T, P): target / ceiling
        for c in range(model.n_classes):
            p = int(np.flatnonzero(model.class_of == c)[0])
            ax.semilogx(flows[method].t[1:], frac[1:, p], ls=ls, color=f"C{c}",
                        label=f"class {c}" if method == "exact" else None)
    ax.set_title(f"cluster {k}: target / ceiling (solid exact, dashed mean field)", fontsize=9)
    ax.set_xlabel("t")
axes[0].legend(fontsize=7, ncol=2)
fig.tight_layout()

# %%
# Files
# -----
# A ``Solution`` saves to NetCDF (the class-reduced trajectory and the model) and loads back;
# ``to_xarray`` gives the same as an ``xarray.Dataset``. A model can also live in a TOML file,
# which the command line reads with ``--config`` (``gradflow config --example`` prints a
# commented one).
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "flow.nc"
    sol.save(path)
    again = gradflow.Solution.load(path)
    print("loaded:", again.t.size, "times; same final loss:", np.isclose(again.loss[-1], sol.loss[-1]))
    toml = Path(tmp) / "model.toml"
    toml.write_text(gradflow.model.config.EXAMPLE)
    from_file = gradflow.model.load_model(toml)
    print("from the example TOML file:", from_file)
print(sol.to_xarray())
