"""Parameter sweeps on Dask: every grid point an independent solve (or Monte-Carlo seeds).

``sweep(model_factory, grid)`` builds every point's model first (a grid that cannot
run is refused before any work), runs one Dask task per point (a ``LocalCluster`` of this
machine's cores by default, or the given ``client``), writes every finished point to
``out/point-KEY.nc`` so that a rerun skips it, records a failed point's error without stopping,
and gathers everything into one xarray Dataset (saved as ``out/sweep.nc``).

A point's cache KEY hashes what determines its result: the built model's specification
(``DataModel.fingerprint``), ``t_max``, the method, the Monte-Carlo options and the library
version. Editing a factory so that it builds another model recomputes the point.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from .._validate import check_names, fmt, positive_int, positive_real
from .._version import __version__
from ..errors import ConfigError, InvalidInputError
from ..flow.observables import attention_diversity
from ..flow.phase_times import phases, summarize
from ..flow.solver import solve
from ..io import check_output_path, check_output_paths, load_dataset, output_dir, write_dataset
from ..model.config import check_keys, read_toml
from ..model.datamodel import DataModel
from ..model.presets import PRESETS, preset
from ..theory.oracle import area_oracle_loss
from ..theory.population import check_method
from ..training.sgd import train_transformer
from .cluster import given_or_local_client
from .comparison import compare

SUMMARY = ("final_loss", "oracle_loss", "min_target_fraction", "T1", "T2", "T3", "diversity",
           "mc_max_error", "status", "nfev", "wall_time")
MC_KEYS = ("steps", "lr", "batch_size", "seeds", "record_every")
FILE_KEYS = ("preset", "t_max", "method", "fixed", "grid", "mc")
EXAMPLE = """\
# A gradflow sweep: run it with  gradflow sweep --grid sweep.toml --out results/
preset = "global_local"      # a name in gradflow.presets.PRESETS (global_local, balanced, voronoi)
t_max = 1e4                  # optional: length of every flow (left out: each flow until converged)
method = "exact"             # optional: exact (default) or meanfield

[fixed]                      # optional: preset options shared by every point
n_local = 2
local_size = 4

[grid]                       # the swept preset options: every combination is a point
P = [36, 64]
mask_ratio = [0.3, 0.5]

