"""Ready-made data models of the paper's family.

``global_local``: one dominant global area and a few small compact local areas (the paper's
global and local features). ``balanced``: the grid tiled by equal rectangles. Both have a number
of signature classes that does not depend on P (for ``balanced``: at a fixed number of areas).
"""
from __future__ import annotations

import numpy as np

from .model import Cluster, DataModel


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def square_grid(P: int) -> tuple[int, int]:
    """The most square (H, W) with H * W = P and H <= W."""
    P = _positive_int("P", P)
    h = int(np.sqrt(P))
    while P % h:
        h -= 1
    return h, P // h


def _block_shape(size: int, H: int, W: int) -> tuple[int, int]:
    """Most square (h, w), h * w = size, that fits in an H x W grid."""
    best = None
    for h in range(1, size + 1):
        if size % h == 0 and h <= H and size // h <= W:
            w = size // h
            if best is None or abs(h - w) < abs(best[0] - best[1]):
                best = (h, w)
    if best is None:
        raise ValueError(f"local_size={size} does not fit as a rectangle in the {H}x{W} grid")
    return best


def global_local(P: int = 64, n_local: int = 4, local_size: int = 4, mask_ratio: float = 0.5,
                 n_clusters: int = 1, amplitudes=None, probs=None) -> DataModel:
    """A dominant global area plus ``n_local`` compact local areas, per cluster.

    Parameters
    ----------
    P : int
        Number of patches, laid out on the most square grid (``square_grid``).
    n_local, local_size : int
        Number of local areas per cluster and patches in each (a compact rectangle).
    mask_ratio : float
        Mask probability gamma.
    n_clusters : int
        Further clusters place their local areas in other blocks of the grid.
    amplitudes : Amplitude or mapping, optional
        Passed to every ``Cluster`` (area 0 is the global area, 1..n_local the local ones).
    probs : sequence of float, optional
        Cluster probabilities (default uniform).

    Returns
    -------
    DataModel
        Area 0 of every cluster is the global area; the model has 1 + n_clusters * n_local
        signature classes, whatever P.
    """
    P = _positive_int("P", P)
    n_local = _positive_int("n_local", n_local)
    local_size = _positive_int("local_size", local_size)
    K = _positive_int("n_clusters", n_clusters)
    H, W = square_grid(P)
    bh, bw = _block_shape(local_size, H, W)
    rows, cols = H // bh, W // bw
    n_slots = rows * cols
    need = n_local * K
    if need > n_slots or need * local_size >= P:
        raise ValueError(f"n_local={n_local} areas of local_size={local_size} for {K} cluster(s) "
                         f"do not fit in P={P} ({H}x{W} grid, {n_slots} free blocks) with a global area left")
    # spread the blocks evenly over the grid; cluster k takes every K-th of them
    slots = np.round(np.linspace(0, n_slots - 1, need)).astype(int)
    if probs is None:
        probs = [None] * K
    elif len(probs) != K:
        raise ValueError(f"probs must have n_clusters={K} entries, got {list(probs)!r}")
    clusters = []
    for k in range(K):
        areas = np.zeros((H, W), dtype=np.int64)
        for j, slot in enumerate(slots[k::K], start=1):
            r, c = divmod(int(slot), cols)
            areas[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = j
        clusters.append(Cluster(areas, prob=probs[k], amplitudes=amplitudes))
    return DataModel(grid=(H, W), clusters=clusters, mask_ratio=mask_ratio)


def balanced(grid=(8, 8), area_shape=(4, 4), mask_ratio: float = 0.5, n_clusters: int = 1,
             amplitudes=None, probs=None) -> DataModel:
    """The grid tiled by equal ``area_shape`` rectangles; cluster k shifts the tiling by
    ``k/n_clusters`` of an area in both directions (wrapping around the grid edges).

    The number of classes is the number of areas times the overlaps of the shifted tilings;
    it stays fixed as the grid grows with the number of areas held fixed.
    """
    try:
        H, W = (int(x) for x in grid)
        h, w = (int(x) for x in area_shape)
    except (TypeError, ValueError):
        raise ValueError(f"grid and area_shape must be pairs of integers, got {grid!r}, {area_shape!r}") from None
    if min(H, W, h, w) < 1 or H % h or W % w:
        raise ValueError(f"area_shape {area_shape!r} must tile grid {grid!r} exactly")
    K = _positive_int("n_clusters", n_clusters)
    if probs is None:
        probs = [None] * K
    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    clusters = []
    for k in range(K):
        dy, dx = (k * h) // K, (k * w) // K
        areas = ((rr - dy) % H) // h * (W // w) + ((cc - dx) % W) // w
        clusters.append(Cluster(areas, prob=probs[k], amplitudes=amplitudes))
    return DataModel(grid=(H, W), clusters=clusters, mask_ratio=mask_ratio)


PRESETS = {"global_local": global_local, "balanced": balanced}


def preset_model(name: str, P: int, mask_ratio: float = 0.5, **kw) -> DataModel:
    """A preset by name and number of patches: ``global_local(P, ...)``, or ``balanced`` on a
    square grid of side sqrt(P) cut into four square areas."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    P = _positive_int("P", P)
    if name == "global_local":
        return global_local(P, mask_ratio=mask_ratio, **kw)
    side = int(round(np.sqrt(P)))
    if side * side != P or side % 2:
        raise ValueError(f"P must be an even square for the balanced preset (four square areas), got {P}")
    return balanced((side, side), (side // 2, side // 2), mask_ratio, **kw)
