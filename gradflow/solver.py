"""``solve``: integrate the gradient flow dA/dt = -dL/dA, dB/dt = -dL/dB with SciPy.

From Q = 0 the flow is evolved on the signature classes (MODEL.md section 3), whose count does
not grow with P for structured models; from a given (A0, B0) every position is its own class.
The result stores the reduced state and expands it to per-position arrays on access.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import BDF, DOP853, LSODA, RK23, RK45, OdeSolution, OdeSolver, Radau

from ._persist import Persistent
from .jacobian import meanfield_jacobian
from .model import DataModel
from .population import (_check_state, attention_mass, attention_maps, check_method, evaluate,
                         own_area_mass)
from .reduction import Reduction, position_reduction, signature_reduction

_SOLVERS = {"RK45": RK45, "RK23": RK23, "DOP853": DOP853, "Radau": Radau, "BDF": BDF, "LSODA": LSODA}
INTEGRATORS = tuple(_SOLVERS)
MAX_NFEV = 200_000   # default budget of gradient evaluations: an extreme, stiff flow stops and says so


class _PerPosition:
    """Per-position views ``A`` and ``B`` of per-class arrays (on any leading time axis)."""

    @property
    def A(self) -> np.ndarray:
        """(..., P, F) feature-position correlations."""
        return self.reduction.expand(self.A_classes, self.B_classes, self.B_self)[0]

    @property
    def B(self) -> np.ndarray:
        """(..., P, P) position-position correlations."""
        return self.reduction.expand(self.A_classes, self.B_classes, self.B_self)[1]


@dataclass
class State(_PerPosition):
    """Attention correlations at one time, per class; ``A`` and ``B`` expand to positions."""

    reduction: Reduction
    A_classes: np.ndarray      # (S, F)
    B_classes: np.ndarray      # (S, S), off-diagonal entries p != q
    B_self: np.ndarray         # (S,), the diagonal B[p, p]


@dataclass
class Solution(_PerPosition, Persistent):
    """Result of :func:`solve` (cf. ``scipy.integrate.solve_ivp``'s ``OdeResult``).

    Attributes
    ----------
    t : (T,) output times.
    A_classes, B_classes, B_self : per-class states (T, S, F), (T, S, S), (T, S).
    A, B : per-position states (T, P, F), (T, P, P), expanded on access.
    loss : (T,) population loss.
    area_attention : (T, K, P), expanded on access from ``area_attention_classes`` (T, K, S): the
        expected mass a masked query at p puts on the unmasked keys of its
        own area when the sample comes from cluster k.
    model, method, reduction : what was solved and how.
    status : 0 success, -1 integration step failed (``message`` says why).
    nfev : evaluations of the gradient; ``wall_time`` seconds spent in ``solve``.
    """

    t: np.ndarray
    A_classes: np.ndarray
    B_classes: np.ndarray
    B_self: np.ndarray
    loss: np.ndarray
    area_attention_classes: np.ndarray
    model: DataModel
    method: str
    reduction: Reduction
    status: int
    message: str
    nfev: int
    wall_time: float
    _dense: object = field(default=None, repr=False)
    _io_kind = "solution"

    @property
    def success(self) -> bool:
        return self.status >= 0

    @property
    def area_attention(self) -> np.ndarray:
        return self.area_attention_classes[..., self.reduction.class_of]

    def state(self, i: int) -> State:
        """The state at output index ``i``."""
        return State(self.reduction, self.A_classes[i], self.B_classes[i], self.B_self[i])

    def dense_range(self) -> tuple[float, float]:
        """Times ``at`` can evaluate: [0, t_max] after a solve, the stored span after a load."""
        if self._dense is None:
            raise ValueError("this solution has no dense output (it holds a single time)")
        lo = getattr(self._dense, "t_min", None)
        lo = float(self._dense.x[0]) if lo is None else float(lo)
        return lo, float(self.t[-1])

    def at(self, t: float) -> State:
        """The state at any time in ``dense_range()`` from the integrator's dense output (a cubic
        Hermite interpolant of the stored states for a loaded solution)."""
        lo, hi = self.dense_range()
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise ValueError(f"t must be a number in [{lo}, {hi}], got {t!r}") from None
        if not (lo <= t <= hi):
            raise ValueError(f"t must be in [{lo}, {hi}], got {t!r}")
        A, B, Bs = self.reduction.unpack(self._dense(t))
        return State(self.reduction, A, B, Bs)

    def attention(self, i: int, cluster: int = 0, part: str = "total") -> np.ndarray:
        """(P, P) expected attention of a masked query p (row) on key q (column) at output ``i``.

        ``part`` is "total", "unmasked" (mass on q when q is unmasked) or "masked". The diagonal
        is the query's attention on itself (always masked). Rows of "total" sum to one.
        """
        if isinstance(cluster, bool) or not isinstance(cluster, (int, np.integer)) or \
                not (0 <= cluster < self.model.n_clusters):
            raise ValueError(f"cluster must be an integer in 0..{self.model.n_clusters - 1}, got {cluster!r}")
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not (-self.t.size <= i < self.t.size):
            raise ValueError(f"i must be an output index in 0..{self.t.size - 1}, got {i!r}")
        st = self.state(i)
        return attention_maps(self.reduction, self.method, st.A_classes, st.B_classes, st.B_self,
                              part=part, clusters=[cluster])[0]

    def summary(self) -> str:
        """A few lines: what was solved, the final loss and area attention."""
        frac = target_fraction(self.area_attention[-1], self.model.ceiling())
        lines = [
            f"{self.model!r}",
            f"method={self.method}  status={self.status} ({self.message})  t_max={self.t[-1]:g}  "
            f"nfev={self.nfev}  wall={self.wall_time:.3f}s",
            f"loss: {self.loss[0]:.6g} -> {self.loss[-1]:.6g}",
            f"area attention / ceiling at t_max: min {np.nanmin(frac):.4f}, mean {np.nanmean(frac):.4f}",
        ]
        return "\n".join(lines)


def target_fraction(target: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """target / ceiling, NaN for queries whose area is a single patch (ceiling 0: no target)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ceiling > 0, target / np.where(ceiling > 0, ceiling, 1.0), np.nan)


