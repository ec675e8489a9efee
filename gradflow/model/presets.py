"""Ready-made data models of the paper's family, in one registry with one calling convention.

``preset(name, P=..., mask_ratio=..., **options)`` builds any of them; the command line, sweeps
and ``phase_scaling`` all go through it, and options a preset does not have are refused.

``global_local``: one dominant global area and a few small compact local areas (the paper's
global and local features). ``balanced``: the grid tiled by equal rectangles. Both have a number
of signature classes that does not depend on P (for ``balanced``: at a fixed number of areas).
``voronoi``: irregular Voronoi layouts, many clusters, hundreds of classes at ViT grid sizes.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import numpy as np

from .._validate import check_names, choice, fmt, nonnegative_int, positive_int, real, suggest
from ..errors import InvalidInputError
from .amplitude import Amplitude
from .datamodel import Cluster, DataModel


def _checked(fn):
    """A preset that refuses options it does not have (InvalidInputError naming them), not TypeError."""
    known = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **options):
        check_names(fn.__name__, options, known, noun="option")
        return fn(*args, **options)
    return wrapper


def square_grid(P: int) -> tuple[int, int]:
    """The most square (H, W) with H * W = P and H <= W."""
    P = positive_int("P", P)
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
        raise InvalidInputError(f"local_size={size} does not fit as a rectangle in the {H}x{W} grid")
    return best


def _cluster_probs(probs, K: int) -> list:
    if probs is None:
        return [None] * K
    probs = list(probs)
    if len(probs) != K:
        raise InvalidInputError(f"probs must have n_clusters={K} entries, got {fmt(probs)}")
    return probs


@_checked
def global_local(P: int = 64, n_local: int | None = None, local_size: int = 4, mask_ratio: float = 0.5,
                 n_clusters: int = 1, amplitudes=None, probs=None) -> DataModel:
    """A dominant global area plus ``n_local`` compact local areas, per cluster.

    Parameters
    ----------
    P : int
        Number of patches, laid out on the most square grid (``square_grid``).
    n_local : int, optional
        Local areas per cluster; default 4, or as many as fit when P is too small for 4: the
        global area is always left, larger than each local area (it is the dominant one).
    local_size : int
        Patches in each local area (a compact rectangle).
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

    Examples
    --------
    >>> global_local(P=64, n_local=4, local_size=4).n_classes
    5
    """
    P = positive_int("P", P)
    local_size = positive_int("local_size", local_size)
    K = positive_int("n_clusters", n_clusters)
    H, W = square_grid(P)
    bh, bw = _block_shape(local_size, H, W)
    rows, cols = H // bh, W // bw
    n_slots = rows * cols
    if n_local is None:         # 4, or as many as fit beside a global area larger than each of them
        n_local = max(1, min(4, n_slots // K, (P - local_size - 1) // (local_size * K)))
    n_local = positive_int("n_local", n_local)
    need = n_local * K
    if need > n_slots or P - need * local_size <= local_size:
        raise InvalidInputError(
            f"n_local={n_local} areas of local_size={local_size} for {K} cluster(s) do not fit in "
            f"P={P} ({H}x{W} grid, {n_slots} free blocks) with a global area larger than each of them "
            f"(it would have {P - need * local_size} patches): lower n_local or local_size, or raise P")
    # spread the blocks evenly over the grid; cluster k takes every K-th of them
    slots = np.round(np.linspace(0, n_slots - 1, need)).astype(int)
    probs = _cluster_probs(probs, K)
    clusters = []
    for k in range(K):
        areas = np.zeros((H, W), dtype=np.int64)
        for j, slot in enumerate(slots[k::K], start=1):
            r, c = divmod(int(slot), cols)
            areas[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = j
        clusters.append(Cluster(areas, prob=probs[k], amplitudes=amplitudes))
    return DataModel(grid=(H, W), clusters=clusters, mask_ratio=mask_ratio)


@_checked
def balanced(P: int | None = None, area_shape=None, mask_ratio: float = 0.5, n_clusters: int = 1,
             amplitudes=None, probs=None, grid=None) -> DataModel:
    """The grid tiled by equal ``area_shape`` rectangles; cluster k shifts the tiling by
    ``k/n_clusters`` of an area in both directions (wrapping around the grid edges).

    Parameters
    ----------
    P : int, optional
        Number of patches on the most square grid (``square_grid``); default 64 (8 x 8).
    area_shape : (int, int), optional
        Shape of every area; default: half the grid in each direction (four areas).
    grid : (int, int), optional
        The grid (H, W) itself, when not the most square one of P.

    The number of classes is the number of areas times the overlaps of the shifted tilings; it
    stays fixed as the grid grows with the number of areas held fixed.

    Examples
    --------
    >>> balanced(P=16).n_features
    4
    """
    if grid is None:
        H, W = square_grid(64 if P is None else P)
    else:
        H, W = DataModel._check_grid(grid)
        if P is not None and P != H * W:
            raise InvalidInputError(f"P must equal H*W of grid {grid!r}, got {P!r}")
    if area_shape is None:
        if H % 2 or W % 2:
            raise InvalidInputError(f"the {H}x{W} grid of P={H * W} cannot be cut in four equal areas: "
                                    f"give area_shape (a pair that tiles the grid)")
        area_shape = (H // 2, W // 2)
    try:
        h, w = (int(x) for x in area_shape)
    except (TypeError, ValueError):
        raise InvalidInputError(f"area_shape must be a pair of integers, got {fmt(area_shape)}") from None
    if min(h, w) < 1 or H % h or W % w:
        raise InvalidInputError(f"area_shape {fmt(area_shape)} must tile the {H}x{W} grid exactly")
    K = positive_int("n_clusters", n_clusters)
    probs = _cluster_probs(probs, K)
    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    clusters = []
    for k in range(K):
        dy, dx = (k * h) // K, (k * w) // K
        areas = ((rr - dy) % H) // h * (W // w) + ((cc - dx) % W) // w
        clusters.append(Cluster(areas, prob=probs[k], amplitudes=amplitudes))
    return DataModel(grid=(H, W), clusters=clusters, mask_ratio=mask_ratio)


@_checked
def voronoi(P: int | None = None, n_regions: int = 8, n_clusters: int = 16, mask_ratio: float = 0.5,
            amplitudes="mixed", seed: int = 0, grid=None, random_fraction: float = 0.3, probs=None) -> DataModel:
    """Irregular layouts: every cluster cuts the grid into ``n_regions`` Voronoi regions.

    Each cluster draws ``n_regions`` distinct seed patches and gives every patch the label of the
    nearest seed (Euclidean distance on the grid, ties to the lower label), so that regions have
    irregular shapes and sizes and the clusters' layouts overlap into many signature classes: a
    model of the size of a ViT patch grid with S in the hundreds.

    Parameters
    ----------
    P : int, optional
        Number of patches on the most square grid; default 196 (14 x 14, the ViT-B/16 grid).
    n_regions, n_clusters : int
        Regions (areas) per cluster, and clusters (layouts).
    amplitudes : "mixed", "unit", Amplitude or mapping
        "mixed" (default): each area independently, with probability ``random_fraction``, has
        a uniform amplitude on [0.5, 1.5] (8 Gauss-Legendre atoms), else z = 1; "unit": z = 1
        everywhere; an Amplitude or a mapping is passed to every Cluster.
    seed : int
        Seeds the layouts and the choice of random-amplitude areas: same seed, same model.
    grid : (int, int), optional
        The grid itself (overrides P).

    Examples
    --------
    >>> m = voronoi(grid=(14, 14), n_clusters=16, n_regions=8, seed=0)
    >>> m.n_patches, m.n_features
    (196, 128)
    """
    if grid is None:
        H, W = square_grid(196 if P is None else P)
    else:
        H, W = DataModel._check_grid(grid)
        if P is not None and P != H * W:
            raise InvalidInputError(f"P must equal H*W of grid {grid!r}, got {P!r}")
    n_regions = positive_int("n_regions", n_regions)
    K = positive_int("n_clusters", n_clusters)
    if n_regions > H * W:
        raise InvalidInputError(f"n_regions must be at most P = {H * W}, got {n_regions}")
    random_fraction = real("random_fraction", random_fraction, low=0.0, high=1.0)
    rng = np.random.default_rng(nonnegative_int("seed", seed))
    probs = _cluster_probs(probs, K)
    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    cells = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.float64)
    uniform = Amplitude.uniform(0.5, 1.5, 8)
    clusters = []
    for k in range(K):
        seeds = cells[rng.choice(H * W, size=n_regions, replace=False)]
        dist = ((cells[:, None, :] - seeds[None, :, :]) ** 2).sum(axis=-1)
        labels = np.argmin(dist, axis=1)
        if isinstance(amplitudes, str):
            choice("amplitudes", amplitudes, ("mixed", "unit"))
            amps = None
            if amplitudes == "mixed":
                amps = {j: uniform for j in range(n_regions) if rng.random() < random_fraction}
        else:
            amps = amplitudes
        clusters.append(Cluster(labels.reshape(H, W), prob=probs[k], amplitudes=amps))
    return DataModel(grid=(H, W), clusters=clusters, mask_ratio=mask_ratio)


PRESETS: dict[str, Callable[..., DataModel]] = {"global_local": global_local, "balanced": balanced,
                                                "voronoi": voronoi}


def preset_options(name: str) -> list[str]:
    """The keyword options of a preset (P and mask_ratio included)."""
    fn = PRESETS[choice("preset", name, PRESETS)]
    return list(inspect.signature(fn).parameters)


def preset(name: str, **options) -> DataModel:
    """Build the preset ``name`` with keyword ``options`` (``P``, ``mask_ratio`` and the
    preset's own); an option the preset does not have is refused, with the nearest one named.

    Examples
    --------
    >>> preset("balanced", P=16, mask_ratio=0.4).grid
    (4, 4)
    """
    known = preset_options(name)
    for key in options:
        if key not in known:
            raise InvalidInputError(f"preset {name!r} has no option {key!r}{suggest(key, known)}; "
                                    f"its options are {known}")
    return PRESETS[name](**options)
