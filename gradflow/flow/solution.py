"""``Solution``: what :func:`gradflow.solve` returns (cf. ``scipy.integrate.solve_ivp``'s result).

It keeps the class-reduced trajectory; per-position arrays, the loss and the attention
observables are computed from it when first asked for, then kept. Files hold the class-reduced
state and the class map at every P (NetCDF, ``save`` / ``load``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .._validate import check_memory, choice, is_int, is_real
from ..errors import FileFormatError, InvalidInputError
from ..io import read_dataset, write_dataset
from ..model import DataModel
from ..theory.population import attention_by_area, attention_maps, loss, loss_and_gradient
from ..theory.reduction import QUADRATURE_STEPS, position_reduction, signature_reduction
from ..theory.state import State
from .observables import (
    OBSERVABLE_METHOD,
    AreaMasses,
    area_masses,
    observed_states,
    own_area,
    target_fraction,
)

QUADRATURE_RULES = tuple(QUADRATURE_STEPS)      # the t-rules a file may name
FORMAT_VERSION = 2          # 1: per-position A, B stored beside the classes at small P
READS = (1, 2)


@dataclass(eq=False, repr=False)
class Solution:
    """Result of :func:`gradflow.solve`.

    Attributes
    ----------
    t : (T,) output times.
    states : State with a leading time axis: ``A_classes`` (T, S, F), ``B_classes`` (T, S, S),
        ``B_self`` (T, S); ``states[i]`` or ``state(i)`` is one time, ``at(t)`` any time.
    loss : (T,) the loss the flow descends: the exact population loss, or the mean-field loss
        for a mean-field flow, at the output times (evaluated on first access, in one pass;
        ``loss_at(i)`` evaluates one). ``step_loss`` has it for free at the integrator's steps.
    target_attention : (T, K, P) expected mass a masked query at p puts on the unmasked keys of
        its own area in cluster k (``target_attention_classes`` (T, K, S) per class). Attention
        observables are exact expectations of the state, also for a mean-field flow.
    target_fraction : (T, K, P) target attention / ceiling; NaN for single-patch areas.
    model, method : what was solved and how; ``reduction`` the class resolution.
    status : 0 success, -1 the integration stopped early (``message`` says why).
    converged : for ``solve(t_max=None)``, whether the convergence rule was met (else None).
    integrator : the SciPy method that integrated it (``integrator="auto"`` chooses by size).
    quadrature : the t-integrals' rule of its gradient passes, "fine" or "fast" (``solve``).
    nfev : evaluations of the gradient; ``wall_time`` seconds spent in ``solve``.
    step_t, step_loss : the integrator's step ends and the loss there where the gradient pass
        computed it (NaN elsewhere): the flow's own record of its monotone descent.
    step_masses : AreaMasses at every step end, or None: the exact attention by area that an
        exact flow's gradient pass computes with the gradient (explicit Runge-Kutta methods
        evaluate it at each step end). Phase times are read from it when present: it is exact,
        free, and denser than the output times where the flow moves fastest.
    """

    t: np.ndarray
    states: State
    model: DataModel
    method: str
    status: int
    message: str
    nfev: int
    wall_time: float
    _dense: object = field(default=None, repr=False)
    _loss: np.ndarray | None = field(default=None, repr=False)
    _target_classes: np.ndarray | None = field(default=None, repr=False)
    converged: bool | None = None
    integrator: str = ""
    quadrature: str = "fine"
    step_t: np.ndarray | None = field(default=None, repr=False)
    step_loss: np.ndarray | None = field(default=None, repr=False)
    step_masses: AreaMasses | None = field(default=None, repr=False)

    # ---- the trajectory ---------------------------------------------------------------------
    @property
    def reduction(self):
        return self.states.reduction

    @property
    def A_classes(self) -> np.ndarray:
        return self.states.A_classes

    @property
    def B_classes(self) -> np.ndarray:
        return self.states.B_classes

    @property
    def B_self(self) -> np.ndarray:
        return self.states.B_self

    @property
    def A(self) -> "PerPosition":
        """(T, P, F) per-position feature-position correlations, expanded where indexed."""
        return PerPosition(self.states, "A")

    @property
    def B(self) -> "PerPosition":
        """(T, P, P) per-position position-position correlations, expanded where indexed:
        ``sol.B[i]`` is one (P, P) matrix; ``np.asarray(sol.B)`` expands every time."""
        return PerPosition(self.states, "B")

    @property
    def success(self) -> bool:
        return self.status >= 0

    def state(self, i: int) -> State:
        """The state at output index ``i``."""
        return self.states[self._index(i)]

    def _index(self, i) -> int:
        if not is_int(i) or not (-self.t.size <= i < self.t.size):
            raise InvalidInputError(f"i must be an output index in 0..{self.t.size - 1}, got {i!r}")
        return int(i)

    def dense_range(self) -> tuple[float, float]:
        """Times ``at`` can evaluate: [0, t_max] after a solve, the stored span after a load."""
        if self._dense is None:
            raise InvalidInputError(f"this solution holds a single time (t = {self.t[0]:g}): it has no dense output")
        lo = getattr(self._dense, "t_min", None)
        lo = float(self._dense.x[0]) if lo is None else float(lo)
        return lo, float(self.t[-1])

    def at(self, t: float) -> State:
        """The state at any time in ``dense_range()``: the integrator's dense output, or cubic
        Hermite splines through the stored states (after loading, or when the dense output was
        too large to keep: ``stepping.DENSE_OUTPUT_LIMIT``)."""
        lo, hi = self.dense_range()
        if not is_real(t):
            raise InvalidInputError(f"t must be a number in [{lo}, {hi}], got {t!r}")
        t = float(t)
        if not (lo <= t <= hi):
            raise InvalidInputError(f"t must be in [{lo}, {hi}], got {t!r}")
        return State.from_flat(self.reduction, self._dense(t))

    # ---- observables ------------------------------------------------------------------------
    @property
    def loss(self) -> np.ndarray:
        for i in range(self.t.size):
            self.loss_at(i)
        return self._loss

    def loss_at(self, i: int) -> float:
        """The loss at output ``i``, evaluated if not known yet (the first and last mostly are:
        the gradient pass computed them)."""
        i = self._index(i) % self.t.size
        if self._loss is None:
            self._loss = np.full(self.t.size, np.nan)
        if not np.isfinite(self._loss[i]):
            self._loss[i] = loss(self.states[i], self.method)
        return float(self._loss[i])

    @property
    def target_attention_classes(self) -> np.ndarray:
        if self._target_classes is None:
            self._target_classes = own_area(area_masses(self).by_area, self.reduction)
        return self._target_classes

    def min_target_fraction(self, i: int = -1) -> float:
        """Smallest target attention / ceiling at output ``i`` over the queries that have a
        target (single-patch areas have none); NaN when no query has one. Only output ``i``'s
        attention is computed, unless the whole trajectory's is known already."""
        i = self._index(i) % self.t.size
        if self._target_classes is None and getattr(self, "_area_masses", None) is None:
            by_area = attention_by_area(observed_states(self)[i:i + 1], OBSERVABLE_METHOD)[0]
            target = own_area(by_area, self.reduction)[0][..., self.reduction.class_of]
            frac = target_fraction(target, self.model.ceiling())
        else:
            frac = self.target_fraction[i]
        frac = frac[np.isfinite(frac)]
        return float(frac.min()) if frac.size else float("nan")

    @property
    def target_attention(self) -> np.ndarray:
        return self.target_attention_classes[..., self.reduction.class_of]

    @property
    def target_fraction(self) -> np.ndarray:
        return target_fraction(self.target_attention, self.model.ceiling()[None])

    def attention_map(self, i: int, cluster: int = 0, part: str = "total") -> np.ndarray:
        """(P, P) expected attention of a masked query p (row) on key q (column) at output ``i``.

        ``part`` is "total", "unmasked" (mass on q when q is unmasked) or "masked". The diagonal
        is the query's attention on itself (always masked). Rows of "total" sum to one.
        """
        if not is_int(cluster) or not (0 <= cluster < self.model.n_clusters):
            raise InvalidInputError(f"cluster must be an integer in 0..{self.model.n_clusters - 1}, got {cluster!r}")
        choice("part", part, ("total", "unmasked", "masked"))
        return attention_maps(self.state(i), OBSERVABLE_METHOD, part=part, clusters=[cluster])[0]

    # ---- text -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"<gradflow.Solution {self.method}, {self.model!r}\n"
                f" t: {self.t.size} times in [{self.t[0]:g}, {self.t[-1]:g}], {self.reduction.n_classes} "
                f"classes, {self.integrator or 'integrator unknown'} ({self.quadrature} quadrature), status {self.status} ({self.message}), "
                f"nfev {self.nfev}, {self.wall_time:.3g} s>")

    # ---- files ------------------------------------------------------------------------------
    def to_xarray(self, per_position: bool = False) -> xr.Dataset:
        """Labelled Dataset: dims time, cluster, class, key_class, feature, query (position).

        The class-reduced state and the class map ``class_of`` describe the solution at any P;
        ``per_position=True`` adds A (time, query, feature), B (time, query, key) and
        target_attention (time, cluster, query).
        """
        m, reduction = self.model, self.reduction
        if per_position:
            T, P = self.t.size, m.n_patches
            check_memory(T * P * (m.n_features + P + m.n_clusters),
                         f"to_xarray(per_position=True) (A, B and target_attention at {T} times, P = {P})")
        data = {
            "A_classes": (("time", "class", "feature"), self.A_classes),
            "B_classes": (("time", "class", "key_class"), self.B_classes),
            "B_self": (("time", "class"), self.B_self),
            "class_of": ("query", reduction.class_of),
            "loss": ("time", self.loss),
            "feature_cluster": ("feature", np.array([k for k, _ in m.features])),
            "feature_area": ("feature", np.array([j for _, j in m.features])),
        }
        coords = {"time": self.t, "cluster": np.arange(m.n_clusters), "feature": np.arange(m.n_features),
                  "query": np.arange(m.n_patches)}
        if self._target_classes is not None or per_position:      # kept when computed, else left to the reader
            data["target_attention_classes"] = (("time", "cluster", "class"), self.target_attention_classes)
        if self.step_t is not None:
            data["step_loss"] = ("step", self.step_loss)
            coords["step"] = self.step_t
        if self.step_masses is not None:
            data["step_unmasked_by_area"] = (("step", "cluster", "class", "area"), self.step_masses.by_area)
            data["step_masked"] = (("step", "cluster", "class"), self.step_masses.masked)
        if per_position:
            data["target_attention"] = (("time", "cluster", "query"), self.target_attention)
            data["A"] = (("time", "query", "feature"), self.A)
            data["B"] = (("time", "query", "key"), self.B)
            coords["key"] = np.arange(m.n_patches)
        ds = xr.Dataset(data, coords=coords)
        ds.attrs.update(gradflow_format=FORMAT_VERSION, kind="solution", model=m.to_json(),
                        method=self.method, status=int(self.status), message=self.message, nfev=int(self.nfev),
                        integrator=self.integrator, quadrature=self.quadrature,
                        wall_time=float(self.wall_time),
                        # signature classes, or every position its own class (a solve from init=...)
                        resolution="signature" if np.array_equal(reduction.class_of, m.class_of) else "position")
        ds["A_classes"].attrs["long_name"] = "feature-position correlation e_p^T Q v_f per class"
        ds["B_classes"].attrs["long_name"] = "position-position correlation e_p^T Q e_q (p != q) per class pair"
        ds["B_self"].attrs["long_name"] = "self correlation e_p^T Q e_p of a class"
        if "target_attention_classes" in ds:
            ds["target_attention_classes"].attrs["long_name"] = (
                "expected attention of a masked query on unmasked keys of its own area, per class")
        ds["time"].attrs["long_name"] = "gradient-flow time"
        return ds

    def save(self, path) -> None:
        """Write a NetCDF file atomically; :meth:`load` reads it back."""
        write_dataset(self.to_xarray(), path)

    @classmethod
    def load(cls, path) -> "Solution":
        """Rebuild a Solution; ``at(t)`` interpolates the stored states with cubic Hermite
        splines whose slopes are the flow's velocities at the stored times. A file without its
        times, with times that are not finite and increasing, or with non-finite states is
        refused (FileFormatError naming the file and what is wrong)."""
        ds = read_dataset(path, "solution", READS,
                          variables=("time", "A_classes", "B_classes", "B_self", "class_of", "loss"),
                          attrs=("model", "method", "status", "message", "nfev", "wall_time", "resolution"))
        return cls.from_xarray(ds, source=f"file {str(path)!r}")

    @classmethod
    def from_xarray(cls, ds: xr.Dataset, source: str = "dataset") -> "Solution":
        from ..io import attribute, coordinate, finite_variables
        model = DataModel.from_json(attribute(ds, "model", str, source), source)
        resolution = attribute(ds, "resolution", str, source)
        if resolution not in ("signature", "position"):
            raise FileFormatError(f"{source}: attribute 'resolution' must be 'signature' or 'position', "
                                  f"got {resolution!r}")
        reduction = signature_reduction(model) if resolution == "signature" else position_reduction(model)
        for name in ("A_classes", "B_classes", "B_self", "class_of", "loss"):
            if name not in ds.variables:
                raise FileFormatError(f"{source} is not a complete gradflow solution: it lacks variable {name!r}")
        if not np.array_equal(reduction.class_of, ds["class_of"].values):
            raise FileFormatError(f"{source}: its classes do not match the stored model")
        method = attribute(ds, "method", str, source, options=("exact", "meanfield"))
        t = coordinate(ds, "time", source)
        target_name = "target_attention_classes" if "target_attention_classes" in ds else "area_attention_classes"
        finite_variables(ds, ("A_classes", "B_classes", "B_self", target_name, "step_unmasked_by_area", "step_masked"),
                         source)
        try:
            states = State(reduction, ds["A_classes"].values, ds["B_classes"].values, ds["B_self"].values)
        except InvalidInputError as exc:
            raise FileFormatError(f"{source}: its state does not fit its model: {exc}") from None
        dense = StoredStatesInterpolant(t, states, method) if t.size > 1 else None
        step_t = None
        if any(name in ds for name in ("step_loss", "step_unmasked_by_area", "step_masked")):
            step_t = coordinate(ds, "step", source)
        step_masses = None
        if "step_unmasked_by_area" in ds:
            step_masses = AreaMasses(ds["step_unmasked_by_area"].values, ds["step_masked"].values, reduction)
        return cls(t=t, states=states, model=model, method=method, status=attribute(ds, "status", int, source),
                   message=attribute(ds, "message", str, source), nfev=attribute(ds, "nfev", int, source),
                   wall_time=attribute(ds, "wall_time", float, source), _dense=dense, _loss=ds["loss"].values,
                   integrator=attribute(ds, "integrator", str, source, default=""),
                   quadrature=attribute(ds, "quadrature", str, source, default="fine", options=QUADRATURE_RULES),
                   _target_classes=ds[target_name].values if target_name in ds else None, step_t=step_t,
                   step_loss=ds["step_loss"].values if "step_loss" in ds else None, step_masses=step_masses)