def default_times(t_max: float, per_decade: int = 20, decades: int = 6) -> np.ndarray:
    """t = 0 followed by log-spaced times up to t_max."""
    lo = t_max * 10.0 ** (-decades)
    return np.concatenate([[0.0], np.geomspace(lo, t_max, per_decade * decades + 1)])


def _check_times(t_max, t_eval):
    try:
        t_max = float(t_max)
    except (TypeError, ValueError):
        raise ValueError(f"t_max must be a positive number, got {t_max!r}") from None
    if not (np.isfinite(t_max) and t_max > 0):
        raise ValueError(f"t_max must be finite and > 0, got {t_max!r}")
    if t_eval is None:
        return t_max, default_times(t_max)
    try:
        te = np.asarray(t_eval, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"t_eval must be increasing times in [0, t_max={t_max}], got {t_eval!r}") from None
    if te.ndim != 1 or te.size == 0 or not np.all(np.isfinite(te)) or np.any(np.diff(te) <= 0) or te[0] < 0 or te[-1] > t_max:
        raise ValueError(f"t_eval must be increasing times in [0, t_max={t_max}], got {t_eval!r}")
    return t_max, te


def _initial_state(model: DataModel, init):
    if init is None:
        red = signature_reduction(model)
        return red, np.zeros(red.state_size())
    try:
        A0, B0 = init
    except (TypeError, ValueError):
        raise ValueError(f"init must be None or a pair (A0, B0), got {init!r}") from None
    A0, B0 = _check_state(model, A0, B0)
    red = position_reduction(model)
    B_off = B0.copy()
    np.fill_diagonal(B_off, 0.0)
    return red, red.pack(A0, B_off, np.diag(B0).copy())


def observe(red: Reduction, method: str, ys: np.ndarray):
    """Loss (T,) and own-area attention per class (T, K, S) along a trajectory of flat states."""
    T = ys.shape[0]
    K, S = red.n_clusters, red.n_classes
    loss = np.empty(T)
    target = np.empty((T, K, S))
    for i in range(T):
        A, B, Bs = red.unpack(ys[i])
        loss[i] = evaluate(red, method, A, B, Bs, want_grad=False)[0]
        target[i] = own_area_mass(red, attention_mass(red, method, A, B, Bs)[0])
    return loss, target


