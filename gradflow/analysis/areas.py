"""What differs between areas: the per-area table of a flow and which areas are learned last.

``area_table(solution)`` lists every (cluster, area) of a model on a grid: its size, amplitude,
distance to the image border, phase times T1, T2, T3 and final own-area attention.
``learned_last(table)`` asks which areas the theory says are learned last: rank correlations
and a regression of T2 against area size, amplitude and border distance, across all images.
``segmentation_quality`` measures how well the segmentations of ``gradflow.images`` follow
the image (the numbers in that module's docstring).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import InvalidInputError
from ..flow.phase_times import PHASE_NAMES, median_time, phases
from ..model import images as image_models

COLUMNS = ("image", "area", "size", "amplitude", "border_distance", "T1", "T2", "T3", "target", "target_fraction")


def border_distance(grid) -> np.ndarray:
    """(gh, gw) distance of every patch to the nearest edge of the grid, in patches (0 on the edge)."""
    gh, gw = grid
    rows, cols = np.mgrid[:gh, :gw]
    return np.minimum.reduce([rows, cols, gh - 1 - rows, gw - 1 - cols]).astype(np.float64)


@dataclass
class AreaTable:
    """One row per (image = cluster, area).

    Columns (each an array over rows): ``image`` (cluster index), ``area`` (label), ``size``
    (patches), ``amplitude`` (mean of the area's amplitude law), ``border_distance`` (mean over
    the area's patches of the distance to the nearest grid edge, in patches), ``T1``, ``T2``,
    ``T3`` (median over the area's patches; NaN when half of them or more did not reach the
    phase, or for single-patch areas, which have no target), ``target`` (final own-area
    attention, mean over the area's patches) and ``target_fraction`` (the same / ceiling).
    ``names`` are the images' names.
    """

    columns: dict
    names: list
    t_end: float
    eps: float

    def __len__(self) -> int:
        return int(self.columns["area"].size)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def table(self) -> str:
        """A text table; '-' marks a phase not reached."""
        width = max([5] + [len(n) for n in self.names])
        head = (f"{'image':<{width}} {'area':>4} {'size':>5} {'amp':>6} {'border':>7}"
                + "".join(f"{n:>10}" for n in PHASE_NAMES) + f"{'target':>8}{'/ceil':>7}")
        lines = [f"areas and their phases (T3 at {1 - self.eps:g} of the ceiling; flow to t = {self.t_end:g})",
                 head, "-" * len(head)]
        c = self.columns
        for i in range(len(self)):
            cells = "".join(f"{c[n][i]:>10.4g}" if np.isfinite(c[n][i]) else f"{'-':>10}" for n in PHASE_NAMES)
            frac = f"{c['target_fraction'][i]:>7.3f}" if np.isfinite(c["target_fraction"][i]) else f"{'-':>7}"
            lines.append(f"{self.names[c['image'][i]]:<{width}} {c['area'][i]:>4d} {c['size'][i]:>5d} "
                         f"{c['amplitude'][i]:>6.3f} {c['border_distance'][i]:>7.2f}{cells}"
                         f"{c['target'][i]:>8.3f}{frac}")
        return "\n".join(lines)

    def to_xarray(self) -> xr.Dataset:
        """The table as a Dataset over a ``row`` dimension, image names as ``image_name``."""
        data = {n: ("row", v) for n, v in self.columns.items()}
        data["image_name"] = ("row", np.array([self.names[k] for k in self.columns["image"]], dtype=object))
        ds = xr.Dataset(data)
        ds.attrs.update(t_end=self.t_end, eps=self.eps)
        return ds


def area_table(solution, names=None, ph=None) -> AreaTable:
    """The per-area table of a Solution on a grid (one cluster per image).

    Parameters
    ----------
    solution : Solution
        Its model must have a ``grid``.
    names : sequence of str, optional
        One per cluster (default "0", "1", ...).
    ph : Phases, optional
        ``phases(solution)`` when already computed (it costs one exact attention per output time).
    """
    model = solution.model
    if model.grid is None:
        raise InvalidInputError("solution: its model has no grid; area_table needs one (DataModel(grid=...))")
    names = [str(k) for k in range(model.n_clusters)] if names is None else [str(n) for n in names]
    if len(names) != model.n_clusters:
        raise InvalidInputError(f"names must have one entry per cluster ({model.n_clusters}), got {len(names)}")
    ph = phases(solution) if ph is None else ph
    border = border_distance(model.grid).ravel()
    rows = {n: [] for n in COLUMNS}
    for k, cl in enumerate(model.clusters):
        for j in range(cl.n_areas):
            pos = np.flatnonzero(cl.areas == j)
            ceiling = ph.ceiling[k, pos[0]]
            target = float(ph.target[-1, k, pos].mean())
            rows["image"].append(k)
            rows["area"].append(j)
            rows["size"].append(pos.size)
            rows["amplitude"].append(cl.amplitudes[j].mean())
            rows["border_distance"].append(float(border[pos].mean()))
            for n in PHASE_NAMES:
                rows[n].append(median_time(getattr(ph, n)[k, pos]))
            rows["target"].append(target)
            rows["target_fraction"].append(target / ceiling if ceiling > 0 else np.nan)
    columns = {n: np.asarray(v, dtype=np.int64 if n in ("image", "area", "size") else np.float64)
               for n, v in rows.items()}
    return AreaTable(columns, names, float(solution.t[-1]), ph.eps)


# ---- which areas are learned last -------------------------------------------------------------
PREDICTORS = ("size", "amplitude", "border_distance")


@dataclass
class LearnedLast:
    """Which areas are learned last: T2 against area size, amplitude and border distance.

    ``spearman[name]`` = (rho, p-value) of T2 with the predictor over all areas of all images
    (an area that never reached T2 ranks last); ``within_image[name]`` = the mean over images of
    the same rank correlation computed inside each image; ``regression`` = coefficients of
    log T2 on log size, log amplitude and border distance (areas that reached T2), with 95%
    confidence intervals and R^2; ``last`` = per image, the area with the largest T2 and whether
    it is that image's smallest area and its lowest-amplitude area; ``size_amplitude`` the rank
    correlation of size and amplitude over the same areas (they are not independent in photographs).
    """

    n_areas: int
    n_reached: int
    spearman: dict
    within_image: dict
    regression: dict
    r_squared: float
    last: list
    size_amplitude: float = np.nan      # rank correlation of size and amplitude themselves

    def text(self) -> str:
        lines = [f"which areas are learned last: T2 of {self.n_areas} areas with a target "
                 f"({self.n_reached} reached T2)",
                 "  rank correlation of T2 with (all images pooled; within an image, mean over images):"]
        for n in PREDICTORS:
            rho, p = self.spearman[n]
            lines.append(f"    {n:<16} rho = {rho:+.3f} (p = {p:.2g}); within an image {self.within_image[n]:+.3f}")
        lines.append(f"  (size and amplitude themselves: rho = {self.size_amplitude:+.3f})")
        if self.regression:
            lines.append(f"  least squares, log T2 = a + b log size + c log amplitude + d border (R^2 = "
                         f"{self.r_squared:.3f}):")
            for n, (coef, lo, hi) in self.regression.items():
                lines.append(f"    {n:<16} {coef:+.3f}  [{lo:+.3f}, {hi:+.3f}]")
        smallest = sum(1 for row in self.last if row["smallest"])
        weakest = sum(1 for row in self.last if row["weakest"])
        lines.append(f"  the last-learned area of an image is its smallest in {smallest}/{len(self.last)} images "
                     f"and its lowest-amplitude in {weakest}/{len(self.last)}")
        return "\n".join(lines)


def _spearman(x, y):
    from scipy import stats  # imported here: scipy.stats costs ~0.3 s of import time
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return np.nan, np.nan
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def learned_last(table: AreaTable) -> LearnedLast:
    """Rank correlations and a regression of T2 against size, amplitude and border distance."""
    from scipy import stats
    c = table.columns
    has = c["size"] >= 2                                  # a single-patch area has no target, no T2
    t2 = np.where(np.isfinite(c["T2"]), c["T2"], np.inf)  # never reached: learned last of all
    spearman = {n: _spearman(c[n][has], t2[has]) for n in PREDICTORS}
    within = {}
    for n in PREDICTORS:
        rhos = [_spearman(c[n][sel], t2[sel])[0] for k in np.unique(c["image"])
                for sel in [has & (c["image"] == k)] if sel.sum() >= 3]
        within[n] = float(np.nanmean(rhos)) if rhos and np.isfinite(rhos).any() else np.nan
    ok = has & np.isfinite(c["T2"])
    regression, r2 = {}, np.nan
    X = np.column_stack([np.ones(ok.sum()), np.log(c["size"][ok]), np.log(c["amplitude"][ok]),
                         c["border_distance"][ok]])
    y = np.log(c["T2"][ok])
    if ok.sum() > X.shape[1] + 1:
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        dof = y.size - X.shape[1]
        sigma2 = float(resid @ resid) / dof
        cov = sigma2 * np.linalg.pinv(X.T @ X)
        half = stats.t.ppf(0.975, dof) * np.sqrt(np.diag(cov))
        labels = ("intercept", "log size", "log amplitude", "border_distance")
        regression = {n: (float(coef[i]), float(coef[i] - half[i]), float(coef[i] + half[i]))
                      for i, n in enumerate(labels)}
        total = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float(resid @ resid) / total if total > 0 else np.nan
    last = []
    for k in np.unique(c["image"]):
        sel = np.flatnonzero(has & (c["image"] == k))
        if sel.size == 0:
            continue
        i = sel[np.argmax(t2[sel])]
        last.append({"image": table.names[k], "area": int(c["area"][i]), "T2": float(c["T2"][i]),
                     "smallest": bool(c["size"][i] == c["size"][sel].min()),
                     "weakest": bool(c["amplitude"][i] == c["amplitude"][sel].min())})
    return LearnedLast(int(has.sum()), int(ok.sum()), spearman, within, regression, r2, last,
                       _spearman(c["size"][has], c["amplitude"][has])[0])


def shared_area_attention(model, query: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """(K,) per cluster k: the rank correlation, over the keys of the query's own area, between the
    query's attention weight on a key (``attention[k]``, (P,)) and the number of clusters in which
    that key shares the query's area. The position-position correlations B are shared by all
    clusters, so a key that shares the query's area in many images gains weight in every one."""
    shared = np.sum([cl.areas[:, None] == cl.areas[None, :] for cl in model.clusters], axis=0)
    out = np.full(model.n_clusters, np.nan)
    for k, cl in enumerate(model.clusters):
        p = int(query[k])
        own = cl.areas == cl.areas[p]
        own[p] = False
        if own.sum() >= 3:
            out[k] = _spearman(shared[p, own], attention[k][own])[0]
    return out


# ---- how well a segmentation follows the image ---------------------------------------------------
def within_area_fraction(means: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the variance of the patch features left within areas: sum over areas of the
    within-area sum of squares over the total sum of squares (0: every area uniform)."""
    f = means.reshape(-1, means.shape[-1])
    lab = np.asarray(labels).ravel()
    total = float(((f - f.mean(axis=0)) ** 2).sum())
    if total == 0:
        return 0.0
    within = sum(float(((f[lab == j] - f[lab == j].mean(axis=0)) ** 2).sum()) for j in np.unique(lab))
    return within / total


@dataclass
class SegmentationQuality:
    """``fractions[method]`` (n_images,): within-area variance fraction per image (voronoi: the
    mean over its seeds)."""

    names: list
    fractions: dict
    grid: tuple
    n_areas: int

    def table(self) -> str:
        head = f"{'method':<16}{'mean':>8}{'median':>8}{'best on':>9}"
        lines = [f"within-area variance fraction of the patch means ({len(self.names)} images, grid "
                 f"{self.grid[0]}x{self.grid[1]}, {self.n_areas} areas; lower follows the image better)",
                 head, "-" * len(head)]
        stacked = np.array(list(self.fractions.values()))
        best = np.argmin(stacked, axis=0)
        for i, (m, v) in enumerate(self.fractions.items()):
            lines.append(f"{m:<16}{np.mean(v):>8.3f}{np.median(v):>8.3f}{int((best == i).sum()):>9d}")
        return "\n".join(lines)


def segmentation_quality(images=None, grid=(14, 14), n_areas: int = 8, methods=image_models.METHODS,
                         voronoi_seeds: int = 20) -> SegmentationQuality:
    """Within-area variance fraction of each segmentation method on ``images`` (a mapping name ->
    image; default all shipped photographs), against random Voronoi partitions."""
    if images is None:
        images = image_models.sample_images(image_models.SAMPLE_NAMES)
    fractions = {m: [] for m in methods}
    for img in images.values():
        means = image_models.patch_means(img, grid)
        for m in methods:
            seeds = range(voronoi_seeds) if m == "voronoi" else [0]
            fractions[m].append(np.mean([within_area_fraction(
                means, image_models.segment(img, grid, n_areas, method=m, seed=s)) for s in seeds]))
    return SegmentationQuality(list(images), {m: np.array(v) for m, v in fractions.items()}, tuple(grid), n_areas)


__all__ = ["AreaTable", "LearnedLast", "SegmentationQuality", "area_table", "border_distance", "learned_last",
           "segmentation_quality", "shared_area_attention", "within_area_fraction"]
