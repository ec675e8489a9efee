"""Files: output paths checked before work starts, atomic writes, checked NetCDF reads.

This package knows no gradflow result type (it sits under every layer that saves): each result
class defines its own schema and calls ``write_dataset`` / ``read_dataset``.
"""
from .atomic import atomic_path, check_output_path
from .netcdf import read_dataset, write_dataset

__all__ = ["atomic_path", "check_output_path", "read_dataset", "write_dataset"]
