"""Data models from TOML files (``gradflow solve --config FILE.toml``).

Format::

    mask_ratio = 0.5
    grid = [4, 4]                 # or: n_patches = 16
    [[clusters]]
    areas = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    prob = 0.5                    # optional (default uniform)
    amplitudes = { uniform = [0.5, 1.5], n_atoms = 8 }      # optional, every area
    [[clusters]]
    areas = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    [clusters.amplitudes.1]       # optional, one area by its label
    values = [0.5, 2.0]
    weights = [0.5, 0.5]
"""
from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .model import Amplitude, Cluster, DataModel


def _amplitude(spec, where: str) -> Amplitude:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a table, got {spec!r}")
    if "uniform" in spec:
        bounds, n_atoms = spec["uniform"], spec.get("n_atoms", 8)
        if not (isinstance(bounds, list) and len(bounds) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
            raise ValueError(f"{where}.uniform must be [low, high], got {bounds!r}")
        if isinstance(n_atoms, bool) or not isinstance(n_atoms, int):
            raise ValueError(f"{where}.n_atoms must be an integer, got {n_atoms!r}")
        return Amplitude.uniform(bounds[0], bounds[1], n_atoms)
    if "values" in spec:
        return Amplitude(spec["values"], spec.get("weights"))
    raise ValueError(f"{where} needs 'values' (and 'weights') or 'uniform = [low, high]', got {spec!r}")


def model_from_dict(spec: dict) -> DataModel:
    """DataModel from a parsed config (see the module docstring)."""
    clusters = []
    raw = spec.get("clusters", [])
    if not isinstance(raw, list):
        raise ValueError(f"clusters must be a list of tables ([[clusters]]), got {raw!r}")
    for k, c in enumerate(raw):
        if not isinstance(c, dict) or "areas" not in c:
            raise ValueError(f"clusters[{k}] must be a table with 'areas', got {c!r}")
        amps = c.get("amplitudes")
        if isinstance(amps, dict) and amps and all(str(key).isdigit() for key in amps):
            amps = {int(key): _amplitude(v, f"clusters[{k}].amplitudes.{key}") for key, v in amps.items()}
        elif amps is not None:
            amps = _amplitude(amps, f"clusters[{k}].amplitudes")
        clusters.append(Cluster(c["areas"], prob=c.get("prob"), amplitudes=amps))
    if "mask_ratio" not in spec:
        raise ValueError("config needs mask_ratio")
    return DataModel(n_patches=spec.get("n_patches"), grid=spec.get("grid"), clusters=clusters,
                     mask_ratio=spec["mask_ratio"])


def read_toml(path, what: str = "config file") -> dict:
    """Parse a TOML file; ValueError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {str(path)!r} is not valid TOML: {exc}") from None


def load_model(path) -> DataModel:
    """DataModel from a TOML file; ValueError (naming the file) when it is missing or malformed."""
    return model_from_dict(read_toml(path))
