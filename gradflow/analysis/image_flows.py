"""Flows of data models made from photographs, kept with what is needed to draw them again.

``image_flow(images, grid, n_areas, t_max)`` segments the photographs (``gradflow.images``), solves
the flow of the model with one cluster per image, measures the phases, and returns an
:class:`ImageFlow`: the Solution, the image names, display copies of the photographs, the label
maps, the phase times and the attention maps of a chosen masked query at t = 0, T1, T2, T3 and
the end. ``ImageFlow.save`` writes all of it to one NetCDF file and ``ImageFlow.load`` reads it
back, so the figures (``gradflow.figures.images``) can be drawn again without solving.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .._validate import choice, fmt, is_int, positive_real
from ..errors import FileFormatError, InvalidInputError
from ..flow.observables import OBSERVABLE_METHOD
from ..flow.phase_times import PHASE_NAMES, Phases, local_mask, phases
from ..flow.solution import Solution
from ..flow.solver import default_times, solve
from ..io import read_dataset, write_dataset
from ..model import images as image_models
from ..theory.population import attention_maps
from .areas import (
    AreaTable,
    LearnedLast,
    area_table,
    learned_last,
    shared_area_attention,
)

FORMAT_VERSION = 1
DISPLAY_SIDE = 320              # display copies of the photographs: at most this many pixels a side
MOMENTS = ("t = 0", "T1", "T2", "T3", "end")
# exact: at ~190 signature classes (16 photographs) its gradient costs a few tenths of a second,
# and the mean field's states need not reach area-wide exact attention (at 14 x 14 with small
# irregular areas the smallest target / ceiling of a mean-field state stays near 0.5)
DEFAULT_METHOD = "exact"
T_MAX_PER_IMAGE = 5000.0        # default t_max = this x number of images (each cluster has weight 1/K)


def display_image(image) -> np.ndarray:
    """(h, w, 3) uint8 RGB copy of an image for drawing, at most DISPLAY_SIDE pixels a side
    (block means; grey replicated; intensities rescaled by the image's range as for segmenting)."""
    img = image_models.image_array(image)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    step = int(np.ceil(max(img.shape[:2]) / DISPLAY_SIDE))
    if step > 1:
        h, w = img.shape[0] // step, img.shape[1] // step
        img = img[:h * step, :w * step].reshape(h, step, w, step, -1).mean(axis=(1, 3))
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.round(img * 255).astype(np.uint8)


def default_query(grid) -> int:
    """The patch at the centre of the grid (photographs are mostly centred on their subject)."""
    return (grid[0] // 2) * grid[1] + grid[1] // 2


def _check_query(query, grid) -> int:
    """A patch position from None (the centre), an index p or a (row, col) pair."""
    P = grid[0] * grid[1]
    if query is None:
        return default_query(grid)
    if is_int(query) and 0 <= query < P:
        return int(query)
    try:
        r, c = query
        if is_int(r) and is_int(c) and 0 <= r < grid[0] and 0 <= c < grid[1]:
            return int(r) * grid[1] + int(c)
    except (TypeError, ValueError):
        pass
    raise InvalidInputError(f"query must be a patch index in 0..{P - 1} or (row, col) in the {grid[0]}x{grid[1]} "
                            f"grid, got {fmt(query)}")


@dataclass(eq=False)
class ImageFlow:
    """A flow of a model made from photographs (cluster k = image k), with its phases.

    Attributes
    ----------
    solution : Solution
    names : list of str, one per image
    images : list of (h, w, 3) uint8 display copies of the photographs
    settings : dict, how the model was made (segmentation method, seed, min_area, amplitudes)
    ph : Phases of the solution
    query : (K,) patch of the masked query shown per image
    moment_times : (K, 5) times of t = 0, T1, T2, T3 and the end for that query (NaN: not reached)
    query_attention : (K, 5, P) its expected attention map (all keys) at those times
    """

    solution: Solution
    names: list
    images: list
    settings: dict
    ph: Phases
    query: np.ndarray
    moment_times: np.ndarray
    query_attention: np.ndarray
    _table: AreaTable | None = field(default=None, repr=False)

    @property
    def model(self):
        return self.solution.model

    @property
    def grid(self) -> tuple:
        return self.model.grid

    def labels(self, k: int) -> np.ndarray:
        """(gh, gw) label map of image k."""
        return self.model.clusters[k].areas.reshape(self.grid)

    def area_table(self) -> AreaTable:
        if self._table is None:
            self._table = area_table(self.solution, self.names, self.ph)
        return self._table

    def learned_last(self) -> LearnedLast:
        return learned_last(self.area_table())

    def shared_area_attention(self) -> np.ndarray:
        """(K,) rank correlation, within the query's own area at the end of the flow, of the
        attention on a key with the number of images in which it shares the query's area."""
        return shared_area_attention(self.model, self.query, self.query_attention[:, -1])

    def with_query(self, query) -> "ImageFlow":
        """The same flow with another masked query (one patch for every image)."""
        p = _check_query(query, self.grid)
        q = np.full(self.model.n_clusters, p)
        times, maps = query_views(self.solution, self.ph, q)
        return ImageFlow(self.solution, self.names, self.images, self.settings, self.ph, q, times, maps, self._table)

    # ---- files ------------------------------------------------------------------------------
    def to_xarray(self) -> xr.Dataset:
        ds = self.solution.to_xarray()
        K = self.model.n_clusters
        hmax = max(im.shape[0] for im in self.images)
        wmax = max(im.shape[1] for im in self.images)
        pixels = np.zeros((K, hmax, wmax, 3), dtype=np.uint8)
        for k, im in enumerate(self.images):
            pixels[k, :im.shape[0], :im.shape[1]] = im
        rep = self.solution.reduction.representative()     # phase traces are equal within a class
        ds = ds.assign(
            image_name=("cluster", np.array(self.names, dtype=object)),
            image=(("cluster", "pixel_row", "pixel_col", "channel"), pixels),
            image_height=("cluster", np.array([im.shape[0] for im in self.images])),
            image_width=("cluster", np.array([im.shape[1] for im in self.images])),
            labels=(("cluster", "grid_row", "grid_col"), np.stack([self.labels(k) for k in range(K)])),
            distractor_classes=(("phase_time", "cluster", "class"), self.ph.distractor[:, :, rep]),
            target_classes=(("phase_time", "cluster", "class"), self.ph.target[:, :, rep]),
            query=("cluster", self.query),
            moment_time=(("cluster", "moment"), self.moment_times),
            query_attention=(("cluster", "moment", "query"), self.query_attention),
            **{f"{n}_classes": (("cluster", "class"), getattr(self.ph, n)[:, rep]) for n in PHASE_NAMES},
        )
        ds = ds.assign_coords(moment=list(MOMENTS), phase_time=self.ph.t)    # the traces' own times
        for name in ds.data_vars:           # the states dominate (~40 MB for 16 images): compress what packs
            if ds[name].dtype.kind in "iuf":
                ds[name].encoding.update(zlib=True, complevel=4)
        ds["labels"].attrs["long_name"] = "area label of every patch (cluster k = image k)"
        ds.attrs.update(kind="image_flow", image_flow_format=FORMAT_VERSION, eps=self.ph.eps,
                        **{f"setting_{key}": value for key, value in self.settings.items()})
        return ds

    def save(self, path) -> None:
        """Write everything to one NetCDF file atomically; :meth:`load` reads it back."""
        write_dataset(self.to_xarray(), path)

    @classmethod
    def load(cls, path) -> "ImageFlow":
        from ..flow.solution import FORMAT_VERSION as SOLUTION_FORMAT
        needed = ("A_classes", "B_classes", "B_self", "class_of", "loss", "image_name",
                  "image", "image_height", "image_width", "labels", "distractor_classes", "target_classes", "query",
                  "moment_time", "query_attention", "T1_classes", "T2_classes", "T3_classes")
        ds = read_dataset(path, "image_flow", (SOLUTION_FORMAT,), variables=needed,
                          attrs=("model", "method", "status", "message", "nfev", "wall_time", "resolution", "eps"))
        source = str(path)
        sol = Solution.from_xarray(ds, source=source)
        model = sol.model
        K = model.n_clusters
        names = [str(n) for n in ds["image_name"].values]
        labels = ds["labels"].values
        if len(names) != K or labels.shape != (K,) + tuple(model.grid or ()):
            raise FileFormatError(f"{source}: its images do not match its model ({K} clusters)")
        for k in range(K):
            if not np.array_equal(labels[k].ravel(), model.clusters[k].areas):
                raise FileFormatError(f"{source}: label map {k} differs from the model's areas")
        images = [ds["image"].values[k, :int(ds["image_height"][k]), :int(ds["image_width"][k])] for k in range(K)]
        c = sol.reduction.class_of
        ph = Phases(t=ds["phase_time"].values, T1=ds["T1_classes"].values[:, c], T2=ds["T2_classes"].values[:, c],
                    T3=ds["T3_classes"].values[:, c], is_local=local_mask(model), ceiling=model.ceiling(),
                    target=ds["target_classes"].values[:, :, c], distractor=ds["distractor_classes"].values[:, :, c],
                    eps=float(ds.attrs["eps"]), model=model)
        settings = {key[len("setting_"):]: value.item() if isinstance(value, np.generic) else value
                    for key, value in ds.attrs.items() if key.startswith("setting_")}
        return cls(sol, names, images, settings, ph, ds["query"].values.astype(np.int64), ds["moment_time"].values,
                   ds["query_attention"].values)


def query_views(solution: Solution, ph: Phases, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Times (K, 5) of t = 0, T1, T2, T3 and the end for the query of every image, and its
    expected attention maps (K, 5, P) there (NaN where the phase was not reached)."""
    K, P = solution.model.n_clusters, solution.model.n_patches
    t_end = float(solution.t[-1])
    times = np.full((K, len(MOMENTS)), np.nan)
    for k in range(K):
        p = query[k]
        times[k] = [0.0, ph.T1[k, p], ph.T2[k, p], ph.T3[k, p], t_end]
    maps = np.full((K, len(MOMENTS), P), np.nan)
    # the attention kernel measures every cluster at once: one evaluation per distinct time
    for t in np.unique(times[np.isfinite(times)]):
        hit = np.isfinite(times) & (times == t)
        index = np.flatnonzero(solution.t == t)
        state = solution.state(int(index[0])) if index.size else solution.at(t)
        clusters = sorted(set(np.nonzero(hit)[0].tolist()))
        att = attention_maps(state, OBSERVABLE_METHOD, part="total", clusters=clusters)
        for i, k in enumerate(clusters):
            for m in np.flatnonzero(hit[k]):
                maps[k, m] = att[i, query[k]]
    return times, maps


def image_flow(images, grid=(14, 14), n_areas: int = 8, t_max: float | None = None, *,
               method: str = DEFAULT_METHOD, mask_ratio: float = 0.5, amplitudes: str = "contrast",
               segmentation: str = "slic", seed: int = 0, min_area: int = image_models.MIN_AREA,
               integrator: str = "auto", query=None, names=None) -> ImageFlow:
    """Segment photographs, solve the flow of their model, and measure what the figures show.

    Parameters
    ----------
    images : mapping name -> image, or sequence of images
        The photographs (``gradflow.images.sample_images()`` gives shipped ones).
    grid, n_areas, mask_ratio, amplitudes, segmentation (the ``method`` of ``segment``), seed, min_area
        As for ``gradflow.images.data_model``.
    t_max : float, optional
        Length of the flow; default 5000 x the number of images (every cluster has probability
        1/K, so the flow of each image is about K times slower than alone).
    method : {"exact", "meanfield"}
        The loss the flow descends (default exact). Observables and phases are exact either way;
        the mean-field flow is cheaper per gradient but its states need not reach area-wide
        attention.
    integrator : str
        Passed to ``solve`` ("auto": LSODA for small states, RK45 for large ones).
    query : int or (row, col), optional
        The masked query whose attention maps are kept (the same patch in every image); default
        the centre patch.
    names : sequence of str, optional
        Names of the images when ``images`` is a sequence (default "image0", ...).
    """
    if isinstance(images, Mapping):
        names, arrays = [str(n) for n in images], list(images.values())
    else:
        arrays = image_models._image_list(images)
        names = [f"image{k}" for k in range(len(arrays))] if names is None else [str(n) for n in names]
        if len(names) != len(arrays):
            raise InvalidInputError(f"names must have one entry per image ({len(arrays)}), got {len(names)}")
    choice("method", method, ("meanfield", "exact"))
    model = image_models.data_model(arrays, grid, n_areas, mask_ratio, amplitudes, method=segmentation, seed=seed,
                                    min_area=min_area)
    p = _check_query(query, model.grid)
    t_max = T_MAX_PER_IMAGE * len(arrays) if t_max is None else positive_real("t_max", t_max)
    # four decades of output times: before t_max / 1e4 the attention has hardly moved, and every
    # output time costs one exact attention measurement of all images
    sol = solve(model, t_max, method=method, integrator=integrator,
                t_eval=default_times(t_max, per_decade=20, decades=4))
    ph = phases(sol)
    q = np.full(model.n_clusters, p)
    times, maps = query_views(sol, ph, q)
    settings = {"segmentation": segmentation, "seed": int(seed), "min_area": int(min_area),
                "amplitudes": amplitudes, "n_areas": int(n_areas)}
    return ImageFlow(sol, names, [display_image(a) for a in arrays], settings, ph, q, times, maps)


__all__ = ["DEFAULT_METHOD", "ImageFlow", "MOMENTS", "default_query", "display_image", "image_flow", "query_views"]
