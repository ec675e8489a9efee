"""Results on disk: Solution and TrainRun as labelled xarray Datasets in NetCDF files.

Files carry the model spec (JSON in the ``model`` attribute) so that loading rebuilds the
DataModel, and a format version that is checked on load. Writes are atomic.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.interpolate import CubicHermiteSpline

from ._atomic import atomic_path
from .model import DataModel
from .montecarlo import TrainRun
from .population import evaluate
from .reduction import position_reduction, signature_reduction
from .solver import Solution

FORMAT_VERSION = 1
FULL_LIMIT = 50_000_000     # per-position B (T x P x P) is written only below this many numbers


def _features(model: DataModel) -> dict:
    return {"feature_cluster": ("feature", np.array([k for k, _ in model.features])),
            "feature_area": ("feature", np.array([j for _, j in model.features]))}


def solution_to_xarray(sol: Solution, full: bool | None = None) -> xr.Dataset:
    """Dataset with dims time, cluster, query, key, feature (per position) and class, key_class
    (the reduced state the solution evolves). ``full=None`` includes per-position A, B and
    area_attention unless B would exceed FULL_LIMIT numbers."""
    m, red = sol.model, sol.reduction
    T, P = sol.t.size, m.n_patches
    full = (T * P * P <= FULL_LIMIT) if full is None else full
    data = {
        "A_classes": (("time", "class", "feature"), sol.A_classes),
        "B_classes": (("time", "class", "key_class"), sol.B_classes),
        "B_self": (("time", "class"), sol.B_self),
        "class_of": ("query", red.class_of),
        "loss": ("time", sol.loss),
        "area_attention_classes": (("time", "cluster", "class"), sol.area_attention_classes),
        **_features(m),
    }
    if full:
        data["area_attention"] = (("time", "cluster", "query"), sol.area_attention)
        data["A"] = (("time", "query", "feature"), sol.A)
        data["B"] = (("time", "query", "key"), sol.B)
    ds = xr.Dataset(data, coords={"time": sol.t, "cluster": np.arange(m.n_clusters),
                                  "query": np.arange(P), "key": np.arange(P),
                                  "feature": np.arange(m.n_features)})
    ds.attrs.update(gradflow_format=FORMAT_VERSION, kind="solution", model=json.dumps(m.to_dict()),
                    method=sol.method, status=int(sol.status), message=sol.message, nfev=int(sol.nfev),
                    wall_time=float(sol.wall_time),
                    # signature classes, or every position its own class (a solve from init=...)
                    resolution="signature" if np.array_equal(red.class_of, m.class_of) else "position")
    ds["A_classes"].attrs["long_name"] = "feature-position correlation e_p^T Q v_f per class"
    ds["B_classes"].attrs["long_name"] = "position-position correlation e_p^T Q e_q (p != q) per class pair"
    ds["B_self"].attrs["long_name"] = "self correlation e_p^T Q e_p of a class"
    ds["area_attention_classes"].attrs["long_name"] = (
        "expected attention of a masked query on unmasked keys of its own area, per class")
    ds["time"].attrs["long_name"] = "gradient-flow time"
    return ds


def trainrun_to_xarray(run: TrainRun) -> xr.Dataset:
    """Dataset with dims time, cluster, query, key, feature and dim, dim2 (the d x d matrix Q)."""
    m = run.model
    ds = xr.Dataset(
        {"step": ("time", run.step), "A": (("time", "query", "feature"), run.A),
         "B": (("time", "query", "key"), run.B), "loss": ("time", run.loss),
         "area_attention": (("time", "cluster", "query"), run.area_attention),
         "Q": (("dim", "dim2"), run.Q), "E": (("dim", "query"), run.E), "V": (("dim", "feature"), run.V),
         **_features(m)},
        coords={"time": run.t, "cluster": np.arange(m.n_clusters), "query": np.arange(m.n_patches),
                "key": np.arange(m.n_patches), "feature": np.arange(m.n_features)})
    ds.attrs.update(gradflow_format=FORMAT_VERSION, kind="trainrun", model=json.dumps(m.to_dict()),
                    seed=run.seed, steps=run.steps, lr=run.lr, batch_size=run.batch_size, d=run.d,
                    embeddings=run.embeddings, init_scale=run.init_scale, record_every=run.record_every,
                    wall_time=float(run.wall_time))
    ds["time"].attrs["long_name"] = "gradient-flow time lr * step"
    return ds


def _write(ds: xr.Dataset, path) -> None:
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


def _read(path, kind: str) -> tuple[xr.Dataset, DataModel]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except Exception as exc:            # netCDF4 raises OSError/RuntimeError/KeyError variants
        raise ValueError(f"file {str(path)!r} is not a readable NetCDF file: {exc}") from None
    fmt, got = ds.attrs.get("gradflow_format"), ds.attrs.get("kind")
    if got != kind:
        raise ValueError(f"file {str(path)!r} holds {got!r}, not a gradflow {kind}")
    if fmt != FORMAT_VERSION:
        raise ValueError(f"file {str(path)!r} has gradflow_format {fmt!r}; this gradflow reads {FORMAT_VERSION}")
    return ds, DataModel.from_dict(json.loads(ds.attrs["model"]))


def save_solution(sol: Solution, path) -> None:
    _write(solution_to_xarray(sol), path)


def load_solution(path) -> Solution:
    """Rebuild a Solution; ``at(t)`` interpolates the stored states with cubic Hermite splines
    whose slopes are the flow's velocities at the stored times."""
    ds, model = _read(path, "solution")
    red = signature_reduction(model) if ds.attrs["resolution"] == "signature" else position_reduction(model)
    if not np.array_equal(red.class_of, ds["class_of"].values):
        raise ValueError(f"file {str(path)!r}: its classes do not match the stored model")
    method = ds.attrs["method"]
    A, B, Bs = ds["A_classes"].values, ds["B_classes"].values, ds["B_self"].values
    t = ds["time"].values
    ys = np.concatenate([A.reshape(t.size, -1), B.reshape(t.size, -1), Bs], axis=1)
    dys = np.empty_like(ys)
    for i in range(t.size):
        _, gA, gB, gS = evaluate(red, method, A[i], B[i], Bs[i])
        dys[i] = -red.pack(gA, gB, gS)
    dense = CubicHermiteSpline(t, ys, dys, axis=0) if t.size > 1 else None
    return Solution(t=t, A_classes=A, B_classes=B, B_self=Bs, loss=ds["loss"].values,
                    area_attention_classes=ds["area_attention_classes"].values, model=model, method=method,
                    reduction=red, status=int(ds.attrs["status"]), message=str(ds.attrs["message"]),
                    nfev=int(ds.attrs["nfev"]), wall_time=float(ds.attrs["wall_time"]), _dense=dense)


def save_trainrun(run: TrainRun, path) -> None:
    _write(trainrun_to_xarray(run), path)


def load_trainrun(path) -> TrainRun:
    ds, model = _read(path, "trainrun")
    a = ds.attrs
    return TrainRun(t=ds["time"].values, step=ds["step"].values, A=ds["A"].values, B=ds["B"].values,
                    loss=ds["loss"].values, area_attention=ds["area_attention"].values,
                    Q=ds["Q"].values, E=ds["E"].values, V=ds["V"].values, model=model,
                    seed=int(a["seed"]), steps=int(a["steps"]), lr=float(a["lr"]),
                    batch_size=int(a["batch_size"]), d=int(a["d"]), embeddings=str(a["embeddings"]),
                    init_scale=float(a["init_scale"]), record_every=int(a["record_every"]),
                    wall_time=float(a["wall_time"]))
