"""SymPy derivations behind gradflow's kernels (see derivations/README.md for the walk-through).

Two families of expressions are derived here and nowhere else:

(a) ``meanfield_query``: the mean-field loss of one masked query for fixed amplitudes,
    l = 1/2 [z0^2 - 2 z0 N0 / D + sum_j N_j^2 / D^2],  and its partial derivatives, written in the
    normalised variables a_j = N_j / D (so that kernels never form D itself: log-space safe).

(b) ``key_factors``: for the exact method (and its mean-field counterpart) the per-key-class
    factors of the integrand of docs/model.md section 4 in the dimensionless variables
    ta = t * alpha, tb = t * beta: log phi, the tilted unmasked mean M = ta*u,
    the tilted variance V = ta^2 u (1 - u), the masked attention mass tb (1 - u), and their
    derivatives along log(alpha) and log(beta).

Each public function returns a list of ``(name, expression)`` pairs; ``generate.py`` prints them.
"""
from __future__ import annotations

import sympy as sp

# dimensionless key weights, mask ratio, and the tilted unmasked probability
ta, tb = sp.symbols("ta tb", positive=True)
gamma = sp.symbols("gamma", positive=True)  # the mask ratio
u = sp.symbols("u", positive=True)          # u = (1-gamma) e^{-ta} / phi
w = sp.symbols("w", positive=True)          # w = 1 - u = gamma e^{-tb} / phi, passed separately so that
                                            # 1 - u keeps its relative precision when u -> 1


def _log_derivative(expr, x):
    """Derivative along log x (x * d/dx): how a kernel parameter (a log-weight) moves expr."""
    return sp.simplify(x * sp.diff(expr, x))


def key_factors_exact():
    """Per-key-class factors of the exact integrand, eliminated onto (ta, tb, u).

    phi = gamma e^{-tb} + (1-gamma) e^{-ta} is E[e^{-t w}] for one key (masked w = beta, unmasked
    w = alpha). Derivatives are taken of the explicit expressions, then e^{-ta}, e^{-tb} are
    eliminated through u; the elimination is checked to be exact.
    """
    phi = gamma * sp.exp(-tb) + (1 - gamma) * sp.exp(-ta)
    u_expr = (1 - gamma) * sp.exp(-ta) / phi
    L = sp.log(phi)
    M = ta * u_expr
    V = ta**2 * u_expr * (1 - u_expr)
    Qm = tb * (1 - u_expr)
    # back-substitution: e^{-ta} = u phi / (1-gamma),  e^{-tb} = (1-u) phi / gamma  with phi free
    phi_s = sp.symbols("phi", positive=True)
    back = {sp.exp(-ta): u * phi_s / (1 - gamma), sp.exp(-tb): (1 - u) * phi_s / gamma}

    def eliminate(expr):
        e = sp.simplify(sp.expand(expr).subs(back))
        e = sp.factor(sp.simplify(e))
        assert phi_s not in e.free_symbols, e
        # every factor other than u itself is rewritten through w = 1 - u
        e = sp.Mul(*[f if f.free_symbols.isdisjoint({u}) or f == u
                     else sp.expand(f.subs(u, 1 - w)) for f in sp.Mul.make_args(e)])
        # exactness check at a rational point, through both u and w
        pt = {ta: sp.Rational(3, 7), tb: sp.Rational(11, 5), gamma: sp.Rational(2, 7)}
        u_val = u_expr.subs(pt)
        assert sp.simplify(e.subs({u: u_val, w: 1 - u_val}).subs(pt) - expr.subs(pt)) == 0
        return e

    out = [("M", eliminate(M)), ("V", eliminate(V)), ("Qm", eliminate(Qm))]
    for name, expr in (("L", L), ("M", M), ("V", V)):
        out.append((f"d{name}_a", eliminate(_log_derivative(expr, ta))))
        out.append((f"d{name}_b", eliminate(_log_derivative(expr, tb))))
    return out


def key_factors_meanfield():
    """Mean-field counterpart: counts replaced by their means, so the key enters D with the
    deterministic weight gamma*beta + (1-gamma)*alpha and contributes no variance."""
    L = -(gamma * tb + (1 - gamma) * ta)
    M = (1 - gamma) * ta
    V = sp.Integer(0)
    Qm = gamma * tb
    out = [("L", L), ("M", M), ("V", V), ("Qm", Qm)]
    for name, expr in (("L", L), ("M", M), ("V", V)):
        out.append((f"d{name}_a", _log_derivative(expr, ta)))
        out.append((f"d{name}_b", _log_derivative(expr, tb)))
    return out