class StoredStatesInterpolant:
    """Dense output through stored states (a loaded solution, or a run whose integrator output was
    too large to keep): on each interval between stored times, the cubic Hermite polynomial whose
    end slopes are the flow's velocities there. A velocity costs one gradient; only those of the
    intervals asked for are computed, once each."""

    def __init__(self, t: np.ndarray, states: State, method: str):
        self.t, self.states, self.method = np.asarray(t, dtype=np.float64), states, method
        self.t_min = float(t[0])
        self._velocity = {}

    def velocity(self, i: int) -> np.ndarray:
        if i not in self._velocity:
            self._velocity[i] = -loss_and_gradient(self.states[i], self.method)[1].flat()
        return self._velocity[i]

    def __call__(self, t):
        t = float(t)
        i = int(np.clip(np.searchsorted(self.t, t, side="right") - 1, 0, self.t.size - 2))
        t0, t1 = self.t[i], self.t[i + 1]
        y0, y1 = self.states.flat()[i], self.states.flat()[i + 1]
        if t == t0:
            return y0.copy()
        if t == t1:
            return y1.copy()
        h = t1 - t0
        x = (t - t0) / h
        h00, h10, h01, h11 = (2 * x ** 3 - 3 * x ** 2 + 1, x ** 3 - 2 * x ** 2 + x, -2 * x ** 3 + 3 * x ** 2,
                              x ** 3 - x ** 2)
        return h00 * y0 + h10 * h * self.velocity(i) + h01 * y1 + h11 * h * self.velocity(i + 1)


