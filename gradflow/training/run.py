"""``TrainRun``: the record of a trained transformer, comparable with a ``Solution``.

It exposes the same trajectory interface as a Solution (``t``, ``states`` at per-position
resolution, ``method``, ``model``), so phases, diversity and comparisons read both alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..errors import FileFormatError
from ..io import read_dataset, write_dataset
from ..model import DataModel
from ..theory.reduction import position_reduction
from ..theory.state import State

FORMAT_VERSION = 2          # 1: before status/message and the target_attention name
READS = (1, 2)


@dataclass(eq=False, repr=False)
class TrainRun:
    """Result of :func:`gradflow.train_transformer`.

    Attributes
    ----------
    t : (T,) gradient-flow time lr * step of every record (the first record is step 0).
    step : (T,) step count of every record.
    A, B : (T, P, F), (T, P, P) projections E^T Q V and E^T Q E.
    loss : (T,) batch loss averaged over the steps since the previous record (NaN at step 0).
    target_attention : (T, K, P) expected own-area unmasked attention of the projected state,
        defined as ``Solution.target_attention``.
    Q : (d, d) final matrix; E (d, P), V (d, F): the embeddings.
    status : 0 finished, -1 stopped early (``message`` says why, e.g. the loss diverged).
    """

    t: np.ndarray
    step: np.ndarray
    A: np.ndarray
    B: np.ndarray
    loss: np.ndarray
    target_attention: np.ndarray
    Q: np.ndarray
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

    @property
    def states(self) -> State:
        """The projected correlations as a trajectory of per-position States."""
        B = np.array(self.B, dtype=np.float64)
        diag = np.ascontiguousarray(np.diagonal(B, axis1=-2, axis2=-1))
        idx = np.arange(B.shape[-1])
        B[..., idx, idx] = 0.0
        return State(position_reduction(self.model), np.asarray(self.A, dtype=np.float64), B, diag)

    def __repr__(self) -> str:
        return (f"<gradflow.TrainRun seed {self.seed}, {self.model!r}\n"
                f" {self.step[-1]} of {self.steps} steps, lr {self.lr:g}, batch {self.batch_size}, d {self.d}, "
                f"{self.embeddings}; t up to {self.t[-1]:g} in {self.t.size} records; "
                f"status {self.status} ({self.message}), {self.wall_time:.3g} s>")

    # ---- files ------------------------------------------------------------------------------
    def to_xarray(self) -> xr.Dataset:
        """Dataset with dims time, cluster, query, key, feature and dim, dim2 (the d x d matrix Q)."""
        m = self.model
        ds = xr.Dataset(
            {"step": ("time", self.step), "A": (("time", "query", "feature"), self.A),
             "B": (("time", "query", "key"), self.B), "loss": ("time", self.loss),
             "target_attention": (("time", "cluster", "query"), self.target_attention),
             "Q": (("dim", "dim2"), self.Q), "E": (("dim", "query"), self.E), "V": (("dim", "feature"), self.V),
             "feature_cluster": ("feature", np.array([k for k, _ in m.features])),
             "feature_area": ("feature", np.array([j for _, j in m.features]))},
            coords={"time": self.t, "cluster": np.arange(m.n_clusters), "query": np.arange(m.n_patches),
                    "key": np.arange(m.n_patches), "feature": np.arange(m.n_features)})
        ds.attrs.update(gradflow_format=FORMAT_VERSION, kind="trainrun", model=m.to_json(),
                        seed=self.seed, steps=self.steps, lr=self.lr, batch_size=self.batch_size, d=self.d,
                        embeddings=self.embeddings, init_scale=self.init_scale, record_every=self.record_every,
                        wall_time=float(self.wall_time), status=int(self.status), message=self.message)
        ds["time"].attrs["long_name"] = "gradient-flow time lr * step"
        return ds

    def save(self, path) -> None:
        """Write a NetCDF file atomically; :meth:`load` reads it back."""
        write_dataset(self.to_xarray(), path)

    @classmethod
    def load(cls, path) -> "TrainRun":
        ds = read_dataset(path, "trainrun", READS, variables=("step", "A", "B", "loss", "Q", "E", "V"),
                          attrs=("model", "seed", "steps", "lr", "batch_size", "d", "embeddings", "init_scale",
                                 "record_every", "wall_time"))
        return cls.from_xarray(ds, source=str(path))

    @classmethod
    def from_xarray(cls, ds: xr.Dataset, source: str = "dataset") -> "TrainRun":
        model = DataModel.from_json(ds.attrs["model"], source)
        target = "target_attention" if "target_attention" in ds else "area_attention"
        if target not in ds:
            raise FileFormatError(f"{source} is not a complete gradflow trainrun: it lacks variable 'target_attention'")
        a = ds.attrs
        return cls(t=ds["time"].values, step=ds["step"].values, A=ds["A"].values, B=ds["B"].values,
                   loss=ds["loss"].values, target_attention=ds[target].values,
                   Q=ds["Q"].values, E=ds["E"].values, V=ds["V"].values, model=model,
                   seed=int(a["seed"]), steps=int(a["steps"]), lr=float(a["lr"]),
                   batch_size=int(a["batch_size"]), d=int(a["d"]), embeddings=str(a["embeddings"]),
                   init_scale=float(a["init_scale"]), record_every=int(a["record_every"]),
                   wall_time=float(a["wall_time"]), status=int(a.get("status", 0)),
                   message=str(a.get("message", "finished")))