def meanfield_query():
    """Mean-field per-query loss for fixed amplitudes and its derivatives.

    With D = c + sum_r m_r (gamma beta_r + (1-gamma) alpha_r) and N_j = z_j (1-gamma) sum_{r in j} m_r alpha_r,
    l = 1/2 [z0^2 - 2 z0 N0/D + sum_j N_j^2/D^2]. The kernel needs D dl/dD and D dl/dN_j; both are
    functions of the shares a_j = N_j/D only (S2 = sum_j a_j^2), which is what is generated.
    """
    z0, D, N0, Nj, S2N = sp.symbols("z0 D N0 Nj S2N", positive=True)   # S2N = sum_j N_j^2
    a0, aj, S2 = sp.symbols("a0 aj S2", real=True)
    loss = sp.Rational(1, 2) * (z0**2 - 2 * z0 * N0 / D + S2N / D**2)
    to_shares = {N0: a0 * D, Nj: aj * D, S2N: S2 * D**2}
    D_dD = sp.simplify((D * sp.diff(loss, D)).subs(to_shares))
    # N0 appears both in the cross term and inside S2N; Nj (j != j0) only inside S2N
    D_dN0 = sp.simplify((D * (sp.diff(loss, N0) + sp.diff(loss, S2N) * 2 * N0)).subs(to_shares))
    D_dNj = sp.simplify((D * sp.diff(loss, S2N) * 2 * Nj).subs(to_shares))
    value = sp.simplify(loss.subs(to_shares))
    for e in (value, D_dD, D_dN0, D_dNj):
        assert D not in e.free_symbols, e
    return [("loss", value), ("D_dD", D_dD), ("D_dN_own", D_dN0), ("D_dN_other", D_dNj)]


def meanfield_hessian_check(seed: int = 0) -> float:
    """Check the matrix formula for the mean-field query Hessian used by gradflow/jacobian.py
    against SymPy's own Hessian of the loss, on an instance with the query's area (two unmasked
    slots), another area (one), two masked slots and the query itself. Returns the largest
    absolute difference at a random point, evaluated at 60 digits."""
    import random
    rnd = random.Random(seed)
    x = sp.symbols("x0:6")               # c, beta_1, beta_2, alpha_1 (area 0), alpha_2 (area 0), alpha_3 (area 1)
    z = [sp.Rational(3, 2), sp.Rational(1, 2)]
    z0 = z[0]
    area = {3: 0, 4: 0, 5: 1}
    D = sum(sp.exp(xi) for xi in x)
    a = [sum(z[j] * sp.exp(x[i]) for i, jj in area.items() if jj == j) / D for j in range(2)]
    loss = sp.Rational(1, 2) * (z0**2 - 2 * z0 * a[0] + a[0] ** 2 + a[1] ** 2)
    H_sym = sp.hessian(loss, x)
    point = {xi: sp.Rational(rnd.randint(-20, 20), 7) for xi in x}
    H_at = H_sym.subs(point)
    # the formula of jacobian.py, in exact arithmetic
    p = sp.Matrix([sp.exp(point[xi]) for xi in x]) / sum(sp.exp(point[xi]) for xi in x)
    Z = sp.zeros(6, 2)
    for i, j in area.items():
        Z[i, j] = z[j]
    av = Z.T * p
    gv = sp.Matrix(av)
    gv[0] -= z0
    h = Z * gv
    lam = (gv.T * av)[0]
    grad = sp.Matrix([p[i] * (h[i] - lam) for i in range(6)])
    Ja = sp.Matrix(2, 6, lambda j, k: p[k] * (Z[k, j] - av[j]))
    ZJ = Z * Ja
    agJ = (av + gv).T * Ja
    H_formula = sp.Matrix(6, 6, lambda i, k: (grad[i] if i == k else 0) - grad[i] * p[k]
                          + p[i] * (ZJ[i, k] - agJ[0, k]))
    # evaluated at 60 digits: agreement to ~1e-55 means the two expressions are identical
    return float(max(abs(sp.N(d, 60)) for d in (H_at - H_formula)))
