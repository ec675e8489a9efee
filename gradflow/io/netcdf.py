"""NetCDF files of labelled xarray Datasets: atomic writes, and reads that check what they get.

Every gradflow file carries ``gradflow_format`` (a version) and ``kind`` (what it holds)
attributes. Reading checks both and that the variables and attributes a kind needs are there,
naming the file and what is missing. This module knows no gradflow result type: each result
class owns its schema (``to_xarray`` / ``from_xarray``) and calls these functions.
"""
from __future__ import annotations

from pathlib import Path

import xarray as xr

from ..errors import FileFormatError
from .atomic import atomic_path


def write_dataset(ds: xr.Dataset, path) -> None:
    """Write ``ds`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


def read_dataset(path, kind: str, versions, variables=(), attrs=()) -> xr.Dataset:
    """Load a gradflow file of ``kind`` written in one of ``versions``.

    Raises FileFormatError naming the file when it is missing, unreadable, of another kind or
    version, or lacks one of ``variables`` or ``attrs``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"file {str(path)!r} does not exist")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
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
