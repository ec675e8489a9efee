"""Generalized Gaussian quadratures for the t-integrals of the fine and the fast rule.

Run ``python derivations/quadrature_rules.py`` to regenerate ``gradflow/theory/_quadrature_rules.py``
(takes about a minute). Why and how: derivations/README.md, section 3.

Every integrand of the kernels, written in sigma = log t, is a mixture over masks and atoms of

    f_{D,p}(sigma) = (tD)^(p+1) e^{-tD} / p!        (integral 1), p = 0 .. 2,

with D between the query's bounds D_min and D_max. Scaled to D_max = 1 the family depends only on
the spread s = log(D_max / D_min). A rule that integrates every member to EPS integrates every
mixture to EPS times the sum of its coefficients. The family has a small numerical rank (46
functions at 1e-13 for s = 4.5), and a generalized Gaussian rule needs half as many nodes as
that rank: 23, against ~37 of the double-exponential trapezoid at step 0.3 (which must place its
left tail by D_max and its step by the strip of analyticity of e^{-tD}).

Construction (Bremer, Gimbutas and Rokhlin, SIAM J. Sci. Comput. 32 (2010) 1761):

1. sample the family at Gauss-Legendre points on panels of width 0.25 in sigma (error far below EPS);
2. an orthonormal basis of its span by SVD, truncated at EPS relative to the largest singular
   value; its members are combinations of the family's, so they can be evaluated (with their
   derivatives) anywhere;
3. a first rule with as many nodes as the basis has functions: nodes by pivoted QR, weights by
   solving the moment equations;
4. node elimination: remove the node of least significance and move the others (Gauss-Newton
   on nodes and weights, least-norm steps) until the moment equations hold again to EPS; repeat
   until no node can go. Weights must stay positive.

Each rule is then checked on members of the family it was not built from (D between the sample
points, p in POWERS), and its worst relative error is stored with it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# two tables: (SVD truncation, moment tolerances per basis function tried in turn, largest error
# per member accepted) of the fast rule and of the fine rule. Node elimination stops earlier at a
# tighter tolerance (more nodes, smaller error); the moment equations cannot be solved much
# closer than 1e-14 in double precision, so a fine rule that misses its error with every
# tolerance keeps all its first rule's nodes (one per basis function, 2e-15 to 1e-14: the row of
# spread 12 stays at 9.5e-15, but no query takes it, the double-exponential grid being shorter)
TABLES = {"FAST": (1e-13, (1e-13,), 5e-12), "FINE": (1e-15, (1e-14, 5e-15, 2.5e-15), 5e-15)}
POWERS = (0, 1, 2)              # t^(p+1) in sigma: the loss has p <= 1, its gradient p <= 2
N_D = 300                       # values of D sampled over the spread
PANEL = 0.25                    # the family is sampled on panels of this width in sigma ...
PANEL_POINTS = 20               # ... at this many Gauss-Legendre points each
LEFT = -38.0                    # sampled from tD_max = e^-38 (the p = 0 tail left of it: 3e-17) ...
RIGHT_TAIL = 48.0               # ... to tD_min = 48 (e^-48 48^3 / 2: 2e-16)
# spreads of the rules: a query takes the first rule whose spread covers its own; beyond the
# last, the double-exponential rule
SPREADS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 9.0,
           10.0, 12.0)
OUT = Path(__file__).resolve().parent.parent / "gradflow" / "theory" / "_quadrature_rules.py"


def members(spread: float, n_d: int):
    """(log D, p) of the members f_{D,p}: n_d values of D over [e^-spread, 1] for every p."""
    return np.tile(np.linspace(-spread, 0.0, n_d), len(POWERS)), np.repeat(np.array(POWERS), n_d)


def member_values(log_d: np.ndarray, p: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """f_{D,p}(sigma) = (tD)^(p+1) e^{-tD} / p! for every member: (members, points)."""
    tau = np.exp(log_d[:, None] + sigma[None, :])
    norm = np.array([1.0 / math.factorial(int(q)) for q in p])
    return norm[:, None] * tau ** (p[:, None] + 1) * np.exp(-tau)


class Family:
    """f_{D,p} for D on a grid over [e^-s, 1], p in POWERS, and an orthonormal basis of their span.

    The basis functions are the right singular vectors of the sampled family: sampled at
    Gauss-Legendre points on panels of width PANEL and evaluated anywhere by Legendre
    interpolation on their panel (stable; writing them as combinations of the family's members
    would divide by singular values down to EPS)."""

    def __init__(self, spread: float, eps: float, n_d: int = N_D):
        self.spread = spread
        self.ld, self.p = members(spread, n_d)
        self.lo, self.hi = LEFT, spread + math.log(RIGHT_TAIL)
        self.n_panels = int(math.ceil((self.hi - self.lo) / PANEL))
        u, w = np.polynomial.legendre.leggauss(PANEL_POINTS)
        left = self.lo + PANEL * np.arange(self.n_panels)
        self.sigma = (left[:, None] + 0.5 * PANEL * (u[None, :] + 1.0)).ravel()
        sqrt_w = np.sqrt(np.tile(0.5 * PANEL * w, self.n_panels))
        F = member_values(self.ld, self.p, self.sigma) * sqrt_w     # (members, points)
        _, S, Vt = np.linalg.svd(F, full_matrices=False)
        n = int((S > eps * S[0]).sum())
        samples = Vt[:n] / sqrt_w                           # basis_i at the points (orthonormal)
        self.moments = Vt[:n] @ sqrt_w
        # Legendre coefficients per panel: (n, panels, PANEL_POINTS)
        V_inv = np.linalg.inv(np.polynomial.legendre.legvander(u, PANEL_POINTS - 1))
        self.leg = np.einsum("dq,ikq->ikd", V_inv, samples.reshape(n, self.n_panels, PANEL_POINTS))

    def _local(self, sigma):
        sigma = np.clip(sigma, self.lo, self.hi - 1e-12)
        panel = np.minimum(((sigma - self.lo) // PANEL).astype(int), self.n_panels - 1)
        u = 2.0 * (sigma - self.lo - PANEL * panel) / PANEL - 1.0
        P = np.polynomial.legendre.legvander(u, PANEL_POINTS - 1)          # (points, degree)
        dP = np.zeros_like(P)
        for d in range(1, PANEL_POINTS):
            c = np.zeros(d + 1)
            c[d] = 1.0
            dP[:, d] = np.polynomial.legendre.legval(u, np.polynomial.legendre.legder(c))
        return panel, P, dP * (2.0 / PANEL)

    def basis(self, sigma):
        panel, P, _ = self._local(np.asarray(sigma))
        return np.einsum("ikd,kd->ik", self.leg[:, panel, :], P)

    def basis_derivatives(self, sigma):
        panel, _, dP = self._local(np.asarray(sigma))
        return np.einsum("ikd,kd->ik", self.leg[:, panel, :], dP)


def first_rule(family: Family):
    """As many nodes as basis functions, by pivoted QR; weights from the moment equations."""
    from scipy.linalg import qr
    B = family.basis(family.sigma)
    _, _, piv = qr(B, pivoting=True, mode="economic")
    nodes = np.sort(family.sigma[piv[:B.shape[0]]])
    weights = np.linalg.solve(family.basis(nodes), family.moments)
    return nodes, weights


def residual(family, nodes, weights):
    return family.basis(nodes) @ weights - family.moments


def gauss_newton(family, nodes, weights, tol, iterations=40):
    """Moment equations solved by damped Gauss-Newton (least-norm steps); None if it fails."""
    r = residual(family, nodes, weights)
    for _ in range(iterations):
        err = np.linalg.norm(r)
        if err < tol:
            return nodes, weights
        J = np.hstack([family.basis(nodes), family.basis_derivatives(nodes) * weights])
        step = np.linalg.lstsq(J, -r, rcond=None)[0]
        m = nodes.size
        lam = 1.0
        while lam > 1e-4:
            w_new = weights + lam * step[:m]
            x_new = nodes + lam * step[m:]
            if (w_new > 0).all() and (x_new > family.lo - 5).all() and (x_new < family.hi + 5).all():
                r_new = residual(family, x_new, w_new)
                if np.linalg.norm(r_new) < err:
                    nodes, weights, r = x_new, w_new, r_new
                    break
            lam *= 0.5
        else:
            return None
    return (nodes, weights) if np.linalg.norm(r) < tol else None


def eliminate(family, nodes, weights, tol, tries=8):
    """Remove nodes one at a time while the moment equations can be restored."""
    while True:
        B = family.basis(nodes)
        significance = weights * (B ** 2).sum(axis=0)
        for k in np.argsort(significance)[:tries]:
            keep = np.arange(nodes.size) != k
            found = gauss_newton(family, nodes[keep], weights[keep], tol)
            if found is not None:
                nodes, weights = found
                order = np.argsort(nodes)
                nodes, weights = nodes[order], weights[order]
                break
        else:
            return nodes, weights


def check(spread, nodes, weights, n_d=517):
    """Worst relative error on members of the family not used to build the rule."""
    return float(np.abs(member_values(*members(spread, n_d), nodes) @ weights - 1.0).max())


def build(spread, table="FAST"):
    """(rank, nodes, weights, worst relative error) of the rule of ``table`` for ``spread``."""
    eps, tolerances, target = TABLES[table]
    family = Family(spread, eps)
    first = first_rule(family)
    for tol in tolerances:
        tol = tol * math.sqrt(family.moments.size)
        nodes, weights = gauss_newton(family, *first, tol) or first
        nodes, weights = eliminate(family, nodes, weights, tol)
        err = check(spread, nodes, weights)
        if err <= target:
            return family.moments.size, nodes, weights, err
    return family.moments.size, first[0], first[1], check(spread, *first)


def main():
    lines = [
        '"""Generalized Gaussian rules of the t-grids. GENERATED by derivations/quadrature_rules.py.',
        "",
        "Do not edit: rerun ``python derivations/quadrature_rules.py``. For the fast and the fine rule,",
        "row i integrates (tD)^(p+1) e^{-tD} d sigma (p in POWERS) for every D in [e^{-SPREAD[i]}, 1] to the",
        "relative error ERROR[i]; the nodes are sigma = LOG_T[i, :NODES[i]] (for D_max = 1), the weights",
        "WEIGHT[i, :NODES[i]].",
        '"""',
        "import numpy as np",
        "",
        f"POWERS = {POWERS!r}",
    ]
    for table in TABLES:
        rows = []
        for spread in SPREADS:
            rank, nodes, weights, err = build(spread, table)
            print(f"{table} spread {spread:5.2f}: rank {rank:3d}, {nodes.size:3d} nodes, worst relative error {err:.1e}",
                  flush=True)
            rows.append((spread, nodes, weights, err))
        # a rule for a larger spread serves every smaller one: a row takes the next row's rule
        # when that one is shorter (elimination sometimes stops early at a tight tolerance)
        for i in range(len(rows) - 2, -1, -1):
            if rows[i + 1][1].size < rows[i][1].size:
                rows[i] = (rows[i][0],) + rows[i + 1][1:]
        n_max = max(r[1].size for r in rows)
        lines += [
            "",
            f"{table}_CONSTRUCTION = {TABLES[table]!r}   # SVD cut, moment tolerances, largest error",
            f"{table}_SPREAD = np.array({[r[0] for r in rows]!r})",
            f"{table}_NODES = np.array({[r[1].size for r in rows]!r}, dtype=np.int64)",
            f"{table}_ERROR = np.array({[float('%.2g' % r[3]) for r in rows]!r})",
        ]
        for name, k in (("LOG_T", 1), ("WEIGHT", 2)):
            lines.append(f"{table}_{name} = np.array([")
            for r in rows:
                padded = list(r[k]) + [0.0] * (n_max - r[k].size)
                lines.append("    [" + ", ".join(repr(float(v)) for v in padded) + "],")
            lines.append("])")
    OUT.write_text("\n".join(lines) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
