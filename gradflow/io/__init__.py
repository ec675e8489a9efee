"""Files: output paths checked before work starts, atomic writes, checked NetCDF reads.

This package knows no gradflow result type (it sits under every layer that saves): each result
class defines its own schema and calls ``write_dataset`` / ``read_dataset``.
"""
from .atomic import atomic_path, check_output_path, check_output_paths, output_dir
from .netcdf import attribute, coordinate, finite_variables, load_dataset, read_dataset, write_dataset

__all__ = ["atomic_path", "attribute", "check_output_path", "check_output_paths", "coordinate", "finite_variables", "load_dataset",
           "output_dir", "read_dataset", "write_dataset"]
