"""The ladder: does the theory hold beyond its model? Realistic transformers against the flow.

Every *rung* is a PyTorch transformer (:func:`gradflow.train_torch`) trained on the data of the
model, from the model's own transformer (rung ``model``) to variants that depart from it in one
respect each. ``ladder(model, ...)`` trains rungs x seeds as Dask tasks (a ``LocalCluster`` of
two single-threaded workers by default), keeps every run on disk (``out/runs/``; a rerun skips
what is there), solves the flow once, and measures every rung against it:

* **phases ordered**: in every finished seed T1 < T2 < T3 for the local queries, each read
  (at the levels of docs/model.md section 5) from the seed's mean over local queries of the
  attention measured on its evaluation batch (the mean over positions tames that batch's noise);
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
  flow's start under any small c).

A diverged seed (non-finite loss) is kept out of the means and reported in its rung's row.
The verdicts are measurements with seed spread, not pass/fail checks tuned to agree.

Rungs live in a registry (:data:`RUNGS`, :func:`register_rung`). A rung is its
``train_torch`` options plus an optional lr rule and width factor; a rung with another data
source (e.g. MAE on image patches) gives its own ``trainer`` returning a ``TrainRun`` on the
ladder's model, and names the modules it ``requires``: it is listed and run only when they
import.
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

from .._validate import fmt, positive_int, positive_real, suggest
from .._version import __version__
from ..errors import InvalidInputError
from ..flow.phase_times import crossing_time, phases
from ..flow.solver import solve
from ..io import atomic_path, check_output_path
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
    options : keyword arguments of ``train_torch`` (its defaults are the model itself).
    lr_scale : the rung's lr is the ladder's lr times this (a number, or a function of the width
        d, e.g. LayerNorm's 2 / d^2); the rung's time is its own lr x step.
    dim_factor : the width d is dim_factor x (F + P).
    trainer : optional ``trainer(model, *, seed, steps, lr, batch_size, record_steps, eval_size,
        **options) -> TrainRun`` for rungs that are not ``train_torch`` (another data source);
        the TrainRun must be on the ladder's model and carry ``attention_by_area`` and
        ``masked_mass`` measured on that model's areas.
    requires : modules the rung needs; it is listed and can run only when they import.
    """

    name: str
    description: str
    options: dict = field(default_factory=dict)
    lr_scale: float | Callable[[int], float] = 1.0
    dim_factor: int = 1
    trainer: Callable | None = None
    requires: tuple = ()

    def width(self, model: DataModel) -> int:
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

    def train(self, model: DataModel, *, seed: int, steps: int, lr: float, batch_size: int, record_steps,
              eval_size: int) -> TrainRun:
        """Train one seed at the ladder's ``lr`` (scaled by the rung's rule)."""
        kw = dict(seed=seed, steps=steps, lr=self.lr(lr, model), batch_size=batch_size, record_steps=record_steps,
                  eval_size=eval_size, **self.options)
        if self.trainer is not None:
            return self.trainer(model, **kw)
        from ..training import train_torch
        return train_torch(model, dim=self.width(model), progress=False, **kw)


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
):
    register_rung(_rung)


def rung_names() -> list:
    """Names of the registered rungs that can run here, in ladder order."""
    return [name for name, rung in RUNGS.items() if rung.available()]


def resolve_rungs(rungs) -> list:
    """Rung objects from names ("a,b" or a sequence), Rung objects, or None (all available)."""
    if rungs is None:
        return [RUNGS[name] for name in rung_names()]
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


