"""Data models from TOML files (``gradflow solve --config FILE.toml``), read against a schema.

Every table has a fixed set of keys: an unknown key is an error that names it and the nearest
known one, and every value's type is checked (``mask_ratio = "0.5"`` is refused, not coerced).
``gradflow config --example`` prints :data:`EXAMPLE`, a template that works as it is.
"""
from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .._validate import check_names, fmt, is_int, is_real
from ..errors import ConfigError, FileFormatError, InvalidInputError
from .amplitude import Amplitude
from .datamodel import Cluster, DataModel

EXAMPLE = """\
# A gradflow data model (docs/model.md section 1). Use it with
#   gradflow solve --config model.toml      (or verify, train)
mask_ratio = 0.5                  # probability that a patch is masked, in (0, 1)
grid = [4, 4]                     # H x W patches, row-major; or: n_patches = 16

[[clusters]]                      # one table per cluster
# area label of every patch (rows of the grid, or one flat list of P labels), labels 0..N-1
areas = [[0, 0, 1, 1],
         [0, 0, 1, 1],
         [2, 2, 3, 3],
         [2, 2, 3, 3]]
prob = 0.5                        # optional; give it for every cluster or for none (uniform)
# optional: one amplitude law for every area of the cluster (default: z = 1)
amplitudes = { uniform = [0.5, 1.5], n_atoms = 8 }

[[clusters]]
areas = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
prob = 0.5
[clusters.amplitudes.1]           # optional: the law of one area, by its label
values = [0.5, 2.0]               # atoms z > 0
weights = [0.5, 0.5]              # their probabilities (default: equal)
"""

MODEL_KEYS = ("mask_ratio", "grid", "n_patches", "clusters")
CLUSTER_KEYS = ("areas", "prob", "amplitudes")
UNIFORM_KEYS = ("uniform", "n_atoms")
ATOM_KEYS = ("values", "weights")


def check_keys(table: dict, known, where: str) -> None:
    """Refuse keys outside ``known``, naming the key and the nearest known one."""
    check_names(where, table, known, error=ConfigError)


def _labels(value, where: str) -> list:
    """Area labels as TOML gives them: a list of integers, or a list of rows of integers. A
    boolean (``true``) or a float (``0.0``) is refused, not read as a label."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list of integer labels (or of rows of them), "
                          f"got {fmt(value)}")
    rows = value if all(isinstance(row, list) for row in value) else [value]
    for r, row in enumerate(rows):
        for c, label in enumerate(row):
            if not is_int(label):
                at = f"{where}[{r}][{c}]" if rows is value else f"{where}[{c}]"
                kind = {bool: "a boolean", float: "a float", str: "a string"}.get(type(label), type(label).__name__)
                raise ConfigError(f"{at} must be an integer area label 0, 1, ..., got {fmt(label)} ({kind})")
    return value


def _number(value, where: str) -> float:
    if not is_real(value):
        raise ConfigError(f"{where} must be a number, got {fmt(value)}")
    return float(value)


def _integer(value, where: str) -> int:
    if not is_int(value):
        raise ConfigError(f"{where} must be an integer, got {fmt(value)}")
    return int(value)


def _numbers(value, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list of numbers, got {fmt(value)}")
    return [_number(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _amplitude(spec, where: str) -> Amplitude:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table, got {fmt(spec)}")
    if "uniform" in spec:
        check_keys(spec, UNIFORM_KEYS, where)
        bounds = _numbers(spec["uniform"], f"{where}.uniform")
        if len(bounds) != 2:
            raise ConfigError(f"{where}.uniform must be [low, high], got {fmt(spec['uniform'])}")
        return Amplitude.uniform(bounds[0], bounds[1], _integer(spec.get("n_atoms", 8), f"{where}.n_atoms"))
    if "values" in spec:
        check_keys(spec, ATOM_KEYS, where)
        weights = spec.get("weights")
        return Amplitude(_numbers(spec["values"], f"{where}.values"),
                         None if weights is None else _numbers(weights, f"{where}.weights"))
    check_keys(spec, UNIFORM_KEYS + ATOM_KEYS, where)
    raise ConfigError(f"{where} needs 'values' (and 'weights') or 'uniform = [low, high]', got {fmt(spec)}")


def _cluster_amplitudes(spec, where: str, n_areas: int):
    """One table for every area, or a table of per-area tables keyed by label (not both)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table, got {fmt(spec)}")
    labelled = [key for key in spec if str(key).isdigit()]
    for key in labelled:
        if str(int(key)) != key:          # '01' and '1' would name the same area
            raise ConfigError(f"{where}.{key}: an area label is written as a plain integer, without leading "
                              f"zeros or other digits: {int(key)!r}, not {key!r}")
    if not labelled:
        return _amplitude(spec, where)
    if len(labelled) != len(spec):
        other = [key for key in spec if key not in labelled]
        raise ConfigError(f"{where} mixes per-area tables ({labelled}) with keys of one law ({other}): "
                          f"give either one law for every area or one table per area label")
    out = {}
    for key in labelled:
        label = int(key)
        if label >= n_areas:
            raise ConfigError(f"{where}.{key}: no area {label} (labels 0..{n_areas - 1})")
        out[label] = _amplitude(spec[key], f"{where}.{key}")
    return out


def model_from_dict(spec: dict) -> DataModel:
    """DataModel from a parsed config (``gradflow config --example`` prints an example)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"config must be a table, got {fmt(spec)}")
    check_keys(spec, MODEL_KEYS, "config")
    if "mask_ratio" not in spec:
        raise ConfigError("config needs mask_ratio")
    raw = spec.get("clusters")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"config needs clusters, a list of tables ([[clusters]]), got {fmt(raw)}")
    try:
        clusters = []
        for k, c in enumerate(raw):
            where = f"clusters[{k}]"
            if not isinstance(c, dict) or "areas" not in c:
                raise ConfigError(f"{where} must be a table with 'areas', got {fmt(c)}")
            check_keys(c, CLUSTER_KEYS, where)
            prob = None if c.get("prob") is None else _number(c["prob"], f"{where}.prob")
            areas = Cluster(_labels(c["areas"], f"{where}.areas"))     # the labels before the amplitudes
            amps = _cluster_amplitudes(c.get("amplitudes"), f"{where}.amplitudes", areas.n_areas)
            clusters.append(Cluster(c["areas"], prob=prob, amplitudes=amps))
        n_patches = None if spec.get("n_patches") is None else _integer(spec["n_patches"], "n_patches")
        grid = spec.get("grid")
        if grid is not None and not (isinstance(grid, list) and all(is_int(x) for x in grid)):
            raise ConfigError(f"grid must be [H, W], two integers, got {fmt(grid)}")
        return DataModel(n_patches=n_patches, grid=grid, clusters=clusters,
                         mask_ratio=_number(spec["mask_ratio"], "mask_ratio"))
    except ConfigError:
        raise
    except InvalidInputError as exc:            # the model's own validation, reported as config
        raise ConfigError(f"config: {exc}") from None


def read_toml(path, what: str = "config file") -> dict:
    """Parse a TOML file; FileFormatError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{what} {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{what} {str(path)!r} is not valid TOML: {exc}") from None


def load_model(path) -> DataModel:
    """DataModel from a TOML file (``gradflow config --example`` prints an example)."""
    try:
        return model_from_dict(read_toml(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