def solve(model: DataModel, t_max: float, *, method: str = "exact", integrator: str = "LSODA",
          rtol: float = 1e-8, atol: float = 1e-10, t_eval=None, init=None,
          max_nfev: int | None = MAX_NFEV, jacobian: str = "auto") -> Solution:
    """Integrate the population gradient flow of the attention correlations.

    Parameters
    ----------
    model : DataModel
    t_max : float
        Final time (gradient-flow time; SGD with step eta reaches it after t_max/eta steps).
    method : {"exact", "meanfield"}
        Exact expectation at finite P, or counts replaced by their means.
    integrator : str or OdeSolver subclass
        Any ``scipy.integrate.solve_ivp`` method.
    rtol, atol : float
        Integrator tolerances.
    t_eval : array_like, optional
        Output times; default t = 0 and 120 log-spaced times over six decades up to t_max.
    init : (A0 (P, F), B0 (P, P)), optional
        Start from these per-position correlations (every position its own class). Default:
        Q = 0, evolved on the signature classes.
    jacobian : {"auto", "analytic", "numerical"}
        For the implicit integrators (LSODA, BDF, Radau): "analytic" passes the analytic Jacobian
        of the mean-field flow (point-mass amplitudes only); "numerical" lets SciPy difference
        the gradient; "auto" takes the analytic one wherever it exists.
    max_nfev : int or None
        Budget of gradient evaluations; when it is spent the solution stops there with
        ``status = -1`` and says so (None: no limit).

    Returns
    -------
    Solution
        ``status`` is -1 and a ``RuntimeWarning`` is issued when the integrator fails; the
        arrays then end at the last time reached.
    """
    if not isinstance(model, DataModel):
        raise ValueError(f"model must be a DataModel, got {type(model).__name__}")
    check_method(method)
    if not (integrator in INTEGRATORS or (isinstance(integrator, type) and issubclass(integrator, OdeSolver))):
        raise ValueError(f"integrator must be one of {INTEGRATORS} or an OdeSolver subclass, got {integrator!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)) \
                or not (np.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {tol!r}")
    t_max, t_out = _check_times(t_max, t_eval)
    if max_nfev is not None and (isinstance(max_nfev, bool) or not isinstance(max_nfev, (int, np.integer))
                                 or max_nfev < 1):
        raise ValueError(f"max_nfev must be a positive integer or None, got {max_nfev!r}")
    red, y0 = _initial_state(model, init)
    jac = _jacobian_function(red, method, integrator, jacobian)
    start = time.perf_counter()

    def rhs(_t, y):
        A, B, Bs = red.unpack(y)
        _, gA, gB, gS = evaluate(red, method, A, B, Bs)
        return -red.pack(gA, gB, gS)

    ts, ys, dense, status, message, nfev = _integrate(rhs, y0, t_max, t_out, integrator, rtol, atol,
                                                      max_nfev, jac)
    if status < 0:
        warnings.warn(f"gradflow.solve: {message}", RuntimeWarning, stacklevel=2)
    loss, target = observe(red, method, ys)
    A, B, Bs = red.unpack(ys)
    return Solution(t=ts, A_classes=A, B_classes=B, B_self=Bs, loss=loss,
                    area_attention_classes=target, model=model, method=method, reduction=red,
                    status=status, message=message, nfev=nfev,
                    wall_time=time.perf_counter() - start, _dense=dense)


def _jacobian_function(red, method, integrator, choice):
    if choice not in ("auto", "analytic", "numerical"):
        raise ValueError(f"jacobian must be 'auto', 'analytic' or 'numerical', got {choice!r}")
    implicit = integrator in ("LSODA", "BDF", "Radau") or (
        isinstance(integrator, type) and issubclass(integrator, (LSODA, BDF, Radau)))
    available = method == "meanfield" and red.all_point
    if choice == "analytic" and not (available and implicit):
        raise ValueError(f"jacobian='analytic' needs method='meanfield', point-mass amplitudes and an "
                         f"implicit integrator (LSODA, BDF, Radau), got method={method!r}, integrator={integrator!r}")
    if choice == "numerical" or not (available and implicit):
        return None

    def jac(_t, y):
        return meanfield_jacobian(red, *red.unpack(y))
    return jac


def _integrate(rhs, y0, t_max, t_out, integrator, rtol, atol, max_nfev, jac=None):
    """Step a SciPy OdeSolver to t_max (what solve_ivp does), stopping cleanly after
    ``max_nfev`` gradient evaluations. Returns (t, y (T, n), dense, status, message, nfev)."""
    cls = _SOLVERS[integrator] if isinstance(integrator, str) else integrator
    count = [0]

    def counted(t, y):
        count[0] += 1
        return rhs(t, y)

    extra = {} if jac is None else {"jac": jac}
    solver = cls(counted, 0.0, y0, t_max, rtol=rtol, atol=atol, **extra)
    times, pieces = [0.0], []
    status, message = 0, "reached t_max"
    while solver.status == "running":
        step_message = solver.step()
        if solver.status == "failed":
            status, message = -1, f"integration step failed at t={solver.t:g}: {step_message}"
            break
        pieces.append(solver.dense_output())
        times.append(solver.t)
        if max_nfev is not None and count[0] >= max_nfev and solver.status == "running":
            status = -1
            message = (f"stopped after {count[0]} gradient evaluations (max_nfev) at t={solver.t:g}: the flow "
                       f"is very stiff here; try a shorter t_max, integrator='Radau' or a larger max_nfev")
            break
    reached = times[-1]
    if status < 0:
        message = f"integration stopped at t={reached:g} before t_max={t_max:g}: {message}"
    dense = OdeSolution(times, pieces) if pieces else None
    keep = t_out[t_out <= reached]
    ys = np.array([y0 if t == 0.0 else dense(t) for t in keep]).reshape(keep.size, y0.size)
    return keep, ys, dense, status, message, count[0]
