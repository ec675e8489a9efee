"""The committed SymPy output must be exactly what the derivations produce now."""
from conftest import ROOT, load_source


def _generator():
    return load_source("derivations/generate.py")


def test_regenerated_source_is_identical():
    gen = _generator()
    assert gen.render() == (ROOT / "gradflow" / "theory" / "_generated.py").read_text()


def test_generated_factors_match_direct_formulas():
    import math

    from gradflow.theory._generated import exact_key_factors
    ta, tb, g = 0.7, 2.3, 0.35
    L, M, V, Qm, *_ = exact_key_factors(ta, tb, g, math.log(g), math.log1p(-g))
    phi = g * math.exp(-tb) + (1 - g) * math.exp(-ta)
    u = (1 - g) * math.exp(-ta) / phi
    assert abs(L - math.log(phi)) < 1e-15 and abs(M - ta * u) < 1e-15
    assert abs(V - ta**2 * u * (1 - u)) < 1e-15 and abs(Qm - tb * (1 - u)) < 1e-15


def test_quadrature_rule_construction_reproduces_a_tabulated_rule():
    """derivations/quadrature_rules.py, run again for one spread, builds a rule as short as the
    committed one (``_quadrature_rules``) that integrates the family as accurately (checked on
    members it was not built from)."""
    import numpy as np

    from gradflow.theory import _quadrature_rules as table
    gen = load_source("derivations/quadrature_rules.py")
    row = 3
    rank, nodes, weights, err = gen.build(float(table.FAST_SPREAD[row]), "FAST")
    assert nodes.size <= table.FAST_NODES[row] and nodes.size <= (rank + 1) // 2 + 1
    assert err <= 2e-12 and np.all(weights > 0)
    n = table.FAST_NODES[row]
    assert gen.check(table.FAST_SPREAD[row], table.FAST_LOG_T[row, :n], table.FAST_WEIGHT[row, :n]) <= 2e-12
