"""``solve``: integrate the gradient flow dA/dt = -dL/dA, dB/dt = -dL/dB.

From Q = 0 the flow is evolved on the signature classes (docs/model.md section 3), whose count
does not grow with P for structured models; from a given (A0, B0) every position is its own class.
The integrator is a SciPy ``OdeSolver`` stepped by ``stepping.step``; ``integrator="auto"`` takes
LSODA for small states and RK45 for large ones (LSODA keeps an n x n Jacobian workspace).
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
from scipy.integrate import BDF, DOP853, LSODA, RK23, RK45, OdeSolver, Radau

from .._validate import (
    check_memory,
    choice,
    increasing_times,
    instance,
    positive_int,
    positive_real,
    real,
    real_array,
)
from ..errors import InvalidInputError
from ..model import DataModel
from ..theory.jacobian import meanfield_jacobian
from ..theory.population import check_method, loss_gradient_and_masses, loss_rate
from ..theory.per_position import evaluated_state
from ..theory.reduction import position_reduction, signature_reduction
from ..theory.state import State
from .observables import AreaMasses
from .solution import Solution, StoredStatesInterpolant
from .stepping import Budget, Convergence, FlowField, Progress, step

SOLVERS = {"RK45": RK45, "RK23": RK23, "DOP853": DOP853, "Radau": Radau, "BDF": BDF, "LSODA": LSODA}
INTEGRATORS = ("auto",) + tuple(SOLVERS)
MAX_NFEV = 200_000   # default budget of gradient evaluations: an extreme, stiff flow stops and says so
# "auto" takes LSODA up to this state size (S F + S^2 + S numbers) and RK45 above. LSODA
# allocates an n x n Jacobian workspace at the start (32 MB at n = 2000, 300 MB at 6000; it fails
# outright beyond ~46,000) and needs as many gradients as RK45 on these flows (Voronoi models to
# t = 2000, n = 98 / 480 / 1530 / 6138: LSODA 326 / 298 / 372 / 334, RK45 327 / 297 / 345 / 303 at
# rtol 1e-8), but it turns to BDF by itself when a flow is stiff, so it keeps the small states.
# Above, RK45: on the 14 x 14 Voronoi model (mean field to t = 2e4) it needs 369 / 279 / 201 / 147
# gradients at rtol 1e-7 / 1e-6 / 1e-5 / 1e-4 (DOP853 447 at 1e-6, RK23 216 at 1e-4), the largest
# error of A (|A| up to 7.2) being 9e-6 / 9e-5 / 6e-3 against rtol 1e-7. Large states are solved
# for their attention and phase times, which rtol 1e-5 leaves unchanged to ~1e-5 (phase times are
# read to ~0.3% by interpolation): rtol 1e-5 above, 1e-8 for the small states.
AUTO_LSODA_MAX = 2000
RTOL_SMALL, RTOL_LARGE = 1e-8, 1e-5
# quadrature="auto" takes the fast rule (gradient to ~2e-8 of its largest entry, ~0.7 of the fine
# rule's nodes) for flows integrated at rtol >= this: their steps err by far more than that
FAST_QUADRATURE_RTOL = 1e-6
QUADRATURES = ("auto", "fine", "fast")
T_RANGE = (1e-9, 1e15)           # accepted t_max (and output times): beyond, no integrator copes
CONVERGENCE_TOL = 1e-3           # solve(t_max=None): t |dL/dt| / L below this over a decade
CONVERGENCE_CAP = 1e12           # solve(t_max=None) gives up there (status -1, says so)
OUTPUTS_PER_DECADE = 20


def default_times(t_max: float, per_decade: int = 20, decades: int = 6) -> np.ndarray:
    """t = 0 followed by log-spaced times up to t_max."""
    lo = t_max * 10.0 ** (-decades)
    return np.concatenate([[0.0], np.geomspace(lo, t_max, per_decade * decades + 1)])


def output_times(t_max, t_eval) -> tuple[float, np.ndarray]:
    """(t_max, output times), validated."""
    t_max = real("t_max", t_max, low=T_RANGE[0], high=T_RANGE[1])
    if t_eval is None:
        return t_max, default_times(t_max)
    return t_max, increasing_times("t_eval", t_eval, low=0.0, high=t_max)


def initial_state(model: DataModel, init) -> State:
    """Q = 0 on the signature classes; a per-position (A0, B0) on the signature classes when it is
    equal within them (a symmetric state stays symmetric along the flow), else per position; or a
    State of the model on its signature classes or per position, as it is."""
    if init is None:
        return State.zeros(signature_reduction(model))
    if isinstance(init, State):
        return _given_state(model, init)
    try:
        A0, B0 = init
    except (TypeError, ValueError):
        raise InvalidInputError(f"init must be None, a pair (A0, B0) or a State, got {init!r}") from None
    return evaluated_state(model, A0, B0)


def _given_state(model: DataModel, init: State) -> State:
    """A State given as ``init``: one time, on the model's signature classes or per position (the
    two resolutions a Solution is kept at), checked and put on the model's own reduction."""
    P = model.n_patches
    if init.shape:
        raise InvalidInputError(f"init must be a single State, got one with leading axes {init.shape}")
    if init.reduction.n_positions != P:
        raise InvalidInputError(f"init is a State of {init.reduction.n_positions} positions, the model has {P}")
    for reduction in (signature_reduction(model), position_reduction(model)):
        if np.array_equal(init.reduction.class_of, reduction.class_of):
            S, F = reduction.n_classes, reduction.n_features
            state = State(reduction, real_array("init.A_classes", init.A_classes, (S, F)),
                          real_array("init.B_classes", init.B_classes, (S, S)),
                          real_array("init.B_self", init.B_self, (S,)))
            State.from_positions(model, state.A, state.B)     # the checks of per-position input (score range)
            return state
    raise InvalidInputError("init must be a State on the model's signature classes or per position "
                            "(every position its own class)")


