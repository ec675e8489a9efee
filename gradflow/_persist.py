"""Saving and loading results: methods shared by Solution and TrainRun, implemented in io.py.

io.py sits above the modules defining the result classes, so it is imported when called.
"""
from __future__ import annotations


class Persistent:
    """Adds ``to_xarray``, ``save`` and ``load`` for a result whose ``_io_kind`` names its
    functions in ``gradflow.io`` (``<kind>_to_xarray``, ``save_<kind>``, ``load_<kind>``)."""

    _io_kind = ""

    def to_xarray(self):
        """The result as a labelled ``xarray.Dataset``."""
        from . import io
        return getattr(io, f"{self._io_kind}_to_xarray")(self)

    def save(self, path) -> None:
        """Write a NetCDF file atomically; ``load`` reads it back."""
        from . import io
        getattr(io, f"save_{self._io_kind}")(self, path)

    @classmethod
    def load(cls, path):
        from . import io
        return getattr(io, f"load_{cls._io_kind}")(path)
