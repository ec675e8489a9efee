"""``solve``: integrate the gradient flow dA/dt = -dL/dA, dB/dt = -dL/dB.

From Q = 0 the flow is evolved on the signature classes (docs/model.md section 3), whose count
does not grow with P for structured models; from a given (A0, B0) every position is its own class.
``solve`` steps a SciPy ``OdeSolver`` itself (what ``solve_ivp`` does inside) so that it can stop
cleanly on a budget of gradient evaluations and say why.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.integrate import (
    BDF,
    DOP853,
    LSODA,
    RK23,
    RK45,
    OdeSolution,
    OdeSolver,
    Radau,
)

from .._validate import choice, instance, positive_int, positive_real
from ..errors import InvalidInputError
from ..model import DataModel
from ..theory.jacobian import meanfield_jacobian
from ..theory.population import check_method, loss_and_gradient
from ..theory.reduction import signature_reduction
from ..theory.state import State
from .solution import Solution

SOLVERS = {"RK45": RK45, "RK23": RK23, "DOP853": DOP853, "Radau": Radau, "BDF": BDF, "LSODA": LSODA}
INTEGRATORS = tuple(SOLVERS)
MAX_NFEV = 200_000   # default budget of gradient evaluations: an extreme, stiff flow stops and says so


def default_times(t_max: float, per_decade: int = 20, decades: int = 6) -> np.ndarray:
    """t = 0 followed by log-spaced times up to t_max."""
    lo = t_max * 10.0 ** (-decades)
    return np.concatenate([[0.0], np.geomspace(lo, t_max, per_decade * decades + 1)])


def output_times(t_max, t_eval) -> tuple[float, np.ndarray]:
    """(t_max, output times), validated."""
    t_max = positive_real("t_max", t_max)
    if t_eval is None:
        return t_max, default_times(t_max)
    try:
        te = np.asarray(t_eval, dtype=np.float64)
    except (TypeError, ValueError):
        te = None
    if te is None or te.ndim != 1 or te.size == 0 or not np.all(np.isfinite(te)) or np.any(np.diff(te) <= 0) \
            or te[0] < 0 or te[-1] > t_max:
        raise InvalidInputError(f"t_eval must be increasing times in [0, t_max={t_max}], got {t_eval!r}")
    return t_max, te


def initial_state(model: DataModel, init) -> State:
    """Q = 0 on the signature classes, or a given per-position (A0, B0)."""
    if init is None:
        return State.zeros(signature_reduction(model))
    try:
        A0, B0 = init
    except (TypeError, ValueError):
        raise InvalidInputError(f"init must be None or a pair (A0, B0), got {init!r}") from None
    return State.from_positions(model, A0, B0)


def _check_integrator(integrator):
    if integrator in INTEGRATORS or (isinstance(integrator, type) and issubclass(integrator, OdeSolver)):
        return SOLVERS[integrator] if isinstance(integrator, str) else integrator
    raise InvalidInputError(f"integrator must be one of {INTEGRATORS} or an OdeSolver subclass, got {integrator!r}")


def _jacobian_function(reduction, method, solver_class, jacobian):
    """The analytic mean-field Jacobian where it exists and the integrator can use it."""
    choice("jacobian", jacobian, ("auto", "analytic", "numerical"))
    implicit = issubclass(solver_class, (LSODA, BDF, Radau))
    available = method == "meanfield" and reduction.all_point
    if jacobian == "analytic" and not (available and implicit):
        raise InvalidInputError(
            f"jacobian='analytic' needs method='meanfield', point-mass amplitudes and an implicit integrator "
            f"(LSODA, BDF, Radau), got method={method!r}, integrator={solver_class.__name__}")
    if jacobian == "numerical" or not (available and implicit):
        return None
    return lambda _t, y: meanfield_jacobian(State.from_flat(reduction, y))


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
    max_nfev : int or None
        Budget of gradient evaluations; when it is spent the solution stops there with
        ``status = -1`` and says so (None: no limit).
    jacobian : {"auto", "analytic", "numerical"}
        For the implicit integrators (LSODA, BDF, Radau): "analytic" passes the analytic Jacobian
        of the mean-field flow (point-mass amplitudes only); "numerical" lets SciPy difference
        the gradient; "auto" takes the analytic one wherever it exists.

    Returns
    -------
    Solution
        ``status`` is -1 and a ``RuntimeWarning`` is issued when the integrator stops early; the
        arrays then end at the last time reached.

    Examples
    --------
    >>> from gradflow import presets, solve
    >>> sol = solve(presets.global_local(P=64), t_max=2000.0)
    >>> sol.status, round(float(sol.loss[-1]), 3)
    (0, 0.511)
    """
    instance("model", model, DataModel)
    check_method(method)
    solver_class = _check_integrator(integrator)
    rtol, atol = positive_real("rtol", rtol), positive_real("atol", atol)
    t_max, t_out = output_times(t_max, t_eval)
    if max_nfev is not None:
        max_nfev = positive_int("max_nfev", max_nfev)
    start = time.perf_counter()
    y0 = initial_state(model, init)
    reduction = y0.reduction
    jac = _jacobian_function(reduction, method, solver_class, jacobian)

    def velocity(_t, y):
        return -loss_and_gradient(State.from_flat(reduction, y), method)[1].flat()

    run = integrate(velocity, y0.flat(), t_max, t_out, solver_class, rtol, atol, max_nfev, jac)
    if run.status < 0:
        warnings.warn(f"gradflow.solve: {run.message}", RuntimeWarning, stacklevel=2)
    return Solution(t=run.t, states=State.from_flat(reduction, run.y), model=model, method=method,
                    status=run.status, message=run.message, nfev=run.nfev,
                    wall_time=time.perf_counter() - start, _dense=run.dense)


@dataclass
class Integration:
    """What :func:`integrate` returns."""

    t: np.ndarray          # (T,) output times reached
    y: np.ndarray          # (T, n) states there
    dense: object          # OdeSolution over [0, t reached], or None
    status: int            # 0 reached t_max, -1 stopped early
    message: str
    nfev: int


def integrate(velocity, y0, t_max, t_out, solver_class, rtol, atol, max_nfev, jac=None) -> Integration:
    """Step a SciPy OdeSolver to t_max (what solve_ivp does), stopping cleanly after
    ``max_nfev`` gradient evaluations."""
    count = [0]

    def counted(t, y):
        count[0] += 1
        return velocity(t, y)

    extra = {} if jac is None else {"jac": jac}
    solver = solver_class(counted, 0.0, y0, t_max, rtol=rtol, atol=atol, **extra)
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
    return Integration(keep, ys, dense, status, message, count[0])
