"""The integration loop behind ``solve``: a SciPy ``OdeSolver`` stepped by hand.

Stepping by hand (what ``solve_ivp`` does inside) lets the loop
- stop cleanly on a budget of gradient evaluations or of wall time, and say so;
- stop when the flow has converged (``t_max=None``, see :class:`Convergence`);
- keep the loss the gradient pass computes anyway at every step end (RK45, RK23, DOP853
  evaluate the velocity at their step ends), so that output losses cost nothing;
- collect the states at the output times as the steps pass them, and keep the integrator's
  dense output only while it fits in memory;
- show progress (the time reached) on a terminal.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import OdeSolution

DENSE_OUTPUT_LIMIT = 25_000_000     # numbers of dense output kept for ``Solution.at`` (~200 MB)
STEP_MASSES_LIMIT = 25_000_000      # numbers of attention by area kept at the step ends (~200 MB)


class FlowField:
    """dy/dt = -grad L(y) for a SciPy solver, remembering the loss of each evaluation.

    ``evaluate(state) -> (loss, gradient State, masses)``, masses the attention by area the exact
    gradient pass computes with it (or None); ``rate(gradient) -> dL/dt``.
    """

    def __init__(self, evaluate, state_from_flat, rate, budget=None):
        self.evaluate = evaluate
        self.state_from_flat = state_from_flat
        self.rate = rate
        self.budget = budget        # checked before every evaluation: a step that estimates a
        self.nfev = 0               # Jacobian (many evaluations) cannot overrun the wall time
        self.recent = []            # (t, y, loss, dL/dt, masses) since the last accepted step
        self.first = None           # (loss, dL/dt, masses) at t = 0

    def __call__(self, t, y):
        if self.budget is not None:
            why = self.budget.exceeded(self.nfev)
            if why is not None:
                raise BudgetExceeded(why)
        loss, grad, masses = self.evaluate(self.state_from_flat(y))
        self.nfev += 1
        rate = self.rate(grad)
        self.recent.append((t, y, loss, rate, masses))
        return -grad.flat()

    def at_step_end(self, t, y):
        """(loss, dL/dt, masses) if the solver evaluated the velocity exactly at its new step end."""
        found = None
        for tt, yy, loss, rate, masses in self.recent:
            if tt == t and (yy is y or np.array_equal(yy, y)):
                found = (loss, rate, masses)
        self.recent = []
        return found

    def measure(self, y):
        """(loss, dL/dt, masses) at a state (counted apart from nfev)."""
        loss, grad, masses = self.evaluate(self.state_from_flat(y))
        return loss, self.rate(grad), masses


@dataclass
class Convergence:
    """The stopping rule of ``solve(t_max=None)``.

    The flow has converged at time t when, at every checkpoint of the last decade of time
    (four per decade, from 100 initial time scales tau0 = L(0) / |dL/dt(0)| on), the loss falls
    by less than ``tol`` of itself per e-fold of time: t |dL/dt| / L < tol. In the 1/t tail of
    the loss (softmax leakage) that bounds the loss still to lose by about ``tol`` of the loss;
    requiring it over a whole decade keeps a pause between phases from stopping the flow.

    With ``scale`` set, the fall is measured against that fixed loss instead of the current one:
    t |dL/dt| / scale < tol. The mean-field loss needs it (``solve`` passes L(0)): it has no
    fully masked areas, so wherever an area has two patches or more its loss tends to 0 like 1/t
    and falls by a fixed share of itself per e-fold forever; against L(0) its tail ends.
    """

    tol: float
    tau0: float
    scale: float | None = None
    checks: list = field(default_factory=list)      # (t, t |dL/dt| / L)
    next_t: float = 0.0

    PER_DECADE = 4
    START = 100.0                                   # first checkpoint at START * tau0

    def __post_init__(self):
        self.next_t = self.START * self.tau0

    def due(self, t: float) -> bool:
        return t >= self.next_t

    def record(self, t: float, loss: float, rate: float) -> bool:
        """Add a checkpoint; True when converged."""
        ref = abs(loss) if self.scale is None else self.scale
        s = t * abs(rate) / ref if ref != 0 else 0.0
        self.checks.append((t, s))
        self.next_t = t * 10.0 ** (1.0 / self.PER_DECADE)
        window = [v for tt, v in self.checks if tt >= t / 10.0 * (1 - 1e-12)]
        return len(window) > self.PER_DECADE and max(window) < self.tol

    def message(self) -> str:
        t, s = self.checks[-1]
        if self.scale is None:
            return (f"converged at t={t:.4g}: the loss falls by less than {self.tol:g} of itself per e-fold "
                    f"of time over the last decade (t |dL/dt| / L = {s:.2g})")
        return (f"converged at t={t:.4g}: the loss falls by less than {self.tol:g} of its initial value per "
                f"e-fold of time over the last decade (t |dL/dt| / L(0) = {s:.2g})")


class BudgetExceeded(Exception):
    """Raised inside an integrator step when the run's budget is spent (caught by ``step``)."""


@dataclass
class Budget:
    """Limits of a run: gradient evaluations and wall time (None: no limit)."""

    max_nfev: int | None
    max_wall_time: float | None
    start: float = field(default_factory=time.perf_counter)

    def exceeded(self, nfev: int) -> str | None:
        """Why the run must stop now, or None. (The time reached is said by ``step``: a stop in
        the middle of a step keeps the last accepted step's end, not the stage's time.)"""
        if self.max_nfev is not None and nfev >= self.max_nfev:
            return (f"stopped after {nfev} gradient evaluations (max_nfev): the flow may be stiff "
                    f"here; try integrator='Radau' or a larger max_nfev")
        elapsed = time.perf_counter() - self.start
        if self.max_wall_time is not None and elapsed >= self.max_wall_time:
            return f"stopped after {elapsed:.1f} s (max_wall_time={self.max_wall_time:g} s)"
        return None


