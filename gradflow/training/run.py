"""``TrainRun``: the record of a trained transformer, comparable with a ``Solution``.

It exposes the same trajectory interface as a Solution (``t``, ``states`` at per-position
resolution, ``method``, ``model``), so phases, diversity and comparisons read both alike.

Two kinds of run share it. The Numba trainer (and the PyTorch rungs that *are* the model's
transformer up to the optimiser) record the projected correlations A, B, and every observable is
the exact expectation of that projected state. A PyTorch rung without a single merged Q over
orthonormal embeddings and an identity value has no such A, B (they are None); it records
instead what its attention maps do on a fixed evaluation batch (``attention_by_area``,
``masked_mass``), and for such a run those measured masses *define* its observables and phase
times (docs/model.md section 6). A run may hold both (the bottom rung of the ladder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..errors import FileFormatError, InvalidInputError
from ..io import attribute, coordinate, finite_variables, read_dataset, write_dataset
from ..model import DataModel
from ..theory.reduction import position_reduction
from ..theory.state import State

FORMAT_VERSION = 3          # 1: before status/message and the target_attention name;
READS = (1, 2, 3)           # 2: A, B, Q always present, no measured observables


@dataclass(eq=False, repr=False)
class TrainRun:
    """Result of :func:`gradflow.train_transformer`.

    Attributes
    ----------
    t : (T,) gradient-flow time lr * step of every record (the first record is step 0).
    step : (T,) step count of every record.
    A, B : (T, P, F), (T, P, P) projections E^T Q V and E^T Q E, or None where the network has
        no single merged Q acting as in docs/model.md section 2 (see the module docstring).
    loss : (T,) batch loss averaged over the steps since the previous record (NaN at step 0).
    target_attention : (T, K, P) own-area unmasked attention of a masked query at p: the exact
        expectation of the projected state (as ``Solution.target_attention``) when A, B are
        recorded, otherwise the measured mass on the evaluation batch.
    Q : (d, d) final (effective) matrix, or None (no single merged Q); E (d, P), V (d, F): the
        embeddings of the data.
    status : 0 finished, -1 stopped early (``message`` says why, e.g. the loss diverged).
    attention_by_area : (T, K, P, N) or None: measured on a fixed evaluation batch, the mean
        attention mass a masked query at p (samples of cluster k) puts on the unmasked keys of
        each area of cluster k (N = most areas of a cluster; NaN past a cluster's areas).
    masked_mass : (T, K, P) or None: the same queries' mass on masked keys, themselves included.
    eval_loss : (T,) or None: the loss of docs/model.md section 2 on the evaluation batch.
    architecture : what was trained: {} for the Numba trainer, the ``train_torch`` options
        (``trainer`` "torch", attention, value, heads, ...) for a PyTorch run.
    """

    t: np.ndarray
    step: np.ndarray
    A: np.ndarray | None
    B: np.ndarray | None
    loss: np.ndarray
    target_attention: np.ndarray
    Q: np.ndarray | None
    E: np.ndarray
    V: np.ndarray
    model: DataModel
    seed: int
    steps: int
    lr: float
    batch_size: int
    d: int
    embeddings: str
    init_scale: float
    record_every: int
    wall_time: float = 0.0
    status: int = 0
    message: str = "finished"
    meta: dict = field(default_factory=dict, repr=False)
    attention_by_area: np.ndarray | None = None
    masked_mass: np.ndarray | None = None
    eval_loss: np.ndarray | None = None
    architecture: dict = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """True when the run carries attention measured on an evaluation batch; its phases and
        area masses are then read from those measurements."""
        return self.attention_by_area is not None

    @property
    def states(self) -> State:
        """The projected correlations as a trajectory of per-position States."""
        if self.A is None or self.B is None:
            raise InvalidInputError(
                "this run has no projected correlations A, B (its network has no single merged Q over "
                "orthonormal embeddings with an identity value); its observables are the measured "
                "attention_by_area and masked_mass")
        B = np.array(self.B, dtype=np.float64)
        diag = np.ascontiguousarray(np.diagonal(B, axis1=-2, axis2=-1))
        idx = np.arange(B.shape[-1])
        B[..., idx, idx] = 0.0
        return State(position_reduction(self.model), np.asarray(self.A, dtype=np.float64), B, diag)

    def __repr__(self) -> str:
        arch = "" if not self.architecture else " " + _describe(self.architecture) + ";"
        return (f"<gradflow.TrainRun seed {self.seed}, {self.model!r}\n"
                f"{arch} {self.step[-1]} of {self.steps} steps, lr {self.lr:g}, batch {self.batch_size}, d {self.d}, "
                f"{self.embeddings}; t up to {self.t[-1]:g} in {self.t.size} records; "
                f"status {self.status} ({self.message}), {self.wall_time:.3g} s>")

    # ---- files ------------------------------------------------------------------------------
    def to_xarray(self) -> xr.Dataset:
        """Dataset with dims time, cluster, query, key, feature, area and dim, dim2 (the d x d
        matrix Q); A, B, Q and the measured observables appear when the run has them."""
        m = self.model
        data = {"step": ("time", self.step), "loss": ("time", self.loss),
                "target_attention": (("time", "cluster", "query"), self.target_attention),
                "E": (("dim", "query"), self.E), "V": (("dim", "feature"), self.V),
                "feature_cluster": ("feature", np.array([k for k, _ in m.features])),
                "feature_area": ("feature", np.array([j for _, j in m.features]))}
        optional = {"A": (("time", "query", "feature"), self.A), "B": (("time", "query", "key"), self.B),
                    "Q": (("dim", "dim2"), self.Q),
                    "attention_by_area": (("time", "cluster", "query", "area"), self.attention_by_area),
                    "masked_mass": (("time", "cluster", "query"), self.masked_mass),
                    "eval_loss": ("time", self.eval_loss)}
        data.update({name: (dims, value) for name, (dims, value) in optional.items() if value is not None})
        ds = xr.Dataset(data, coords={"time": self.t, "cluster": np.arange(m.n_clusters),
                                      "query": np.arange(m.n_patches), "key": np.arange(m.n_patches),
                                      "feature": np.arange(m.n_features)})
        ds.attrs.update(gradflow_format=FORMAT_VERSION, kind="trainrun", model=m.to_json(),
                        seed=self.seed, steps=self.steps, lr=self.lr, batch_size=self.batch_size, d=self.d,
                        embeddings=self.embeddings, init_scale=self.init_scale, record_every=self.record_every,
                        wall_time=float(self.wall_time), status=int(self.status), message=self.message,
                        architecture=json.dumps(self.architecture, sort_keys=True))
        ds["time"].attrs["long_name"] = "gradient-flow time lr * step"
        if self.attention_by_area is not None:
            ds["attention_by_area"].attrs["long_name"] = (
                "measured mean attention of a masked query on the unmasked keys of each area")
        return ds

    def save(self, path) -> None:
        """Write a NetCDF file atomically; :meth:`load` reads it back."""
        write_dataset(self.to_xarray(), path)

    @classmethod
    def load(cls, path) -> "TrainRun":
        """Rebuild a TrainRun; a file without its times, with times or steps that are not finite
        and increasing, or with non-finite matrices is refused (FileFormatError naming the file
        and what is wrong)."""
        ds = read_dataset(path, "trainrun", READS, variables=("time", "step", "loss", "E", "V"),
                          attrs=("model", "seed", "steps", "lr", "batch_size", "d", "embeddings", "init_scale",
                                 "record_every", "wall_time"))
        return cls.from_xarray(ds, source=f"file {str(path)!r}")

    @classmethod
    def from_xarray(cls, ds: xr.Dataset, source: str = "dataset") -> "TrainRun":
        model = DataModel.from_json(attribute(ds, "model", str, source), source)
        target = "target_attention" if "target_attention" in ds else "area_attention"
        needed = ["step", "loss", "E", "V", target] + (["A", "B", "Q"] if "attention_by_area" not in ds
                                                       else ["masked_mass"])
        missing = [name for name in needed if name not in ds]
        if missing:
            raise FileFormatError(f"{source} is not a complete gradflow trainrun: it lacks variable "
                                  + ", ".join(repr(name) for name in missing))
        t = coordinate(ds, "time", source)
        step = coordinate(ds, "step", source, integral=True).astype(np.int64)
        # the state: the matrices and the projections (measured masses may be NaN where a query
        # was never masked on the evaluation batch)
        finite_variables(ds, ("A", "B", "Q", "E", "V"), source)

        def opt(name):
            return ds[name].values if name in ds else None

        try:
            architecture = json.loads(attribute(ds, "architecture", str, source, default="{}"))
        except ValueError as exc:
            raise FileFormatError(f"{source}: its architecture attribute is not JSON: {exc}") from None
        if not isinstance(architecture, dict):
            raise FileFormatError(f"{source}: its architecture attribute must be a JSON object, got {architecture!r}")
        ints = {name: attribute(ds, name, int, source) for name in ("seed", "steps", "batch_size", "d", "record_every")}
        floats = {name: attribute(ds, name, float, source) for name in ("lr", "init_scale", "wall_time")}
        return cls(t=t, step=step, A=opt("A"), B=opt("B"), loss=ds["loss"].values, target_attention=ds[target].values,
                   Q=opt("Q"), E=ds["E"].values, V=ds["V"].values, model=model,
                   embeddings=attribute(ds, "embeddings", str, source), **ints, **floats,
                   status=attribute(ds, "status", int, source, default=0),
                   message=attribute(ds, "message", str, source, default="finished"),
                   attention_by_area=opt("attention_by_area"), masked_mass=opt("masked_mass"),
                   eval_loss=opt("eval_loss"), architecture=architecture)


def _describe(architecture: dict) -> str:
    """One line naming the options of a PyTorch run."""
    return ", ".join(f"{k} {v}" for k, v in architecture.items() if k != "trainer")
