"""NetCDF files of labelled xarray Datasets: atomic writes, and reads that check what they get.

Every gradflow file carries ``gradflow_format`` (a version) and ``kind`` (what it holds)
attributes. Reading checks both and that the variables and attributes a kind needs are there,
naming the file and what is missing. This module knows no gradflow result type: each result
class owns its schema (``to_xarray`` / ``from_xarray``) and calls these functions: ``read_dataset``
for the file, ``coordinate`` / ``finite_variables`` / ``attribute`` for the values (times that
are there, finite and increasing; finite states; attributes of the right type).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import xarray as xr

from .._validate import first_descent
from ..errors import FileFormatError
from .atomic import atomic_path


# The HDF5 library under netCDF4 is not thread-safe as commonly built: two threads writing files at
# once (the ladder's runs on the threads of a Dask worker, each saving its TrainRun) crashed the
# process with a segmentation fault inside the library. Every read and write of a NetCDF file
# goes through this lock; it is held only for the file access itself, not for the work around it.
NETCDF_LOCK = threading.RLock()


def write_dataset(ds: xr.Dataset, path) -> None:
    """Write ``ds`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, NETCDF_LOCK:
        ds.to_netcdf(tmp, engine="netcdf4")


def load_dataset(path) -> xr.Dataset:
    """The whole file at ``path``, loaded into memory (the file is closed again); no checks."""
    with NETCDF_LOCK:
        return xr.load_dataset(path, engine="netcdf4")


def read_dataset(path, kind: str, versions, variables=(), attrs=()) -> xr.Dataset:
    """Load a gradflow file of ``kind`` written in one of ``versions``.

    Raises FileFormatError naming the file when it is missing, unreadable, of another kind or
    version, or lacks one of ``variables`` or ``attrs``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"file {str(path)!r} does not exist")
    try:
        ds = load_dataset(path)
    except Exception as exc:            # netCDF4 raises OSError/RuntimeError/KeyError variants
        raise FileFormatError(f"file {str(path)!r} is not a readable NetCDF file: {exc}") from None
    got, fmt = ds.attrs.get("kind"), ds.attrs.get("gradflow_format")
    if got != kind:
        raise FileFormatError(f"file {str(path)!r} holds {got!r}, not a gradflow {kind}")
    if fmt not in versions:
        raise FileFormatError(f"file {str(path)!r} has gradflow_format {fmt!r}; this gradflow reads "
                              f"{' or '.join(str(v) for v in versions)}")
    missing = [f"variable {v!r}" for v in variables if v not in ds.variables] + \
              [f"attribute {a!r}" for a in attrs if a not in ds.attrs]
    if missing:
        raise FileFormatError(f"file {str(path)!r} is not a complete gradflow {kind}: it lacks "
                              + ", ".join(missing))
    return ds


def coordinate(ds: xr.Dataset, name: str, source: str, *, integral: bool = False) -> np.ndarray:
    """The values of the coordinate (or variable) ``name``: present in the file (not the index
    0, 1, 2, ... xarray makes up for a dimension without one), 1-d, real, finite and strictly
    increasing (and whole numbers with ``integral``); FileFormatError naming ``source`` and what
    is wrong otherwise."""
    if name not in ds.variables:
        raise FileFormatError(f"{source} is not a complete gradflow file: it lacks the coordinate {name!r}")
    values = ds[name].values
    what = f"{source}: its {name!r} values"
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise FileFormatError(f"{what} must be a 1-d array of real numbers, got {values.dtype} of shape "
                              f"{values.shape}")
    if values.size == 0:
        raise FileFormatError(f"{what}: there are none")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise FileFormatError(f"{what} must be finite, got {values[bad[0]].item()!r} at entry {int(bad[0])}")
    if integral and np.any(values != np.round(values)):
        i = int(np.flatnonzero(values != np.round(values))[0])
        raise FileFormatError(f"{what} must be whole numbers, got {values[i].item()!r} at entry {i}")
    descent = first_descent(values)
    if descent:
        raise FileFormatError(f"{what} must be strictly increasing, {descent}")
    return values


def finite_variables(ds: xr.Dataset, names, source: str) -> None:
    """Refuse a file whose variables ``names`` (those it holds) have non-finite entries."""
    for name in names:
        if name not in ds.variables:
            continue
        values = ds[name].values
        if values.dtype.kind not in "iuf":
            raise FileFormatError(f"{source}: variable {name!r} must hold real numbers, got {values.dtype}")
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            raise FileFormatError(f"{source}: variable {name!r} holds non-finite values ({bad.shape[0]} of "
                                  f"{values.size}, the first {values[tuple(bad[0])].item()!r} at {tuple(bad[0].tolist())}); "
                                  f"the file is damaged or was not written by gradflow")


_MISSING = object()


def attribute(ds: xr.Dataset, name: str, kind: type, source: str, default=_MISSING, options=None):
    """The attribute ``name`` as ``kind`` (int, float or str): whole numbers for int, finite
    numbers for float, one of ``options`` when given; ``default`` when absent (if given); else
    FileFormatError naming ``source`` and the attribute."""
    if name not in ds.attrs:
        if default is not _MISSING:
            return default
        raise FileFormatError(f"{source} is not a complete gradflow file: it lacks attribute {name!r}")
    value = ds.attrs[name]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, np.generic):
        value = value.item()
    if options is not None and value not in options:
        raise FileFormatError(f"{source}: attribute {name!r} must be one of {list(options)}, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) \
            and (kind is float or float(value) == round(float(value))):
        return kind(value)
    want = {int: "a whole number", float: "a finite number", str: "text"}[kind]
    raise FileFormatError(f"{source}: attribute {name!r} must be {want}, got {value!r}")