def _check_integrator(integrator, n: int):
    """The OdeSolver class: "auto" chooses by the state size n."""
    if integrator == "auto":
        return LSODA if n <= AUTO_LSODA_MAX else RK45
    if integrator in SOLVERS or (isinstance(integrator, type) and issubclass(integrator, OdeSolver)):
        return SOLVERS[integrator] if isinstance(integrator, str) else integrator
    raise InvalidInputError(f"integrator must be one of {INTEGRATORS} or an OdeSolver subclass, got {integrator!r}")


def _check_memory(n: int, n_outputs: int, solver_class) -> None:
    """Refuse before integrating a run whose states at the output times and integrator workspace
    (an n x n Jacobian for the implicit methods and LSODA) cannot fit; the dense output and the
    step ends' attention are kept only while they fit their own limits (``stepping``)."""
    workspace = 2.0 * n * n if issubclass(solver_class, (LSODA, BDF, Radau)) else 16.0 * n
    check_memory(n_outputs * float(n) + workspace,
                 f"a flow of {n} state numbers at {n_outputs} output times with {solver_class.__name__}")


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


def _evaluator(reduction, method, client):
    """state -> (loss, gradient State, masses): here, or sharded over the workers of a Dask
    client (masses: the attention by area of an exact pass, else None)."""
    if client is None:
        return lambda state: loss_gradient_and_masses(state, method)
    from ..theory.distributed import ShardedPopulation
    return ShardedPopulation(client, reduction, method).loss_gradient_and_masses


def _known_losses(t_out, run) -> np.ndarray:
    """(T,) the loss at the output times that coincide with step ends where the gradient pass
    computed it (t = 0 and the last time, mostly); NaN elsewhere, evaluated on access."""
    out = np.full(t_out.size, np.nan)
    where = {float(t): v for t, v in zip(run.step_t, run.step_loss) if np.isfinite(v)}
    for i, t in enumerate(t_out):
        out[i] = where.get(float(t), np.nan)
    return out


def _step_masses(run, reduction) -> AreaMasses | None:
    """The attention by area at every step end, when the exact gradient pass gave it at each of
    them (RK45, RK23, DOP853 evaluate the velocity at their step ends; LSODA and the implicit
    methods do not), else None."""
    if len(run.step_masses) < 2 or any(m is None for m in run.step_masses):
        return None
    return AreaMasses(np.stack([m[0] for m in run.step_masses]), np.stack([m[1] for m in run.step_masses]),
                      reduction)