# [mc]                       # optional: Monte-Carlo seeds per point, compared with the flow
# steps = 2000
# lr = 0.05
# batch_size = 256
# seeds = 2
"""


def point_key(model: DataModel, t_max: float | None, method: str, mc) -> str:
    """Cache key of a point: hash of what determines its result (t_max None: until converged)."""
    spec = json.dumps([model.fingerprint(), None if t_max is None else float(t_max), method, mc, __version__],
                      sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()[:20]


def run_point(model: DataModel, t_max: float | None, method: str, mc, path: str | None) -> dict:
    """Solve one grid point and summarise it; never raises (errors are returned)."""
    start = time.perf_counter()
    out = dict.fromkeys(SUMMARY, np.nan)
    out["error"] = ""
    try:
        sol = solve(model, t_max, method=method)
        summary = summarize(phases(sol))
        out.update({name: summary.time(name) for name in ("T1", "T2", "T3")})
        out.update(final_loss=sol.loss_at(-1), oracle_loss=area_oracle_loss(model),
                   min_target_fraction=summary.min_target_fraction,
                   diversity=float(attention_diversity(sol, at=[-1])[0]), status=float(sol.status),
                   nfev=float(sol.nfev))
        if mc:
            mc = dict(mc)
            seeds = mc.pop("seeds", 1)
            runs = [train_transformer(model, seed=s, progress=False, **mc) for s in range(int(seeds))]
            out["mc_max_error"] = compare(sol, runs)["target_attention"].max_abs_error
    except Exception as exc:          # a failed point is a result, not the end of the sweep
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["wall_time"] = time.perf_counter() - start
    if path is not None and not out["error"]:
        write_dataset(xr.Dataset({k: v for k, v in out.items() if k != "error"}), path)
    return out


def _load_point(path: Path) -> dict | None:
    """The cached summary of one point, or None when its file is damaged (unreadable, or a value
    missing): the point is then computed again and its file replaced. A file we may not read is
    not damaged: its PermissionError is raised (recomputing could not replace it either)."""
    try:
        ds = load_dataset(path)
        out = {k: float(ds[k].values) for k in SUMMARY}
    except PermissionError:
        raise
    except Exception:            # netCDF4 raises OSError/RuntimeError variants, xarray KeyError
        return None
    out["error"] = ""
    return out


def _check_grid(grid) -> dict:
    if not isinstance(grid, dict) or not grid:
        raise InvalidInputError(f"grid must be a non-empty mapping parameter -> list of values, got {fmt(grid)}")
    clean = {}
    for key, values in grid.items():
        vals = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
        if not vals:
            raise InvalidInputError(f"grid[{key!r}] must hold at least one value, got {values!r}")
        clean[str(key)] = vals
    return clean


MC_CHECKS = {"steps": positive_int, "lr": positive_real, "batch_size": positive_int, "seeds": positive_int,
             "record_every": positive_int}
MC_REQUIRED = ("steps", "lr", "batch_size")


def check_mc(mc) -> dict | None:
    """The Monte-Carlo options of a sweep, checked before any point runs: a table of known keys
    with values of the right type and range (``steps``, ``lr``, ``batch_size`` required)."""
    if mc is None:
        return None
    if not isinstance(mc, dict):
        raise InvalidInputError(f"mc must be a mapping of Monte-Carlo options {list(MC_KEYS)}, got {fmt(mc)}")
    check_names("mc", mc, MC_KEYS)
    missing = [key for key in MC_REQUIRED if key not in mc]
    if missing:
        raise InvalidInputError(f"mc needs {', '.join(missing)} (the options of train_transformer; seeds and "
                                f"record_every are optional)")
    return {key: MC_CHECKS[key](f"mc.{key}", value) for key, value in mc.items()}


def check_disjoint(grid: dict, fixed: dict) -> None:
    """Refuse options given both as fixed and as swept (which would win is not obvious)."""
    both = [key for key in grid if key in fixed]
    if both:
        raise InvalidInputError(f"{', '.join(repr(k) for k in both)} given both in fixed and in grid: a swept "
                                f"option takes its values from the grid only; remove it from fixed")


def _factory(model_factory):
    """A function params -> DataModel, and its name."""
    if isinstance(model_factory, str):
        if model_factory not in PRESETS:
            raise InvalidInputError(f"preset must be one of {sorted(PRESETS)}, got {model_factory!r}")
        return (lambda **params: preset(model_factory, **params)), model_factory
    if not callable(model_factory):
        raise InvalidInputError(f"model_factory must be a preset name or a callable, got {model_factory!r}")
    return model_factory, getattr(model_factory, "__qualname__", "factory")


def _build_points(build, grid: dict, fixed: dict) -> list:
    """[(index, params, model or error message)] for every point.

    A point whose model cannot be built is recorded as failed; a grid where no point can be
    built (an option the preset does not have, say) is refused before anything runs.
    """
    keys = list(grid)
    points = []
    for idx in itertools.product(*(range(len(v)) for v in grid.values())):
        params = dict(fixed, **{k: grid[k][i] for k, i in zip(keys, idx)})
        try:
            model = build(**params)
            if not isinstance(model, DataModel):
                raise InvalidInputError(f"model_factory must return a DataModel, got {type(model).__name__}")
        except (InvalidInputError, TypeError) as exc:
            model = f"{type(exc).__name__}: {exc}"
        points.append((idx, params, model))
    if all(isinstance(model, str) for _, _, model in points):
        idx, params, message = points[0]
        raise InvalidInputError(f"no point of the sweep can be built; the first, {params}: {message}")
    return points


def _run(todo: list, client, progress) -> dict:
    """Run (index, model, path) tasks on ``client`` (default: a local cluster); index -> result."""
    from dask.distributed import as_completed

    results = {}
    if not todo:
        return results
    with given_or_local_client(client) as client:
        futures = {client.submit(run_point, model, *task, path, pure=False): idx for idx, model, task, path in todo}
        bar = None
        if progress or (progress is None and sys.stderr.isatty()):
            from tqdm import tqdm
            bar = tqdm(total=len(futures), desc="gradflow sweep", unit="point")
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return results


def _gather(grid: dict, results: dict) -> xr.Dataset:
    keys = list(grid)
    shape = tuple(len(v) for v in grid.values())
    data = {}
    for var in SUMMARY:
        arr = np.full(shape, np.nan)
        for idx, res in results.items():
            arr[idx] = res[var]
        data[var] = (keys, arr)
    err = np.full(shape, "", dtype=object)
    for idx, res in results.items():
        err[idx] = res["error"]
    data["error"] = (keys, err.astype(str))
    return xr.Dataset(data, coords={k: np.asarray(v) for k, v in grid.items()})


def sweep(model_factory, grid: dict, *, t_max: float | None = None, method: str = "exact", fixed: dict | None = None,
          mc: dict | None = None, out=None, client=None, progress=None) -> xr.Dataset:
    """Solve ``model_factory(**fixed, **point)`` at every point of ``grid`` as Dask tasks.

    Parameters
    ----------
    model_factory : str or callable
        A preset name ("global_local", "balanced") or a picklable function returning a DataModel.
    grid : dict
        Parameter name -> values; the sweep covers their Cartesian product.
    t_max, method : passed to ``solve``; t_max None (the default) integrates every point until
        its flow has converged (``solve``'s convergence stop).
    fixed : dict, optional
        Further keyword arguments for every point.
    mc : dict, optional
        ``dict(steps=, lr=, batch_size=, seeds=)``: also train Monte-Carlo transformers per point
        and record their largest target-attention error against the flow.
    out : path, optional
        Directory for per-point files (a rerun skips points whose key is found there) and
        ``sweep.nc``.
    client : dask.distributed.Client, optional
        Default: a LocalCluster with one single-threaded worker process per core, closed after.
    progress : bool, optional
        A tqdm bar over finished points (default: on a terminal).

    Returns
    -------
    xarray.Dataset
        One dimension per grid parameter; variables final_loss, oracle_loss,
        min_target_fraction, T1, T2, T3 (median over local queries; NaN: not reached),
        diversity, mc_max_error, status, nfev, wall_time, and error ("" where the point
        succeeded). ``attrs``: ``computed`` (points run now), ``points``, ``failed``, ``t_max``
        (the string "until converged" when None).
    """
    build, name = _factory(model_factory)
    grid = _check_grid(grid)
    if fixed is not None and not isinstance(fixed, dict):
        raise InvalidInputError(f"fixed must be a mapping of preset options, got {fmt(fixed)}")
    fixed = dict(fixed or {})
    check_disjoint(grid, fixed)
    t_max = None if t_max is None else positive_real("t_max", t_max)
    check_method(method)
    mc = check_mc(mc)
    points = _build_points(build, grid, fixed)
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        output_dir(out_dir, "sweep output directory")
        check_output_path(out_dir / "sweep.nc", "sweep output")      # before any point runs
    results, todo = {}, []
    for idx, params, model in points:
        if isinstance(model, str):                     # the model could not be built
            results[idx] = dict(dict.fromkeys(SUMMARY, np.nan), error=model)
            continue
        path = None if out_dir is None else out_dir / f"point-{point_key(model, t_max, method, mc)}.nc"
        cached = _load_point(path) if path is not None and path.is_file() else None
        if cached is not None:
            results[idx] = cached
        else:
            todo.append((idx, model, (t_max, method, mc), None if path is None else str(path)))
    check_output_paths([path for *_, path in todo if path is not None], "sweep point file")
    results.update(_run(todo, client, progress))
    ds = _gather(grid, results)
    failed = int((ds["error"].values != "").sum())
    ds.attrs.update(model_factory=name, t_max="until converged" if t_max is None else float(t_max), method=method, fixed=json.dumps(fixed, default=str),
                    mc=json.dumps(mc, default=str), computed=len(todo), points=len(points), failed=failed,
                    gradflow_version=__version__)
    if out_dir is not None:
        write_dataset(ds, out_dir / "sweep.nc")
    return ds


def read_sweep_file(grid_file) -> dict:
    """The sweep a TOML file describes (see :data:`EXAMPLE`), checked against its schema."""
    path = Path(grid_file)
    spec = read_toml(path, "grid file")
    where = f"grid file {str(path)!r}"
    check_keys(spec, FILE_KEYS, where)
    for key in ("preset", "grid"):
        if key not in spec:
            raise ConfigError(f"{where} needs '{key}'")
    if not isinstance(spec["preset"], str) or spec["preset"] not in PRESETS:
        raise ConfigError(f"{where}: preset must be one of {sorted(PRESETS)}, got {fmt(spec['preset'])}")
    for key in ("fixed", "grid", "mc"):
        if key in spec and not isinstance(spec[key], dict):
            raise ConfigError(f"{where}: [{key}] must be a table, got {fmt(spec[key])}")
    try:
        if "t_max" in spec:
            positive_real("t_max", spec["t_max"])
        check_method(spec.get("method", "exact"))
        check_mc(spec.get("mc"))
        check_disjoint(spec["grid"], spec.get("fixed", {}))
    except InvalidInputError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return spec


def sweep_from_file(grid_file, out, scheduler: str | None = None, progress=None) -> xr.Dataset:
    """Run the sweep a TOML file describes (see :data:`EXAMPLE`)."""
    spec = read_sweep_file(grid_file)
    client = None
    if scheduler:
        from dask.distributed import Client
        try:
            client = Client(scheduler, timeout=10)
        except OSError as exc:
            raise InvalidInputError(f"scheduler {scheduler!r} could not be reached: {exc}") from None
    try:
        t_max = float(spec["t_max"]) if "t_max" in spec else None
        return sweep(spec["preset"], spec["grid"], t_max=t_max, method=spec.get("method", "exact"),
                     fixed=spec.get("fixed"), mc=spec.get("mc"), out=out, client=client, progress=progress)
    finally:
        if client is not None:
            client.close()
