"""Parameter sweeps on Dask: every grid point an independent solve (or Monte-Carlo seeds).

``sweep(model_factory, grid, t_max=...)`` runs one Dask task per point (a ``LocalCluster`` of this
machine's cores by default, or the given ``client``), writes every finished point to
``out/point-*.nc`` so that a rerun skips it, records a failed point's error without stopping, and
gathers everything into one xarray Dataset (saved as ``out/sweep.nc``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from ._atomic import atomic_path
from .presets import PRESETS

SUMMARY = ("final_loss", "oracle_loss", "min_target_fraction", "T1", "T2", "T3", "diversity",
           "mc_max_error", "status", "nfev", "wall_time")


def _point_key(factory_name: str, params: dict, t_max: float, method: str, mc) -> str:
    spec = json.dumps([factory_name, sorted(params.items()), t_max, method, mc], sort_keys=True, default=str)
    return hashlib.sha1(spec.encode()).hexdigest()[:16]


def run_point(factory, params: dict, t_max: float, method: str, mc, path: str | None) -> dict:
    """Solve one grid point and summarise it; never raises (errors are returned)."""
    import time

    from .compare import compare
    from .montecarlo import train_transformer
    from .observables import area_oracle_loss, attention_diversity, phases
    from .solver import solve
    start = time.perf_counter()
    out = dict.fromkeys(SUMMARY, np.nan)
    out["error"] = ""
    try:
        model = PRESETS[factory](**params) if isinstance(factory, str) else factory(**params)
        sol = solve(model, t_max, method=method)
        ph = phases(sol)
        sel = ph.is_local if ph.is_local.any() else np.ones_like(ph.is_local)
        for name in ("T1", "T2", "T3"):
            vals = getattr(ph, name)[sel]
            out[name] = float(np.median(vals)) if np.isfinite(vals).all() else np.nan
        out.update(final_loss=float(sol.loss[-1]), oracle_loss=area_oracle_loss(model),
                   min_target_fraction=float(np.min(sol.area_attention[-1] / model.ceiling())),
                   diversity=float(attention_diversity(sol)[-1]), status=float(sol.status),
                   nfev=float(sol.nfev))
        if mc:
            mc = dict(mc)
            seeds = mc.pop("seeds", 1)
            runs = [train_transformer(model, seed=s, progress=False, **mc) for s in range(int(seeds))]
            out["mc_max_error"] = compare(sol, runs)["area_attention"].max_abs_error
    except Exception as exc:          # a failed point is a result, not the end of the sweep
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["wall_time"] = time.perf_counter() - start
    if path is not None and not out["error"]:
        ds = xr.Dataset({k: v for k, v in out.items() if k != "error"},
                        attrs={"params": json.dumps(params, default=str)})
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4")
    return out


def _load_point(path: Path) -> dict:
    with xr.open_dataset(path, engine="netcdf4") as ds:
        out = {k: float(ds[k].values) for k in SUMMARY}
    out["error"] = ""
    return out


def _check_grid(grid) -> dict:
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty mapping parameter -> list of values, got {grid!r}")
    clean = {}
    for key, values in grid.items():
        vals = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
        if not vals:
            raise ValueError(f"grid[{key!r}] must hold at least one value, got {values!r}")
        clean[str(key)] = vals
    return clean


def sweep(model_factory, grid: dict, *, t_max: float, method: str = "exact", fixed: dict | None = None,
          mc: dict | None = None, out=None, client=None, progress=None) -> xr.Dataset:
    """Solve ``model_factory(**fixed, **point)`` at every point of ``grid`` as Dask tasks.

    Parameters
    ----------
    model_factory : str or callable
        A preset name ("global_local", "balanced") or a picklable function returning a DataModel.
    grid : dict
        Parameter name -> values; the sweep covers their Cartesian product.
    t_max, method : passed to ``solve``.
    fixed : dict, optional
        Further keyword arguments for every point.
    mc : dict, optional
        ``dict(steps=, lr=, batch_size=, seeds=)``: also train Monte-Carlo transformers per point
        and record their largest area-attention error against the flow.
    out : path, optional
        Directory for per-point files (a rerun skips points found there) and ``sweep.nc``.
    client : dask.distributed.Client, optional
        Default: a LocalCluster with one single-threaded worker process per core, closed after.
    progress : bool, optional
        A tqdm bar over finished points (default: on a terminal).

    Returns
    -------
    xarray.Dataset
        One dimension per grid parameter; variables final_loss, oracle_loss,
        min_target_fraction, T1, T2, T3 (median over local queries), diversity, mc_max_error,
        status, nfev, wall_time, and error ("" where the point succeeded). ``attrs["computed"]``
        counts the points run now (the others were read from ``out``).
    """
    from dask.distributed import Client, LocalCluster, as_completed

    if isinstance(model_factory, str) and model_factory not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {model_factory!r}")
    if not (isinstance(model_factory, str) or callable(model_factory)):
        raise ValueError(f"model_factory must be a preset name or a callable, got {model_factory!r}")
    grid = _check_grid(grid)
    fixed = dict(fixed or {})
    name = model_factory if isinstance(model_factory, str) else getattr(model_factory, "__qualname__", "factory")
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(grid)
    points = list(itertools.product(*grid.values()))
    results, todo = {}, []
    for idx in itertools.product(*(range(len(v)) for v in grid.values())):
        params = dict(fixed, **{k: grid[k][i] for k, i in zip(keys, idx)})
        path = None if out_dir is None else out_dir / f"point-{_point_key(name, params, t_max, method, mc)}.nc"
        if path is not None and path.is_file():
            results[idx] = _load_point(path)
        else:
            todo.append((idx, params, None if path is None else str(path)))

    own = client is None and todo
    if own:
        cluster = LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        if todo:
            futures = {client.submit(run_point, model_factory, params, t_max, method, mc, path, pure=False): idx
                       for idx, params, path in todo}
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
    finally:
        if own:
            client.close()
            cluster.close()

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
    ds = xr.Dataset(data, coords={k: np.asarray(v) for k, v in grid.items()})
    ds.attrs.update(model_factory=name, t_max=float(t_max), method=method, fixed=json.dumps(fixed, default=str),
                    mc=json.dumps(mc, default=str), computed=len(todo), points=len(points))
    if out_dir is not None:
        with atomic_path(out_dir / "sweep.nc") as tmp:
            ds.to_netcdf(tmp, engine="netcdf4")
    return ds


def sweep_from_file(grid_file, out, scheduler: str | None = None) -> xr.Dataset:
    """Run the sweep a TOML file describes::

        preset = "global_local"      # a name in gradflow.presets.PRESETS
        t_max = 1e4
        method = "exact"             # optional
        [fixed]                      # optional: the same for every point
        n_local = 4
        [grid]                       # the swept parameters
        P = [36, 64, 144]
        mask_ratio = [0.3, 0.5, 0.7]
        [mc]                         # optional: Monte-Carlo seeds per point
        steps = 2000
        lr = 0.05
        batch_size = 256
        seeds = 2
    """
    from .config import read_toml
    path = Path(grid_file)
    spec = read_toml(path, "grid file")
    for key in ("preset", "t_max", "grid"):
        if key not in spec:
            raise ValueError(f"grid file {str(path)!r} needs '{key}'")
    client = None
    if scheduler:
        from dask.distributed import Client
        try:
            client = Client(scheduler, timeout=10)
        except OSError as exc:
            raise ValueError(f"scheduler {scheduler!r} could not be reached: {exc}") from None
    try:
        return sweep(spec["preset"], spec["grid"], t_max=float(spec["t_max"]), method=spec.get("method", "exact"),
                     fixed=spec.get("fixed"), mc=spec.get("mc"), out=out, client=client)
    finally:
        if client is not None:
            client.close()