class Progress:
    """A tqdm bar of the integrated time on a log scale (on a terminal, or when asked)."""

    def __init__(self, enabled, t_end: float | None, t_first: float):
        self.bar = None
        if enabled is False or (enabled is None and not sys.stderr.isatty()):
            return
        from tqdm import tqdm
        self.lo = math.log10(max(t_first, 1e-12))
        hi = math.log10(t_end) if t_end is not None else self.lo + 12.0
        # the time reached goes in postfix[0] (tqdm's own postfix string would start with ", ")
        self.bar = tqdm(total=max(hi - self.lo, 1e-9), unit="decade", desc="gradflow solve", leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| t={postfix[0]}", postfix=["0"])
        self.done = 0.0

    def update(self, t: float) -> None:
        if self.bar is None or t <= 0:
            return
        pos = min(max(math.log10(t) - self.lo, 0.0), self.bar.total)
        self.bar.postfix[0] = f"{t:.3g}"
        self.bar.update(pos - self.done)
        self.done = pos

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class Run:
    """What :func:`step` returns."""

    t_end: float                 # last time reached
    status: int                  # 0 finished (reached t_max or converged), -1 stopped early
    message: str
    converged: bool | None       # None when a t_max was given
    outputs: dict                # output time -> state (flat) collected on the way
    step_t: np.ndarray           # accepted step ends, 0 first
    step_loss: np.ndarray        # loss there (NaN where the integrator did not evaluate it)
    step_rate: np.ndarray        # dL/dt there
    step_masses: list            # attention by area there (None where not evaluated, or not exact)
    dense: object                # OdeSolution over [0, t_end], or None when too large to keep
    checks: list                 # convergence checkpoints (t, t |dL/dt| / L)


def step(solver, field: FlowField, y0: np.ndarray, candidates: np.ndarray, budget: Budget,
         convergence: Convergence | None, progress: Progress, t_max: float | None) -> Run:
    """Step ``solver`` until t_max (or convergence, or a budget); collect states at ``candidates``."""
    n = y0.size
    outputs = {}
    if candidates.size and candidates[0] == 0.0:
        outputs[0.0] = y0.copy()
    step_t, step_loss, step_rate, step_masses = [0.0], [np.nan], [np.nan], [None]
    pieces, times, keep_dense, keep_masses = [], [0.0], True, True
    next_out = int(np.searchsorted(candidates, 0.0, side="right"))
    status, message, converged = 0, "reached t_max", None if convergence is None else False
    if field.first is not None:
        step_loss[0], step_rate[0], step_masses[0] = field.first
    while solver.status == "running":
        try:
            step_message = solver.step()
        except BudgetExceeded as stop:          # mid-step: the last accepted step stands
            status, message = -1, str(stop)
            break
        if solver.status == "failed":
            status, message = -1, f"integration step failed at t={solver.t:g}: {step_message}"
            break
        piece = solver.dense_output()
        t = solver.t
        end = field.at_step_end(t, solver.y)
        step_t.append(t)
        step_loss.append(np.nan if end is None else end[0])
        step_rate.append(np.nan if end is None else end[1])
        step_masses.append(None if end is None or not keep_masses else end[2])
        if keep_masses and step_masses[-1] is not None \
                and len(step_masses) * step_masses[-1][0].size > STEP_MASSES_LIMIT:
            keep_masses = False         # too many steps to keep them all: phases read the output times
            step_masses = [None] * len(step_masses)
        while next_out < candidates.size and candidates[next_out] <= t:
            outputs[float(candidates[next_out])] = piece(candidates[next_out])
            next_out += 1
        if convergence is not None:     # a run to convergence keeps its last six decades (and t = 0)
            for old in [tt for tt in outputs if 0.0 < tt < t * 1e-6]:
                del outputs[old]
        if keep_dense:         # ~8 numbers per state entry and step (DOP853 keeps 7 stages)
            pieces.append(piece)
            times.append(t)
            if len(pieces) * 8 * n > DENSE_OUTPUT_LIMIT:
                keep_dense = False
                pieces.clear()
        progress.update(t)
        if convergence is not None:
            while convergence.due(t):
                tc = convergence.next_t
                loss, rate, _ = field.measure(piece(tc))
                if convergence.record(tc, loss, rate):
                    converged, message = True, convergence.message()
                    break
            if converged:
                break
        why = budget.exceeded(field.nfev) if solver.status == "running" else None
        if why is not None:
            status, message = -1, why
            break
    t_end = step_t[-1]
    outputs[float(t_end)] = solver.y.copy()
    if status < 0:
        message = (f"integration stopped at t={t_end:g} before " +
                   (f"t_max={t_max:g}" if t_max is not None else "convergence") + f": {message}")
    elif convergence is not None and not converged:
        status = -1
        message = f"not converged by t={t_end:g} (the cap of a run without t_max)"
    dense = OdeSolution(times, pieces) if keep_dense and pieces else None
    return Run(t_end, status, message, converged, outputs, np.array(step_t), np.array(step_loss),
               np.array(step_rate), step_masses, dense, convergence.checks if convergence is not None else [])