def one_time_scale(fit: TimeScaleFit, ratio: float, flow_ratio: float, moved: bool = True) -> tuple[bool | None, str]:
    """(fits, why): whether one time rescaling maps the rung onto the flow (module docstring).

    ``moved`` False (the rung's local queries never reached T2) gives (None, why): traces that
    stay near their start match the flow's start under any small c, so c is undetermined.
    """
    if not moved:
        return None, "c undetermined: the rung never reached T2"
    reasons = []
    if fit.at_edge:
        reasons.append(f"best c at the edge of {C_RANGE}")
    if not fit.max_deviation <= FIT_TOLERANCE:
        reasons.append(f"deviation {fit.max_deviation:.3f} > {FIT_TOLERANCE} after rescaling")
    if np.isfinite(ratio) and np.isfinite(flow_ratio) and abs(math.log(ratio / flow_ratio)) > math.log(RATIO_FACTOR):
        reasons.append(f"T3/T2 = {ratio:.3g} vs the flow's {flow_ratio:.3g} (factor > {RATIO_FACTOR})")
    return (not reasons), "; ".join(reasons)


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


def run_key(model: DataModel, rung: Rung, seed: int, settings: dict) -> str:
    """Hash of what determines a run: model, rung, seed, settings, library version."""
    spec = json.dumps([model.fingerprint(), rung.name, rung.options, rung.lr(settings["lr"], model),
                       rung.width(model), seed, {k: settings[k] for k in ("steps", "batch_size", "n_records",
                                                                           "eval_size")}, __version__],
                      sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


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


def run_task(model: DataModel, rung: Rung, seed: int, settings: dict, path: str, tune: bool = True) -> dict:
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
                         record_steps=record_steps(settings["steps"], settings["n_records"]))
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
        futures = {client.submit(run_task, *args, tune=own, pure=False): key for key, args in todo}
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


# ---- the result ----------------------------------------------------------------------------------
@dataclass
class RungResult:
    """One rung's measurements (a row of the report) and the traces the figure draws."""

    row: dict
    t: np.ndarray | None = None
    mean: np.ndarray | None = None     # (T, G) seed-mean own-area attention
    low: np.ndarray | None = None      # (T, G) seed minimum
    high: np.ndarray | None = None     # (T, G) seed maximum