def solve(model: DataModel, t_max: float | None = None, *, method: str = "exact", integrator: str = "auto",
          rtol: float | None = None, atol: float = 1e-10, t_eval=None, init=None, max_nfev: int | None = MAX_NFEV,
          max_wall_time: float | None = None, jacobian: str = "auto", client=None, progress=None,
          tol: float = CONVERGENCE_TOL, quadrature: str = "auto") -> Solution:
    """Integrate the population gradient flow of the attention correlations.

    Parameters
    ----------
    model : DataModel
    t_max : float, optional
        Final time (gradient-flow time; SGD with step eta reaches it after t_max/eta steps).
        None (default): integrate until the flow has converged (``tol``), at most to t = 1e12.
    method : {"exact", "meanfield"}
        Exact expectation at finite P, or counts replaced by their means.
    integrator : "auto" or str or OdeSolver subclass
        "auto" (default): LSODA for states of up to 2000 numbers, RK45 above; or any
        ``scipy.integrate.solve_ivp`` method.
    rtol, atol : float
        Integrator tolerances; rtol defaults to 1e-8 for states of up to 2000 numbers and to
        1e-5 above (large states are integrated for their phases and attention, which a relative
        error of 1e-5 leaves unchanged, at 0.55 of the cost of 1e-7).
    t_eval : array_like, optional
        Output times (needs ``t_max``); default t = 0 and 20 log-spaced times per decade over the
        last six decades of the run.
    init : (A0 (P, F), B0 (P, P)) or State, optional
        Start from these per-position correlations: on the signature classes when they are
        equal within them (e.g. ``sol.state(-1).A, sol.state(-1).B``, to go on from a Solution;
        the flow keeps them equal), else with every position its own class. A ``State`` (on the
        signature classes or per position, e.g. ``State.from_positions``) is taken as it is.
        Default: Q = 0, evolved on the signature classes.
    max_nfev : int or None
        Budget of gradient evaluations; when it is spent the solution stops there with
        ``status = -1`` and says so (None: no limit).
    max_wall_time : float or None
        Budget of seconds, likewise.
    jacobian : {"auto", "analytic", "numerical"}
        For the implicit integrators (LSODA, BDF, Radau): "analytic" passes the analytic Jacobian
        of the mean-field flow (point-mass amplitudes only); "numerical" lets SciPy difference
        the gradient; "auto" takes the analytic one wherever it exists.
    client : dask.distributed.Client, optional
        Evaluate the gradient on its workers, the clusters sharded among them.
    progress : bool, optional
        A progress bar of the time reached (default: on a terminal).
    tol : float
        Convergence tolerance of ``t_max=None``: stop once ``t |dL/dt| / L < tol`` at every
        checkpoint (four per decade) of the last decade of time; the mean-field flow, whose loss
        tends to 0, compares with L(0) instead of L (docs/model.md section 7).
    quadrature : {"auto", "fine", "fast"}
        Accuracy of the t-integrals in the gradient (docs/model.md section 4): "fine" to ~1e-15;
        "fast" with ~0.7 of the fine rule's nodes, the loss to ~1e-12 and the gradient to ~2e-8 of
        its largest entry (~3e-7 at a mask ratio of 0.05); "auto" (default) takes "fast" when rtol >= 1e-6 (the large states'
        default, 1e-5: the integrator's own error is far larger) and "fine" otherwise. The Solution's observables
        keep its rule: the attention at the step ends (``step_masses``) and at the output times
        (attention by area, targets, phases, diversity); so does the loss the gradient passes
        computed (``step_loss``, and ``loss`` at output times that are step ends). Per-position
        views and anything else computed from a Solution afterwards use the fine rule.

    Returns
    -------
    Solution
        ``status`` 0 when t_max (or convergence) was reached; -1 and a ``RuntimeWarning`` when
        the run stopped early (a budget, a failed step, no convergence by t = 1e12); ``message``
        says which. ``converged`` is True/False for ``t_max=None``, else None.

    Examples
    --------
    >>> from gradflow import presets, solve
    >>> sol = solve(presets.global_local(P=64), t_max=2000.0)
    >>> sol.status, round(float(sol.loss[-1]), 3)
    (0, 0.511)
    """
    instance("model", model, DataModel)
    check_method(method)
    atol = positive_real("atol", atol)
    tol = real("tol", tol, low=0.0, high=1.0, low_open=True, high_open=True)
    if t_max is None and t_eval is not None:
        raise InvalidInputError("t_eval needs t_max: without t_max the output times follow the run")
    if t_max is not None:
        t_max, candidates = output_times(t_max, t_eval)
    max_nfev = None if max_nfev is None else positive_int("max_nfev", max_nfev)
    max_wall_time = None if max_wall_time is None else positive_real("max_wall_time", max_wall_time)
    start = time.perf_counter()
    y0 = initial_state(model, init)
    reduction = y0.reduction
    n = y0.flat().size
    solver_class = _check_integrator(integrator, n)
    _check_memory(n, OUTPUTS_PER_DECADE * 6 + 2 if t_max is None else candidates.size, solver_class)
    rtol = (RTOL_SMALL if n <= AUTO_LSODA_MAX else RTOL_LARGE) if rtol is None else positive_real("rtol", rtol)
    choice("quadrature", quadrature, QUADRATURES)
    if quadrature == "auto":
        quadrature = "fast" if rtol >= FAST_QUADRATURE_RTOL else "fine"
    evaluated = reduction.with_quadrature(quadrature)          # what the gradient passes see
    jac = _jacobian_function(reduction, method, solver_class, jacobian)
    budget = Budget(max_nfev, max_wall_time, start=start)      # the wall time counts from solve's start
    field = FlowField(_evaluator(evaluated, method, client), lambda y: State.from_flat(evaluated, y), loss_rate)
    field.first = field.measure(y0.flat())
    loss0, rate0, _ = field.first
    convergence = None
    if t_max is None:
        if rate0 == 0.0:                  # nothing moves: Q = 0 is already stationary
            return Solution(t=np.zeros(1), states=State.from_flat(reduction, y0.flat()[None]), model=model,
                            method=method, status=0, message="stationary at t = 0 (the gradient vanishes)",
                            nfev=1, wall_time=time.perf_counter() - start, _loss=np.array([loss0]),
                            converged=True, quadrature=quadrature)
        tau0 = abs(loss0 / rate0)
        # the mean-field loss tends to 0 like 1/t (docs/model.md section 7): judge it against L(0)
        convergence = Convergence(tol=tol, tau0=tau0, scale=abs(loss0) if method == "meanfield" else None)
        t_bound = CONVERGENCE_CAP
        decades = math.log10(t_bound / (1e-4 * tau0))
        candidates = np.concatenate([[0.0], np.geomspace(1e-4 * tau0, t_bound,
                                                         int(OUTPUTS_PER_DECADE * decades) + 1)])
    else:
        t_bound = t_max
    extra = {} if jac is None else {"jac": jac}
    solver = solver_class(field, 0.0, y0.flat(), t_bound, rtol=rtol, atol=atol, **extra)
    field.budget = budget           # from the first step on, checked at every gradient evaluation
    progress_bar = Progress(progress, t_max, max(1e-4 * abs(loss0 / rate0) if rate0 else 1e-6, 1e-12))
    try:
        run = step(solver, field, y0.flat(), candidates, budget, convergence, progress_bar, t_max)
    finally:
        progress_bar.close()
    if t_max is None:         # the last six decades of the run, and its end
        keep = [t for t in run.outputs if t == 0.0 or run.t_end * 1e-6 <= t]
        t_out = np.array(sorted(keep))
    else:
        t_out = candidates[candidates <= run.t_end]
        if run.status < 0 and (t_out.size == 0 or t_out[-1] < run.t_end):
            t_out = np.append(t_out, run.t_end)             # show how far it got
    ys = np.stack([run.outputs[float(t)] for t in t_out])
    if run.status < 0:
        warnings.warn(f"gradflow.solve: {run.message}", RuntimeWarning, stacklevel=2)
    states = State.from_flat(reduction, ys)
    dense = run.dense
    if dense is None and t_out.size > 1:     # too large to keep: Hermite splines through the outputs
        dense = StoredStatesInterpolant(t_out, states, method)
    return Solution(t=t_out, states=states, model=model, method=method,
                    status=run.status, message=run.message, nfev=field.nfev + 1 + len(run.checks),
                    wall_time=time.perf_counter() - start, _dense=dense, _loss=_known_losses(t_out, run),
                    converged=run.converged, integrator=solver_class.__name__, quadrature=quadrature,
                    step_t=run.step_t,
                    step_loss=run.step_loss, step_masses=_step_masses(run, reduction))