class PerPosition:
    """An array-like (T, P, F) or (T, P, P) view of a class-reduced trajectory that expands only
    what is indexed: ``view[i]`` builds one time, ``view[:, p, q]`` one entry over time; nothing
    of size P x P per output time exists unless asked for (``np.asarray(view)``)."""

    def __init__(self, states: State, which: str):
        self.states, self.which = states, which
        reduction = states.reduction
        T = states.shape[0]
        P = reduction.n_positions
        self.shape = (T, P, reduction.n_features) if which == "A" else (T, P, P)
        self.ndim = 3
        self.dtype = np.dtype(np.float64)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        check_memory(float(np.prod(self.shape)), f"the per-position {self.which} at every output time {self.shape}")
        out = getattr(self.states, self.which)
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):                       # (..., p, q) and the like
            i = next(n for n, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        if len(key) > 3:
            raise IndexError(f"too many indices for a {self.shape} array")
        t_key, p_key, q_key = key + (slice(None),) * (3 - len(key))
        c = self.states.reduction.class_of
        p = np.arange(self.shape[1])[p_key]
        q = np.arange(self.shape[2])[q_key]
        pointwise = np.ndim(p) > 0 and np.ndim(q) > 0 and not isinstance(p_key, slice) \
            and not isinstance(q_key, slice)
        if pointwise:               # two index arrays pair up, as in NumPy
            rows, cols = np.broadcast_arrays(np.asarray(p), np.asarray(q))
        else:                       # slices (and one array) cross
            rows, cols = np.atleast_1d(p)[:, None], np.atleast_1d(q)[None, :]
        n_times = np.arange(self.shape[0])[t_key].size
        check_memory(2.0 * n_times * np.broadcast(rows, cols).size,     # the entries and one copy
                     f"{self.which}[{_key_text(key)}] of the per-position {self.which} {self.shape}")
        if self.which == "A":
            out = self.states.A_classes[t_key][..., c[rows], cols]
        else:
            out = self.states.B_classes[t_key][..., c[rows], c[cols]]
            diagonal = np.broadcast_to(rows == cols, out.shape[out.ndim - np.broadcast(rows, cols).ndim:])
            if diagonal.any():                                    # B[p, p] is the class's B_self
                out = np.array(out, copy=True)
                out[..., diagonal] = self.states.B_self[t_key][..., c[np.broadcast_to(rows, diagonal.shape)[diagonal]]]
        if pointwise:
            return out
        if np.ndim(q) == 0:
            out = out[..., 0]
        if np.ndim(p) == 0:
            out = out[..., 0] if np.ndim(q) == 0 else out[..., 0, :]
        return out

    def __repr__(self) -> str:
        return f"<per-position {self.which} {self.shape}, expanded where indexed>"


def _key_text(key: tuple) -> str:
    """An index written as it was typed: (-1, slice(None)) -> '-1, :'."""
    def one(k):
        if isinstance(k, slice):
            return ":" if k == slice(None) else f"{'' if k.start is None else k.start}:{'' if k.stop is None else k.stop}"
        return "array" if np.ndim(k) else repr(k)
    return ", ".join(one(k) for k in key)