@dataclass
class LadderResult:
    """Result of :func:`ladder`: one row per rung, the flow's summary, and the traces."""

    model: DataModel
    settings: dict
    groups: list
    flow_row: dict
    flow_t: np.ndarray
    flow_target: np.ndarray            # (N, G) the flow's own-area attention on a dense grid
    rungs: dict                        # name -> RungResult
    computed: int = 0                  # runs trained now (the others were read from disk)
    paths: dict = field(default_factory=dict)

    @property
    def rows(self) -> list:
        return [r.row for r in self.rungs.values()]

    def table(self) -> str:
        """The verdicts as a Markdown table."""
        head = ("| rung | phases T1<T2<T3 | area-wide (min target/ceiling) | time scale c | max deviation "
                "(c = 1) | one time scale | T1, T2, T3 (local, flow time) | seeds |")
        lines = [head, "|" + "---|" * 8]
        f = self.flow_row
        lines.append(f"| *flow* | {_yes(f['phases_ordered'])} | {_yes(f['area_wide'])} ({f['min_target_fraction']:.3f}) "
                     f"| 1 | 0 | - | {_times(f)} | - |")
        for row in self.rows:
            if not row["finished"]:
                lines.append(f"| {row['rung']} | - | - | - | - | - | - | 0/{row['seeds']} finished: {row['note']} |")
                continue
            c = row["time_scale"]
            if row["time_scale_at_edge"] or row["single_time_scale"] is None:
                c_shown, times = "-", _times(row) + " (rung time)"
            else:
                c_shown, times = f"{c:.3g}", _times({k: row[k] * c for k in ("T1", "T2", "T3")})
            lines.append(
                f"| {row['rung']} | {_yes(row['phases_ordered'])} ({row['phases_ordered_seeds']}) "
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
                 f"(count in brackets); *area-wide*: every (cluster, class) reaches {AREA_WIDE:g} of its ceiling at the "
                 "end (the smallest seed-mean fraction in brackets); *c*: the flow at c x (rung lr x step) fits the "
                 "rung best (RMS over record times, local and global queries); *max deviation*: largest |rung - flow| "
                 f"of the seed-mean own-area attention after rescaling (at c = 1 in brackets); *one time scale* fails "
                 f"when that deviation exceeds {FIT_TOLERANCE}, when T3/T2 differs from the flow's by more than a factor "
                 f"{RATIO_FACTOR}, or when c is at the edge of {C_RANGE}.", "",
                 "| rung | architecture | lr | T3/T2 (flow " + f"{self.flow_row['t3_t2']:.3g}) | final eval loss "
                 f"(area oracle {self.flow_row['oracle_loss']:.4g}) | steps/s (wall, per run) |", "|---|---|---|---|---|---|"]
        for row in self.rows:
            lines.append(f"| {row['rung']} | {row['description']} | {row['lr']:.4g} | {row['t3_t2']:.3g} "
                         f"| {row['final_eval_loss']:.4g} | {row['steps_per_s']:.3g} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        with atomic_path(out_dir / "report.md") as tmp:
            tmp.write_text(self.markdown())
        with atomic_path(out_dir / "report.json") as tmp:
            tmp.write_text(json.dumps([_jsonable(r) for r in self.rows], indent=1) + "\n")
        self.paths.update({"report.md": out_dir / "report.md", "report.json": out_dir / "report.json"})


def _yes(flag) -> str:
    return "-" if flag is None else ("yes" if flag else "**no**")


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


def _flow_tables(model: DataModel, t_end: float, t_min: float):
    """The flow to FLOW_HORIZON x t_end on a dense log grid: (solution traces, table function)."""
    grid = np.concatenate([[0.0], np.geomspace(min(t_min, 1e-3), FLOW_HORIZON * t_end, 1500)])
    sol = solve(model, float(grid[-1]), t_eval=grid)
    tr = traces(sol)

    def flow(times):
        times = np.asarray(times, dtype=np.float64)
        # beyond the horizon the flow is taken as its last value (it has converged there)
        return np.stack([np.interp(times, tr.t, tr.target[:, g]) for g in range(tr.target.shape[1])], axis=-1)

    return sol, tr, flow


def _analyse(rung: Rung, runs: list, errors: list, settings: dict, model: DataModel, flow, flow_ratio) -> RungResult:
    finished = [r for r in runs if r.status == 0]
    notes = [f"seed {r.seed}: {r.message}" for r in runs if r.status != 0] + errors
    lr = rung.lr(settings["lr"], model)
    row = {"rung": rung.name, "description": rung.description, "lr": lr, "seeds": settings["seeds"],
           "finished": len(finished), "diverged": sum(r.status != 0 for r in runs), "note": "; ".join(notes),
           "phases_ordered": None, "phases_ordered_seeds": "", "area_wide": None,
           "min_target_fraction": np.nan, "time_scale": np.nan, "max_deviation": np.nan,
           "max_deviation_unscaled": np.nan, "rms_deviation": np.nan, "single_time_scale": None,
           "time_scale_note": "", "time_scale_at_edge": None, "T1": np.nan, "T2": np.nan, "T3": np.nan, "t3_t2": np.nan,
           "final_eval_loss": np.nan,
           "steps_per_s": float(np.mean([r.step[-1] / r.wall_time for r in runs if r.wall_time > 0]))
           if runs else np.nan}
    if not finished:
        return RungResult(row)
    each = [traces(r) for r in finished]
    mean = _mean_traces(finished)
    ordered = []
    for tr in each:
        T1, T2, T3 = phase_times(tr)
        ordered.append(bool(np.all(np.isfinite([T1, T2, T3])) and T1 < T2 < T3))
    T1, T2, T3 = phase_times(mean)
    fit = fit_time_scale(mean.t, mean.target, flow)
    ratio = T3 / T2 if np.isfinite(T2) and np.isfinite(T3) else np.nan
    fits, why = one_time_scale(fit, ratio, flow_ratio, moved=bool(np.isfinite(T2)))
    final = np.nanmin(mean.final_fraction)
    row.update(phases_ordered=all(ordered), phases_ordered_seeds=f"{sum(ordered)}/{len(ordered)}",
               area_wide=bool(final >= AREA_WIDE), min_target_fraction=float(final), time_scale=fit.c,
               max_deviation=fit.max_deviation, max_deviation_unscaled=fit.max_deviation_unscaled,
               rms_deviation=fit.rms, single_time_scale=fits, time_scale_note=why, time_scale_at_edge=fit.at_edge,
               T1=T1, T2=T2, T3=T3,
               t3_t2=ratio, final_eval_loss=float(np.mean([r.eval_loss[-1] for r in finished])))
    stack = np.stack([e.target for e in each])
    return RungResult(row, mean.t, mean.target, stack.min(axis=0), stack.max(axis=0))


def ladder(model: DataModel, rungs=None, *, seeds: int = DEFAULTS["seeds"], steps: int = DEFAULTS["steps"],
           lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
           n_records: int = DEFAULTS["n_records"], eval_size: int = DEFAULTS["eval_size"], out,
           client=None, progress=None, figure: bool = True) -> LadderResult:
    """Train every rung x seed, measure it against the flow, write the report and the figure.

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
        Directory: ``runs/`` (one NetCDF per run; a rerun skips those present), ``report.md``,
        ``report.json`` (one row per rung), ``ladder.png`` / ``.pdf``.
    client : dask.distributed.Client, optional
        Default: LocalCluster(n_workers=2, threads_per_worker=1), closed after.
    progress : bool, optional
        A tqdm bar over runs (default: on a terminal).
    figure : bool
        Also draw the figure.
    """
    if not isinstance(model, DataModel):
        raise InvalidInputError(f"model must be a DataModel, got {type(model).__name__}")
    chosen = resolve_rungs(rungs)
    settings = dict(seeds=positive_int("seeds", seeds), steps=positive_int("steps", steps), lr=positive_real("lr", lr),
                    batch_size=positive_int("batch_size", batch_size), n_records=positive_int("n_records", n_records),
                    eval_size=positive_int("eval_size", eval_size))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    for name in ("report.md", "report.json", "ladder.png", "ladder.pdf"):     # before any work
        check_output_path(out_dir / name, "ladder output")
    try:
        import torch  # noqa: F401  (every rung is a PyTorch transformer)
    except ModuleNotFoundError:
        raise ModuleNotFoundError("gradflow ladder needs PyTorch: pip install 'gradflow[torch]'", name="torch") from None
    paths, todo = {}, []
    for rung in chosen:
        for seed in range(settings["seeds"]):
            path = runs_dir / f"{rung.name}-seed{seed}-{run_key(model, rung, seed, settings)}.nc"
            paths[rung.name, seed] = path
            if not path.is_file():
                todo.append(((rung.name, seed), (model, rung, seed, settings, str(path))))
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
    all_runs = [r for runs in loaded.values() for r in runs]
    t_end = max([r.t[-1] for r in all_runs] + [settings["lr"] * settings["steps"]])
    t_min = min([r.t[1] for r in all_runs if r.t.size > 1] + [1.0])
    sol, flow_tr, flow = _flow_tables(model, t_end, t_min)
    fT1, fT2, fT3 = phase_times(flow_tr)
    flow_ratio = fT3 / fT2
    flow_final = float(np.nanmin(traces(solve(model, settings["lr"] * settings["steps"])).final_fraction))
    flow_row = {"T1": fT1, "T2": fT2, "T3": fT3, "t3_t2": flow_ratio, "phases_ordered": bool(fT1 < fT2 < fT3),
                "min_target_fraction": flow_final, "area_wide": bool(flow_final >= AREA_WIDE),
                "oracle_loss": area_oracle_loss(model)}
    result = LadderResult(model=model, settings=settings, groups=list(group_masks(model)), flow_row=flow_row,
                          flow_t=flow_tr.t, flow_target=flow_tr.target,
                          rungs={r.name: _analyse(r, loaded[r.name], errors[r.name], settings, model, flow, flow_ratio)
                                 for r in chosen},
                          computed=len(todo))
    result.write(out_dir)
    if figure:
        from ..figures.ladder import ladder_figure
        fig = ladder_figure(result, out_dir)
        result.paths.update({p.name: p for p in fig.paths})
    return result
