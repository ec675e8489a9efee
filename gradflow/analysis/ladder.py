"""The ladder: does the theory hold beyond its model? Realistic transformers against the flow.

Every *rung* is a PyTorch transformer (:func:`gradflow.train_torch`) trained on the data of the
model, from the model's own transformer (rung ``model``) to variants that depart from it in one
respect each. ``ladder(model, ...)`` trains rungs x seeds as Dask tasks (a ``LocalCluster`` of
two single-threaded workers by default), keeps every run on disk (``out/runs/``; a rerun skips
what is there), solves the flow of each data model once, and measures every rung against its own:

* **phases ordered**: in every finished seed T1 < T2 < T3 for the local queries, each read
  (at the levels of docs/model.md section 5) from the seed's mean over local queries of the
  attention measured on its evaluation batch (the mean over positions tames that batch's noise);
  **no** when a seed violates the order (two phases reached out of order, or a phase reached
  while an earlier one was not), None ("not reached within the run") when no seed violates it
  but a phase lies beyond the run (:func:`phases_verdict`). A flow's own row is read within its
  stated horizon: for the ladder's model t = ladder lr x steps, where the model's rung ends at
  c = 1;
* **area-wide**: at the end, the seed-mean own-area attention of every (cluster, signature
  class) with a target reaches 1 - eps = 95% of its ceiling (masses averaged over the positions
  of a class, which are exchangeable, to beat the evaluation batch's noise);
* **time scale and deviation**: the factor c minimising the RMS distance between the rung's
  seed-mean own-area attention at its times t (t = the rung's lr x step) and the flow's at c t,
  averaged over the local and the global queries (see :func:`fit_time_scale`); reported with the
  largest deviation after rescaling (``max_deviation``) and without (c = 1);
* **one time scale fits** unless the largest deviation after rescaling exceeds
  ``FIT_TOLERANCE`` or the ratio T3 / T2 of the local queries (from the seed-mean traces)
  differs from the flow's by more than a factor ``RATIO_FACTOR`` (then no rescaling of time can
  map the rung onto the flow), or the best c lies at the edge of the searched range; it is
  undetermined (None) when the rung's local queries never reach T2 (flat traces match the
  flow's start under any small c), when the rung's first record lands, at the fitted c, where
  the flow has settled (any larger c fits as well), or when the rung crossed every phase level
  before its first record (:func:`time_scale_undetermined`).

A diverged seed (non-finite loss) is kept out of the means and reported in its rung's row.
The verdicts are measurements with seed spread, not pass/fail checks tuned to agree.

Rungs live in a registry (:data:`RUNGS`, :func:`register_rung`). A rung is its
``train_torch`` options plus an optional lr rule and width factor; a rung with another data
source gives its own ``trainer`` and may bring its own data model (``model_for``): the top rung
``mae-pixels`` trains an MAE on pixel patches of real images (:mod:`gradflow.training.mae`) and is
compared with the flow of ``images.data_model`` of the same images. One flow is solved per
distinct data model (:class:`FlowTable`; kept in ``out/flows/``), each rung is measured against
its own model's flow, and the report lists every flow with the horizon it was read within. A
rung names the modules it ``requires``: it is listed and run only when they import.
:func:`steps_per_second` times the SGD steps of the Numba trainer and of the bottom rung.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._validate import choice, fmt, nonnegative_int, positive_int, positive_real, suggest
from .._version import __version__
from ..errors import InvalidInputError
from ..flow.phase_times import crossing_time, phases
from ..flow.solver import solve
from ..io import atomic_path, check_output_path, output_dir
from ..model.datamodel import DataModel
from ..theory.oracle import area_oracle_loss
from ..theory.parallel import available_cpus
from ..training.run import TrainRun
from .cluster import given_or_local_client

FIT_TOLERANCE = 0.1       # largest |rung - flow(c t)| (attention mass) for "one time scale fits"
RATIO_FACTOR = 1.5        # T3/T2 of the rung within [1/1.5, 1.5] x the flow's for "one time scale fits"
AREA_WIDE = 0.95          # final target / ceiling of every class for "area-wide attention reached"
C_RANGE = (1e-3, 1e4)     # time-scale factors searched (log-spaced grid, then refined)
FLOW_HORIZON = 20.0       # the flow is solved to this many times the longest rung time
SETTLE_TOLERANCE = 0.01   # a flow has settled once its group traces stay this close to their end
DEFAULTS = dict(seeds=3, steps=1000, lr=1.0, batch_size=256, n_records=40, eval_size=2048)


# ---- the rungs ----------------------------------------------------------------------------------
def _layernorm_lr(d: int) -> float:
    # LayerNorm scales a token of norm ~1 (a masked query) or ~sqrt(2) (an unmasked key) to norm
    # ~sqrt(d): the scores and their gradients grow by ~d/sqrt(2) each, the clock by ~d^2/2
    return 2.0 / d ** 2


@dataclass(frozen=True)
class Rung:
    """One transformer of the ladder.

    name, description : what ``gradflow ladder --list`` and the report show.
    options : keyword arguments of ``train_torch`` (its defaults are the model itself), or of
        ``trainer``.
    lr_scale : the rung's lr is the ladder's lr times this (a number, or a function of the width
        d, e.g. LayerNorm's 2 / d^2); the rung's time is its own lr x step.
    dim_factor : the width d is dim_factor x (F + P), unless ``options`` fix ``dim``.
    trainer : optional ``trainer(model, *, seed, steps, lr, batch_size, record_steps, eval_size,
        dim, **options, **data) -> TrainRun`` for rungs that are not ``train_torch`` (another
        data source); the TrainRun must be on ``model`` (the rung's model, below) and carry
        ``attention_by_area`` and ``masked_mass`` measured on that model's areas.
    model_for : optional ``model_for(ladder_model, data) -> DataModel``: the rung's own data
        model (e.g. the model of the images an MAE is trained on), whose flow the rung is
        compared with; ``data`` holds the ladder's data options (below). Default: the ladder's
        model.
    data_options : names of the ladder's data options (``ladder(..., images=..., grid=...)``)
        the rung reads; they reach ``model_for`` and ``trainer``.
    flow_method : how the flow of the rung's own model is solved ("exact" or "meanfield").
    requires : modules the rung needs; it is listed and can run only when they import.
    default : part of the ladder run when no rungs are named (False: run only when named, for
        rungs that bring their own, costlier data).
    """

    name: str
    description: str
    options: dict = field(default_factory=dict)
    lr_scale: float | Callable[[int], float] = 1.0
    dim_factor: int = 1
    trainer: Callable | None = None
    requires: tuple = ()
    model_for: Callable | None = None
    data_options: tuple = ()
    flow_method: str = "exact"
    default: bool = True

    def width(self, model: DataModel) -> int:
        if "dim" in self.options:
            return int(self.options["dim"])
        return self.dim_factor * (model.n_features + model.n_patches)

    def lr(self, lr: float, model: DataModel) -> float:
        scale = self.lr_scale(self.width(model)) if callable(self.lr_scale) else self.lr_scale
        return float(lr * scale)

    def available(self) -> bool:
        """True when every module in ``requires`` can be imported (found, not imported)."""
        for mod in self.requires:
            try:
                if importlib.util.find_spec(mod) is None:
                    return False
            except ModuleNotFoundError:          # a dotted name whose parent package is missing
                return False
        return True

    def model(self, ladder_model: DataModel, data: dict | None = None) -> DataModel:
        """The data model this rung trains on and is compared with."""
        if self.model_for is None:
            return ladder_model
        return self.model_for(ladder_model, self._data(data))

    def _data(self, data: dict | None) -> dict:
        return {k: v for k, v in (data or {}).items() if k in self.data_options and v is not None}

    def train(self, model: DataModel, *, seed: int, steps: int, lr: float, batch_size: int, record_steps,
              eval_size: int, data: dict | None = None) -> TrainRun:
        """Train one seed at the ladder's ``lr`` (scaled by the rung's rule) on the rung's
        ``model`` (:meth:`model`)."""
        options = {k: v for k, v in self.options.items() if k != "dim"}
        kw = dict(seed=seed, steps=steps, lr=self.lr(lr, model), batch_size=batch_size, record_steps=record_steps,
                  eval_size=eval_size, dim=self.width(model), **options)
        if self.trainer is not None:
            return self.trainer(model, **kw, **self._data(data))
        from ..training import train_torch
        return train_torch(model, progress=False, **kw)


# ---- the top rung: an MAE on pixel patches of real images (gradflow.training.mae) --------------------
MAE_DATA_OPTIONS = ("images", "grid", "n_areas", "patch", "channels")
MAE_LR_SCALE = 0.3        # Q and positions at 0.3 x the ladder's lr (at 1, 1 seed in 4 diverged); content maps / (gamma P)


def _mae_data(ladder_model: DataModel, data: dict):
    from ..training.mae import DEFAULTS as MAE, mae_data
    return mae_data(data.get("images"), data.get("grid", MAE["grid"]), data.get("n_areas", MAE["n_areas"]),
                    ladder_model.mask_ratio, patch=data.get("patch", MAE["patch"]),
                    channels=data.get("channels", MAE["channels"]))


def _mae_model(ladder_model: DataModel, data: dict) -> DataModel:
    """The rung's model: ``images.data_model`` of the prepared images, at the ladder's mask ratio."""
    return _mae_data(ladder_model, data).model


def _mae_trainer(model: DataModel, **kw) -> TrainRun:
    from ..training.mae import train_mae
    data = _mae_data(model, {k: kw.pop(k) for k in MAE_DATA_OPTIONS if k in kw})
    if data.model != model:
        raise InvalidInputError("mae-pixels: the model given is not the data model of its images")
    return train_mae(data=data, progress=False, **kw)


F32 = {"dtype": "float32"}    # every rung but the model's own runs in float32 (3-5x faster on CPU)
RUNGS: dict = {}


def register_rung(rung: Rung, replace: bool = False) -> Rung:
    """Add a rung to the registry (``replace=True`` to redefine a name)."""
    if not isinstance(rung, Rung):
        raise InvalidInputError(f"rung must be a Rung, got {type(rung).__name__}")
    if rung.name in RUNGS and not replace:
        raise InvalidInputError(f"a rung named {rung.name!r} is already registered")
    RUNGS[rung.name] = rung
    return rung


for _rung in (
    Rung("model", "the model itself: one merged Q (0 at t = 0), identity value, orthonormal embeddings, "
                  "plain SGD, float64 (docs/model.md section 2)"),
    Rung("factorized", "Q = W_Q^T W_K, W_Q, W_K in R^{d x d} with N(0, 1/d) entries at t = 0",
         dict(attention="factorized", **F32)),
    Rung("learned-value", "the value is a learned W_V h_q (N(0, 1/d) at t = 0) instead of the key's content",
         dict(value="learned", **F32)),
    Rung("heads4", "4 heads, each its own merged Q_h (N(0, 1/d) at t = 0, to break their symmetry), outputs "
                   "averaged; lr x 4 since the mean hands each head 1/4 of the gradient",
         dict(heads=4, **F32), lr_scale=4.0),
    Rung("layernorm", "LayerNorm (learned gain and bias) on queries and keys before the scores; lr x 2/d^2 since "
                      "LayerNorm scales tokens to norm ~sqrt(d)",
         dict(layernorm=True, **F32), lr_scale=_layernorm_lr),
    Rung("depth2", "two attention layers with a residual stream (identity values); the second predicts",
         dict(depth=2, **F32)),
    Rung("adam", "Adam (betas 0.9, 0.999) instead of SGD, lr x 1e-2 (Adam's steps are ~lr per entry "
                 "whatever the gradient's size)", dict(optimizer="adam", **F32), lr_scale=1e-2),
    Rung("gaussian", "Gaussian embeddings, i.i.d. N(0, 1/d) entries (only nearly orthogonal), d = F + P",
         dict(embedding="gaussian", **F32)),
    Rung("gaussian-wide", "Gaussian embeddings at d = 4 (F + P)", dict(embedding="gaussian", **F32), dim_factor=4),
    Rung("mae-pixels", "MAE on pixel patches of real photographs (default astronaut, camera, coffee, chelsea; "
                       "14 x 14 patches of 8 x 8 grey pixels): learned linear patch embedding and positional "
                       "embeddings (d = 64), one merged Q, value = the embedded content, learned linear decoder; "
                       "own-segment attention against the exact flow of images.data_model of the same images; SGD, "
                       f"Q and positions at lr x {MAE_LR_SCALE:g}, patch embedding and decoder at that / (gamma P); "
                       "run only when named",
         dict(dim=64, **F32), lr_scale=MAE_LR_SCALE, trainer=_mae_trainer, model_for=_mae_model,
         data_options=MAE_DATA_OPTIONS, flow_method="exact", default=False),
):
    register_rung(_rung)


def rung_names() -> list:
    """Names of the registered rungs that can run here, in ladder order."""
    return [name for name, rung in RUNGS.items() if rung.available()]


def resolve_rungs(rungs) -> list:
    """Rung objects from names ("a,b" or a sequence), Rung objects, or None (every available
    rung of the default set: all but those marked ``default=False``, e.g. ``mae-pixels``)."""
    if rungs is None:
        return [RUNGS[name] for name in rung_names() if RUNGS[name].default]
    if isinstance(rungs, str):
        rungs = [r.strip() for r in rungs.split(",") if r.strip()]
    out = []
    for item in rungs:
        if isinstance(item, Rung):
            out.append(item)
            continue
        if not isinstance(item, str) or item not in RUNGS:
            raise InvalidInputError(f"rung must be one of {rung_names()}, got {fmt(item)}{suggest(item, RUNGS)}")
        if not RUNGS[item].available():
            raise InvalidInputError(f"rung {item!r} needs {', '.join(RUNGS[item].requires)}, which is not installed")
        out.append(RUNGS[item])
    if not out:
        raise InvalidInputError("rungs must name at least one rung")
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"rungs must not repeat a name, got {names}")
    return out


# ---- the time-scale fit ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeScaleFit:
    """Result of :func:`fit_time_scale`."""

    c: float                  # the flow at c t matches the rung at t
    rms: float                # RMS deviation at c (over compared times and groups)
    max_deviation: float      # largest |rung - flow(c t)| at c
    max_deviation_unscaled: float   # the same at c = 1
    at_edge: bool             # the best c is at the edge of the searched range


def fit_time_scale(t, y, flow, c_range=C_RANGE, n_grid: int = 281) -> TimeScaleFit:
    """Fit one factor c so that the flow at c t matches the traces y at t.

    Parameters
    ----------
    t : (T,) the rung's times (only t > 0 with finite y are compared).
    y : (T, G) its traces (e.g. seed-mean own-area attention of local and global queries).
    flow : callable, times (n,) -> (n, G), the flow's traces at any times >= 0.
    c_range : (lo, hi) searched factors: a log-spaced grid of ``n_grid`` points, then a bounded
        scalar minimisation of the RMS deviation in log c between the grid neighbours of the best.
    """
    from scipy.optimize import minimize_scalar

    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(t.size, -1)
    keep = (t > 0) & np.all(np.isfinite(y), axis=1)
    if not keep.any():
        raise InvalidInputError("fit_time_scale needs at least one time t > 0 with finite traces")
    t, y = t[keep], y[keep]

    def deviation(c):
        return np.abs(np.asarray(flow(c * t), dtype=np.float64).reshape(y.shape) - y)

    def rms(logc):
        return float(np.sqrt(np.mean(deviation(math.exp(logc)) ** 2)))

    grid = np.linspace(math.log(c_range[0]), math.log(c_range[1]), n_grid)
    values = np.array([rms(g) for g in grid])
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, n_grid - 1)]
    best = minimize_scalar(rms, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    logc = best.x if best.fun <= values[i] else grid[i]
    c = math.exp(logc)
    return TimeScaleFit(c=c, rms=rms(logc), max_deviation=float(deviation(c).max()),
                        max_deviation_unscaled=float(deviation(1.0).max()),
                        at_edge=bool(i in (0, n_grid - 1)))


def one_time_scale(fit: TimeScaleFit, ratio: float, flow_ratio: float, moved: bool = True,
                   undetermined: str = "") -> tuple[bool | None, str]:
    """(fits, why): whether one time rescaling maps the rung onto the flow (module docstring).

    ``moved`` False (the rung's local queries never reached T2) gives (None, why): traces that
    stay near their start match the flow's start under any small c, so c is undetermined; a
    non-empty ``undetermined`` (why c cannot be read, :func:`time_scale_undetermined`) likewise.
    """
    if not moved:
        return None, "c undetermined: the rung never reached T2"
    if undetermined:
        return None, undetermined
    reasons = []
    if fit.at_edge:
        reasons.append(f"best c at the edge of {C_RANGE}")
    if not fit.max_deviation <= FIT_TOLERANCE:
        reasons.append(f"deviation {fit.max_deviation:.3f} > {FIT_TOLERANCE} after rescaling")
    if np.isfinite(ratio) and np.isfinite(flow_ratio) and abs(math.log(ratio / flow_ratio)) > math.log(RATIO_FACTOR):
        reasons.append(f"T3/T2 = {ratio:.3g} vs the flow's {flow_ratio:.3g} (factor > {RATIO_FACTOR})")
    return (not reasons), "; ".join(reasons)


def time_scale_undetermined(c: float, t_first: float, times, settled: float) -> str:
    """Why the fitted c says nothing, or "" when it can.

    * ``c t_first >= settled``: the rung's first record after t = 0 lands, at the fitted c,
      where the flow has stopped moving (``settled``: every group trace stays within
      ``SETTLE_TOLERANCE`` of its value at the flow's horizon, past which the flow is held at
      that value); every larger c fits as well, so the data bound c only from below.
    * the rung's phase times ``times`` (T1, T2, T3, rung time) that were reached all lie before
      ``t_first``: they were interpolated between t = 0 and the first record (and then come out
      in any order), so the rung's phases are not resolved in time.
    """
    if c * t_first >= settled:
        return (f"c undetermined: at c = {c:.3g} the first record (t = {t_first:.3g}) is past t = {settled:.3g}, "
                f"where the flow has settled; any larger c fits as well")
    reached = [x for x in times if np.isfinite(x)]
    if reached and max(reached) <= t_first:
        return f"c undetermined: every phase level was crossed before the first record (t = {t_first:.3g})"
    return ""


def phases_verdict(T1: float, T2: float, T3: float) -> bool | None:
    """T1 < T2 < T3 for one trace: True when all three are reached in order; False when an
    order is violated (two reached phases out of order, or a phase reached while an earlier
    one was not reached within the run, i.e. comes later); None when nothing is violated but a
    phase lies beyond the run (not reached within the run)."""
    times = (T1, T2, T3)
    reached = [bool(np.isfinite(x)) for x in times]
    for i in range(3):
        for j in range(i + 1, 3):
            if reached[j] and (not reached[i] or not times[i] < times[j]):
                return False
    return True if all(reached) else None


def combined_verdict(verdicts) -> bool | None:
    """A rung's phases over its seeds: False if any seed violates the order, True if every seed
    has it, None (not reached within the run) otherwise."""
    verdicts = list(verdicts)
    if any(v is False for v in verdicts):
        return False
    return True if verdicts and all(v is True for v in verdicts) else None


# ---- traces of the phases -------------------------------------------------------------------------
def group_masks(model: DataModel) -> dict:
    """(K, P) masks of the query groups the ladder follows: "local" and "global" queries with a
    target, or "all" of them when no area is smaller than its cluster's largest."""
    from ..flow.phase_times import local_mask

    target = model.ceiling() > 0
    local = local_mask(model)
    if local.any():
        groups = {"local": local & target, "global": ~local & target}
    else:
        groups = {"all": target}
    return {name: mask for name, mask in groups.items() if mask.any()}


@dataclass
class Traces:
    """Group-mean traces of one result: target mass, target / ceiling and distractor / its t=0 value
    (T, G), for the groups of :func:`group_masks`, plus the class-averaged final fractions."""

    t: np.ndarray
    target: np.ndarray
    fraction: np.ndarray
    distractor: np.ndarray
    final_fraction: np.ndarray     # (K, S) target / ceiling at the last time, averaged over each class


def traces(result) -> Traces:
    """The ladder's traces of a Solution or a TrainRun (measured attention for PyTorch runs)."""
    ph = phases(result)
    model = result.model
    ceiling = model.ceiling()
    masks = group_masks(model)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(ceiling > 0, ph.target / np.where(ceiling > 0, ceiling, 1.0), np.nan)
        dist = ph.distractor / ph.distractor[:1]
    target = np.stack([ph.target[:, m].mean(axis=1) for m in masks.values()], axis=1)
    fraction = np.stack([frac[:, m].mean(axis=1) for m in masks.values()], axis=1)
    distractor = np.stack([np.nanmean(np.where(m, dist, np.nan), axis=(1, 2)) if np.isfinite(dist[:, m]).any()
                           else np.full(ph.t.size, np.nan) for m in masks.values()], axis=1)
    classes = model.class_of
    final = np.full((model.n_clusters, model.n_classes), np.nan)
    for s in range(model.n_classes):
        final[:, s] = frac[-1][:, classes == s].mean(axis=1)
    return Traces(ph.t, target, fraction, distractor, final)


def phase_times(tr: Traces, group: int = 0, eps: float = 0.05) -> tuple[float, float, float]:
    """(T1, T2, T3) of a group from its mean traces (docs/model.md section 5 levels)."""
    return (crossing_time(tr.t, tr.distractor[:, group], 0.5, above=False),
            crossing_time(tr.t, tr.fraction[:, group], 0.5, above=True),
            crossing_time(tr.t, tr.fraction[:, group], 1.0 - eps, above=True))


def _mean_traces(runs: list) -> Traces:
    each = [traces(r) for r in runs]
    return Traces(each[0].t, *(np.mean([getattr(e, name) for e in each], axis=0)
                               for name in ("target", "fraction", "distractor", "final_fraction")))


# ---- running ----------------------------------------------------------------------------------------
def record_steps(steps: int, n_records: int) -> np.ndarray:
    """Step 0 and about ``n_records`` log-spaced steps up to ``steps`` (phases span decades)."""
    return np.unique(np.concatenate([[0], np.round(np.geomspace(1, steps, n_records)).astype(np.int64)]))


def run_key(model: DataModel, rung: Rung, seed: int, settings: dict, data: dict | None = None) -> str:
    """Hash of what determines a run: the rung's model, the rung, its data options (arrays by
    their bytes), seed, settings, library version."""
    spec = json.dumps([model.fingerprint(), rung.name, rung.options, rung.lr(settings["lr"], model),
                       rung.width(model), seed, {k: settings[k] for k in ("steps", "batch_size", "n_records",
                                                                           "eval_size")}, __version__]
                      + ([_digest(rung._data(data))] if rung.data_options else []),
                      sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _digest(value) -> str:
    """A stable text for data options: arrays by the hash of their bytes, mappings by key."""
    if isinstance(value, np.ndarray):
        return f"array{value.shape}{value.dtype}:" + hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_digest(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_digest(v) for v in value) + "]"
    return repr(value)


def _keep_freed_memory() -> None:
    """Let glibc keep freed memory in the (worker) process.

    A training step allocates and frees tensors of tens of MB; by default glibc hands such blocks
    and the freed top of the heap back to the kernel at once, so their pages are faulted in again
    at every step and system time reaches half the user time. Raising the trim threshold and
    padding the heap top keeps them (measured: system time 2.4 s -> 0.2 s for 4.5 s of user time).
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:                          # not glibc: nothing to tune
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20)
    libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    libc.mallopt(M_TOP_PAD, 512 * 2 ** 20)


def run_task(model: DataModel, rung: Rung, seed: int, settings: dict, path: str, tune: bool = True,
             data: dict | None = None) -> dict:
    """Train one (rung, seed) and save it; never raises (an error is returned).

    The task uses one torch thread (a cluster runs one task per core); ``tune`` also sets glibc's
    memory retention (:func:`_keep_freed_memory`), for the ladder's own worker processes only.
    """
    start = time.perf_counter()
    try:
        import torch
        torch.set_num_threads(1)
        if tune:
            _keep_freed_memory()
        run = rung.train(model, seed=seed, steps=settings["steps"], lr=settings["lr"],
                         batch_size=settings["batch_size"], eval_size=settings["eval_size"],
                         record_steps=record_steps(settings["steps"], settings["n_records"]), data=data)
        run.save(path)
        return {"error": "", "status": run.status, "wall_time": run.wall_time}
    except Exception as exc:                # a failed task is reported in the table, not fatal
        return {"error": f"{type(exc).__name__}: {exc}", "status": -2, "wall_time": time.perf_counter() - start}


def _run_all(todo: list, client, progress) -> dict:
    """Run (key, args) tasks on ``client`` (default: a local cluster of at most 2 workers x 1 thread)."""
    from dask.distributed import as_completed

    results = {}
    if not todo:
        return results
    own = client is None
    with given_or_local_client(client, n_workers=min(2, available_cpus()) if own else None) as client:
        # tune the processes only of a cluster made here (not a caller's client or scheduler)
        futures = {client.submit(run_task, *args[:5], tune=own, data=args[5], pure=False): key for key, args in todo}
        bar = None
        if progress or (progress is None and sys.stderr.isatty()):
            from tqdm import tqdm
            bar = tqdm(total=len(futures), desc="gradflow ladder", unit="run")
        for fut in as_completed(futures):
            key = futures[fut]
            results[key] = fut.result()
            if bar is not None:
                bar.set_postfix_str(f"{key[0]} seed {key[1]}")
                bar.update(1)
        if bar is not None:
            bar.close()
    return results


# ---- the flows -------------------------------------------------------------------------------------
LADDER_FLOW = "model"     # the name of the ladder's own model's flow


@dataclass
class FlowTable:
    """The flow of one data model as the ladder reads it: its group traces on a dense grid of
    times up to ``horizon`` (past it the flow is held at its value there), and its own row of
    the report (phases and area-wide attention read within ``row["horizon"]``)."""

    name: str                  # LADDER_FLOW, or the first rung that brought this model
    model: DataModel
    method: str
    traces: Traces
    horizon: float
    converged: bool | None
    row: dict

    @property
    def groups(self) -> list:
        return list(group_masks(self.model))

    @property
    def t(self) -> np.ndarray:
        return self.traces.t

    @property
    def target(self) -> np.ndarray:
        return self.traces.target

    def __call__(self, times) -> np.ndarray:
        """(n, G) the flow's own-area attention at ``times``, held at its last value past the horizon."""
        times = np.asarray(times, dtype=np.float64)
        tr = self.traces
        return np.stack([np.interp(times, tr.t, tr.target[:, g]) for g in range(tr.target.shape[1])], axis=-1)

    @property
    def settled(self) -> float:
        """The time from which every group trace stays within SETTLE_TOLERANCE of its value at
        the horizon."""
        y = self.traces.target
        off = np.any(np.abs(y - y[-1]) > SETTLE_TOLERANCE, axis=1)
        moving = np.flatnonzero(off)
        return float(self.traces.t[moving[-1] + 1]) if moving.size else float(self.traces.t[0])

    def label(self) -> str:
        how = "mean field" if self.method == "meanfield" else "exact"
        if self.name == LADDER_FLOW:
            return f"*flow* ({how}, to t = {self.row['horizon']:.3g})"
        end = "converged" if self.converged else "stopped"
        return f"*flow: data of {self.name}* ({how}, {end} at t = {self.row['horizon']:.3g})"


def _solve_traces(model: DataModel, method: str, t_max, t_eval, cache: Path) -> tuple[Traces, float, bool | None]:
    """(traces, horizon, converged) of ``solve(model, t_max, t_eval=..., method=...)``, kept in
    ``cache`` (a .npz file; read back when present)."""
    if cache.is_file():
        with np.load(cache) as f:
            meta = json.loads(str(f["meta"]))
            tr = Traces(*(f[name] for name in ("t", "target", "fraction", "distractor", "final_fraction")))
        return tr, meta["horizon"], meta["converged"]
    sol = solve(model, t_max, t_eval=t_eval, method=method, progress=False)
    tr = traces(sol)
    meta = {"horizon": float(sol.t[-1]), "converged": sol.converged, "status": sol.status, "message": sol.message}
    with atomic_path(cache, "ladder flow") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=json.dumps(meta), t=tr.t, target=tr.target, fraction=tr.fraction,
                     distractor=tr.distractor, final_fraction=tr.final_fraction)
    return tr, meta["horizon"], meta["converged"]


def _flow_key(model: DataModel, method: str, *args) -> str:
    spec = json.dumps([model.fingerprint(), method, [float(a) if a is not None else None for a in args], __version__])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _flow_row(tr: Traces, model: DataModel, horizon: float, ratio: float, method: str) -> dict:
    T1, T2, T3 = phase_times(tr)
    final = float(np.nanmin(tr.final_fraction))
    return {"T1": T1, "T2": T2, "T3": T3, "t3_t2": ratio, "phases_ordered": phases_verdict(T1, T2, T3),
            "min_target_fraction": final, "area_wide": bool(final >= AREA_WIDE), "oracle_loss": area_oracle_loss(model),
            "horizon": float(horizon), "method": method}


def ladder_flow(model: DataModel, t_end: float, t_min: float, t_run: float, flows_dir: Path) -> FlowTable:
    """The ladder's own model: the exact flow to FLOW_HORIZON x t_end on a dense log grid (for
    the time-scale fits), and its row read within t_run = ladder lr x steps, the horizon at which
    the model's rung ends at c = 1."""
    grid = np.concatenate([[0.0], np.geomspace(min(t_min, 1e-3), FLOW_HORIZON * t_end, 1500)])
    tr, horizon, converged = _solve_traces(model, "exact", float(grid[-1]), grid,
                                           flows_dir / f"{LADDER_FLOW}-{_flow_key(model, 'exact', *grid[[1, -1]])}.npz")
    fT1, fT2, fT3 = phase_times(tr)
    within = np.unique(np.concatenate([grid[grid < t_run], [t_run]]))
    row_tr, _, _ = _solve_traces(model, "exact", t_run, within,
                                 flows_dir / f"{LADDER_FLOW}-row-{_flow_key(model, 'exact', within[1], t_run)}.npz")
    return FlowTable(LADDER_FLOW, model, "exact", tr, horizon, converged,
                     _flow_row(row_tr, model, t_run, fT3 / fT2, "exact"))


def rung_flow(name: str, model: DataModel, method: str, flows_dir: Path) -> FlowTable:
    """A rung's own model (e.g. the images of an MAE), whose times have no relation to the rung's:
    solved until converged (``solve(t_max=None)``), its row read at the end."""
    tr, horizon, converged = _solve_traces(model, method, None, None,
                                           flows_dir / f"{name}-{_flow_key(model, method, None)}.npz")
    fT1, fT2, fT3 = phase_times(tr)
    return FlowTable(name, model, method, tr, horizon, converged, _flow_row(tr, model, horizon, fT3 / fT2, method))


# ---- the result ----------------------------------------------------------------------------------
@dataclass
class RungResult:
    """One rung's measurements (a row of the report) and the traces the figure draws."""

    row: dict
    t: np.ndarray | None = None
    mean: np.ndarray | None = None     # (T, G) seed-mean own-area attention
    low: np.ndarray | None = None      # (T, G) seed minimum
    high: np.ndarray | None = None     # (T, G) seed maximum
    flow: str = LADDER_FLOW            # the name of the flow it is compared with


@dataclass
class LadderResult:
    """Result of :func:`ladder`: one row per rung, the flows they are compared with, and the traces."""

    model: DataModel
    settings: dict
    flows: dict                        # name -> FlowTable (LADDER_FLOW: the ladder's model)
    rungs: dict                        # name -> RungResult
    computed: int = 0                  # runs trained now
    skipped: int = 0                   # runs skipped: already on disk, read from there
    paths: dict = field(default_factory=dict)

    @property
    def rows(self) -> list:
        return [r.row for r in self.rungs.values()]

    def _main_flow(self) -> FlowTable:
        return self.flows.get(LADDER_FLOW) or next(iter(self.flows.values()))

    @property
    def flow_row(self) -> dict:
        """The row of the ladder's model's flow (or of the only flow there is)."""
        return self._main_flow().row

    @property
    def groups(self) -> list:
        return self._main_flow().groups

    @property
    def flow_t(self) -> np.ndarray:
        return self._main_flow().t

    @property
    def flow_target(self) -> np.ndarray:
        return self._main_flow().target

    def flow_of(self, rung: str) -> FlowTable:
        """The flow rung ``rung`` is compared with."""
        return self.flows[self.rungs[rung].flow]

    def runs_line(self, runs_dir=None) -> str:
        """How many runs there are, how many were trained now and how many skipped (on disk)."""
        where = f"already in {runs_dir}" if runs_dir is not None else "already on disk"
        return f"{self.computed + self.skipped} runs: {self.computed} trained now, {self.skipped} skipped ({where})"

    def table(self) -> str:
        """The verdicts as a Markdown table."""
        head = ("| rung | phases T1<T2<T3 | area-wide (min target/ceiling) | time scale c | max deviation "
                "(c = 1) | one time scale | T1, T2, T3 (local, flow time) | seeds |")
        lines = [head, "|" + "---|" * 8]
        for flow in self.flows.values():
            f = flow.row
            lines.append(f"| {flow.label()} | {_phases_cell(f['phases_ordered'], None, f['horizon'])} "
                         f"| {_yes(f['area_wide'])} ({f['min_target_fraction']:.3f}) | 1 | 0 | - | {_times(f)} | - |")
        several = len(self.flows) > 1
        for rung, row in zip(self.rungs.values(), self.rows):
            name = row["rung"] + (f" (vs *{self.flows[rung.flow].name}* flow)" if several and rung.flow != LADDER_FLOW
                                  else "")
            if not row["finished"]:
                lines.append(f"| {name} | - | - | - | - | - | - | 0/{row['seeds']} finished: {row['note']} |")
                continue
            c = row["time_scale"]
            if row["time_scale_at_edge"] or row["single_time_scale"] is None:
                c_shown, times = "-", _times(row) + " (rung time)"
            else:
                c_shown, times = f"{c:.3g}", _times({k: row[k] * c for k in ("T1", "T2", "T3")})
            lines.append(
                f"| {name} | {_phases_cell(row['phases_ordered'], row['phases_ordered_seeds'])} "
                f"| {_yes(row['area_wide'])} ({row['min_target_fraction']:.3f}) | {c_shown} "
                f"| {row['max_deviation']:.3f} ({row['max_deviation_unscaled']:.3f}) "
                f"| {_yes(row['single_time_scale'])}{' (' + row['time_scale_note'] + ')' if row['time_scale_note'] else ''} "
                f"| {times} | {row['finished']}/{row['seeds']}"
                f"{'; ' + row['note'] if row['note'] else ''} |")
        return "\n".join(lines)

    def markdown(self) -> str:
        s, m = self.settings, self.model
        lines = [f"# gradflow ladder: {m!r}", "",
                 f"{s['seeds']} seeds per rung, {s['steps']} steps, ladder lr {s['lr']:g} (each rung's lr below), "
                 f"batch {s['batch_size']}, {s['n_records']} log-spaced records, evaluation batch {s['eval_size']}. "
                 f"gradflow {__version__}.", "",
                 self.table(), "",
                 "T1, T2, T3 of a rung are read from its seed-mean traces (local queries) and shown in flow time "
                 "(multiplied by c; in the rung's own time lr x step when c is at the edge of the searched range or "
                 "undetermined). Verdicts: *phases* T1 < T2 < T3 for the local queries in every finished seed "
                 "(seeds with the order in brackets; **no** when a seed violates it, *not reached within the run* "
                 "when none violates it but a phase lies beyond the run); a flow's phases are read within the "
                 "horizon its row states (the ladder's model: t = ladder lr x steps, where the model's rung ends at "
                 f"c = 1); *area-wide*: every (cluster, class) reaches {AREA_WIDE:g} of its ceiling at the "
                 "end (the smallest seed-mean fraction in brackets); *c*: the flow at c x (rung lr x step) fits the "
                 "rung best (RMS over record times, local and global queries); *max deviation*: largest |rung - flow| "
                 f"of the seed-mean own-area attention after rescaling (at c = 1 in brackets); *one time scale* fails "
                 f"when that deviation exceeds {FIT_TOLERANCE}, when T3/T2 differs from the flow's by more than a factor "
                 f"{RATIO_FACTOR}, or when c is at the edge of {C_RANGE}; c is undetermined when the rung never reaches "
                 "T2, when its first record lands at c where the flow has settled (within "
                 f"{SETTLE_TOLERANCE} of its end), or when it crossed every phase level before its first record.", "",
                 "| rung | architecture | lr | T3/T2 (flow's) | final eval loss (area oracle) | steps/s (wall, per run) |",
                 "|---|---|---|---|---|---|"]
        for rung, row in zip(self.rungs.values(), self.rows):
            f = self.flows[rung.flow].row
            lines.append(f"| {row['rung']} | {row['description']} | {row['lr']:.4g} | {row['t3_t2']:.3g} "
                         f"({f['t3_t2']:.3g}) | {row['final_eval_loss']:.4g} ({f['oracle_loss']:.4g}) "
                         f"| {row['steps_per_s']:.3g} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        with atomic_path(out_dir / "report.md") as tmp:
            tmp.write_text(self.markdown())
        with atomic_path(out_dir / "report.json") as tmp:
            tmp.write_text(json.dumps([_jsonable(r) for r in self.rows], indent=1) + "\n")
        self.paths.update({"report.md": out_dir / "report.md", "report.json": out_dir / "report.json"})


def _yes(flag) -> str:
    return "-" if flag is None else ("yes" if flag else "**no**")


def _phases_cell(verdict, seeds: str | None, horizon: float | None = None) -> str:
    if verdict is None:
        text = "not reached within the run" if horizon is None else f"not reached by t = {horizon:.3g}"
    else:
        text = _yes(verdict)
    return text + (f" ({seeds})" if seeds else "")


def _times(row) -> str:
    return ", ".join(f"{row[k]:.3g}" if np.isfinite(row[k]) else "not reached" for k in ("T1", "T2", "T3"))


def _jsonable(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, (float, np.floating)):
            out[key] = float(value) if np.isfinite(value) else None
        elif isinstance(value, np.bool_):
            out[key] = bool(value)
        elif isinstance(value, np.integer):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _analyse(rung: Rung, runs: list, errors: list, settings: dict, flow: FlowTable) -> RungResult:
    model = flow.model
    finished = [r for r in runs if r.status == 0]
    notes = [f"seed {r.seed}: {r.message}" for r in runs if r.status != 0] + errors
    lr = rung.lr(settings["lr"], model)
    row = {"rung": rung.name, "description": rung.description, "lr": lr, "seeds": settings["seeds"],
           "finished": len(finished), "diverged": sum(r.status != 0 for r in runs), "note": "; ".join(notes),
           "flow": flow.name, "phases_ordered": None, "phases_ordered_seeds": "", "phases_violated": 0,
           "phases_not_reached": 0, "area_wide": None,
           "min_target_fraction": np.nan, "time_scale": np.nan, "max_deviation": np.nan,
           "max_deviation_unscaled": np.nan, "rms_deviation": np.nan, "single_time_scale": None,
           "time_scale_note": "", "time_scale_at_edge": None, "T1": np.nan, "T2": np.nan, "T3": np.nan, "t3_t2": np.nan,
           "final_eval_loss": np.nan,
           "steps_per_s": float(np.mean([r.step[-1] / r.wall_time for r in runs if r.wall_time > 0]))
           if runs else np.nan}
    if not finished:
        return RungResult(row, flow=flow.name)
    each = [traces(r) for r in finished]
    mean = _mean_traces(finished)
    verdicts = [phases_verdict(*phase_times(tr)) for tr in each]
    T1, T2, T3 = phase_times(mean)
    fit = fit_time_scale(mean.t, mean.target, flow)
    ratio = T3 / T2 if np.isfinite(T2) and np.isfinite(T3) else np.nan
    t_first = float(mean.t[mean.t > 0].min())
    fits, why = one_time_scale(fit, ratio, flow.row["t3_t2"], moved=bool(np.isfinite(T2)),
                               undetermined=time_scale_undetermined(fit.c, t_first, (T1, T2, T3), flow.settled))
    final = np.nanmin(mean.final_fraction)
    row.update(phases_ordered=combined_verdict(verdicts),
               phases_ordered_seeds=f"{sum(v is True for v in verdicts)}/{len(verdicts)}",
               phases_violated=sum(v is False for v in verdicts), phases_not_reached=sum(v is None for v in verdicts),
               area_wide=bool(final >= AREA_WIDE), min_target_fraction=float(final), time_scale=fit.c,
               max_deviation=fit.max_deviation, max_deviation_unscaled=fit.max_deviation_unscaled,
               rms_deviation=fit.rms, single_time_scale=fits, time_scale_note=why, time_scale_at_edge=fit.at_edge,
               T1=T1, T2=T2, T3=T3,
               t3_t2=ratio, final_eval_loss=float(np.mean([r.eval_loss[-1] for r in finished])))
    stack = np.stack([e.target for e in each])
    return RungResult(row, mean.t, mean.target, stack.min(axis=0), stack.max(axis=0), flow=flow.name)


def ladder(model: DataModel, rungs=None, *, seeds: int = DEFAULTS["seeds"], steps: int = DEFAULTS["steps"],
           lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
           n_records: int = DEFAULTS["n_records"], eval_size: int = DEFAULTS["eval_size"], out,
           client=None, progress=None, images=None, grid=None, n_areas=None, patch=None,
           channels=None) -> LadderResult:
    """Train every rung x seed, measure it against the flow, write the report.

    The figure of the result is ``gradflow.figures.ladder.ladder_figure(result, out)`` (the command line
    draws it as ``ladder.png``).

    Parameters
    ----------
    model : DataModel
    rungs : str or sequence, optional
        Rung names ("model,adam") or ``Rung`` objects; default every available rung.
    seeds, steps, lr, batch_size : int, int, float, int
        Seeds 0 .. seeds-1 per rung; optimiser steps; the ladder's lr (each rung scales it by its
        own rule); samples per step.
    n_records, eval_size : int
        About this many log-spaced records; samples in each run's evaluation batch.
    out : path
        Directory: ``runs/`` (one NetCDF per run; a rerun skips those present), ``flows/`` (the
        flows' traces, likewise), ``report.md``, ``report.json`` (one row per rung).
    client : dask.distributed.Client, optional
        Default: LocalCluster(n_workers=2, threads_per_worker=1), closed after.
    progress : bool, optional
        A tqdm bar over runs (default: on a terminal).
    images, grid, n_areas, patch, channels : optional
        Data options of rungs with their own data (``mae-pixels``: image names such as
        "astronaut,camera" or "lfw:0,lfw:1", arrays or a mapping name -> array; patches per side
        or (rows, cols); areas per image; pixels per patch side; "grey" or "rgb"); None takes
        the rung's default. Refused when no chosen rung reads them.
    """
    if not isinstance(model, DataModel):
        raise InvalidInputError(f"model must be a DataModel, got {type(model).__name__}")
    chosen = resolve_rungs(rungs)
    settings = dict(seeds=positive_int("seeds", seeds), steps=positive_int("steps", steps), lr=positive_real("lr", lr),
                    batch_size=positive_int("batch_size", batch_size), n_records=positive_int("n_records", n_records),
                    eval_size=positive_int("eval_size", eval_size))
    data = {k: v for k, v in dict(images=images, grid=grid, n_areas=n_areas, patch=patch, channels=channels).items()
            if v is not None}
    unread = [k for k in data if not any(k in r.data_options for r in chosen)]
    if unread:
        readers = [r.name for r in RUNGS.values() if r.data_options]
        raise InvalidInputError(f"{', '.join(unread)}: no chosen rung reads {'it' if len(unread) == 1 else 'them'} "
                                f"(rungs with their own data: {', '.join(readers) or 'none'})")
    models = {r.name: r.model(model, data) for r in chosen}       # bad data options fail here, before any work
    out_dir = output_dir(out, "ladder output directory")
    runs_dir = output_dir(out_dir / "runs", "ladder runs directory")
    flows_dir = output_dir(out_dir / "flows", "ladder flows directory")
    for name in ("report.md", "report.json"):     # before any work
        check_output_path(out_dir / name, "ladder output")
    try:
        import torch  # noqa: F401  (every rung is a PyTorch transformer)
    except ModuleNotFoundError:
        raise ModuleNotFoundError("gradflow ladder needs PyTorch: pip install 'gradflow[torch]'", name="torch") from None
    paths, todo = {}, []
    for rung in chosen:
        rung_data = rung._data(data)
        for seed in range(settings["seeds"]):
            key = run_key(models[rung.name], rung, seed, settings, data)
            path = runs_dir / f"{rung.name}-seed{seed}-{key}.nc"
            paths[rung.name, seed] = path
            if not path.is_file():
                todo.append(((rung.name, seed), (models[rung.name], rung, seed, settings, str(path), rung_data)))
    results = _run_all(todo, client, progress)

    loaded, errors = {}, {}
    for rung in chosen:
        loaded[rung.name], errors[rung.name] = [], []
        for seed in range(settings["seeds"]):
            res = results.get((rung.name, seed), {})
            if res.get("error"):
                errors[rung.name].append(f"seed {seed} failed: {res['error']}")
            else:
                loaded[rung.name].append(TrainRun.load(paths[rung.name, seed]))
    flows, flow_of = {}, {}
    on_ladder_model = [r for r in chosen if models[r.name] == model]
    if on_ladder_model:
        runs = [run for r in on_ladder_model for run in loaded[r.name]]
        t_end = max([r.t[-1] for r in runs] + [settings["lr"] * settings["steps"]])
        t_min = min([r.t[1] for r in runs if r.t.size > 1] + [1.0])
        flows[LADDER_FLOW] = ladder_flow(model, t_end, t_min, settings["lr"] * settings["steps"], flows_dir)
    for rung in chosen:
        m = models[rung.name]
        if m == model:
            flow_of[rung.name] = LADDER_FLOW
            continue
        same = [name for name, f in flows.items() if f.model == m and f.method == rung.flow_method]
        if not same:
            flows[rung.name] = rung_flow(rung.name, m, rung.flow_method, flows_dir)
            same = [rung.name]
        flow_of[rung.name] = same[0]
    result = LadderResult(model=model, settings=settings, flows=flows,
                          rungs={r.name: _analyse(r, loaded[r.name], errors[r.name], settings, flows[flow_of[r.name]])
                                 for r in chosen},
                          computed=len(todo), skipped=len(paths) - len(todo))
    result.write(out_dir)
    return result


# ---- speed ---------------------------------------------------------------------------------------
def steps_per_second(model: DataModel, *, steps: int = 50, batch_size: int = DEFAULTS["batch_size"],
                     which=("numba", "torch"), lr: float = 0.5, seed: int = 0, threads: int = 1,
                     warmup: int = 2) -> dict:
    """SGD steps per second of the Numba trainer and of the PyTorch bottom rung on one model.

    Both take the same steps on the same model: draw a minibatch (``BatchSampler``), forward and
    backward pass of the model's transformer (merged Q, identity value, orthonormal embeddings,
    d = F + P, float64), update Q by plain SGD; neither takes evaluation records (the trainers'
    records measure attention on an evaluation batch or the exact expectation, which a step
    does not need). ``warmup`` untimed steps first (Numba's compilation, torch's first call).

    Parameters
    ----------
    model : DataModel
    steps, batch_size : int
        Timed steps and samples per step.
    which : sequence of {"numba", "torch"}
        The trainers to time ("torch" needs PyTorch).
    lr, seed : float, int
        Step size and seed (the same embeddings and batches for both).
    threads : int
        Numba and torch threads while timing (restored after); 1 is one core each, as the
        ladder's workers run.

    Returns
    -------
    dict name -> steps per second (wall clock)
    """
    if not isinstance(model, DataModel):
        raise InvalidInputError(f"model must be a DataModel, got {type(model).__name__}")
    steps, batch_size = positive_int("steps", steps), positive_int("batch_size", batch_size)
    threads, lr = positive_int("threads", threads), positive_real("lr", lr)
    warmup = nonnegative_int("warmup", warmup)
    which = [which] if isinstance(which, str) else list(which)
    for name in which:
        choice("which", name, ("numba", "torch"))
    out = {}
    if "numba" in which:
        from ..theory.parallel import at_most_threads
        from ..training.sampling import BatchSampler
        from ..training.transformer import batch_loss_grad, make_embeddings
        with at_most_threads(threads):
            rng = np.random.default_rng(seed)
            V, E = make_embeddings(model, model.n_features + model.n_patches, "orthonormal", rng)
            Q, sampler = np.zeros((E.shape[0], E.shape[0])), BatchSampler(model)

            def step():                       # the step of train_transformer, without its records
                nonlocal Q
                _, dQ = batch_loss_grad(Q, E, V, *sampler.sample(rng, batch_size))
                Q = Q - lr * dQ

            for _ in range(warmup):
                step()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            out["numba"] = steps / (time.perf_counter() - start)
    if "torch" in which:
        try:
            import torch

            from ..training.pytorch import seconds_per_step
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            raise ModuleNotFoundError("steps_per_second(which='torch') needs PyTorch: pip install 'gradflow[torch]'",
                                      name="torch") from None
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out["torch"] = 1.0 / seconds_per_step(model, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                                  warmup=warmup)
        finally:
            torch.set_num_threads(before)
    return out
