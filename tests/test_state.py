"""The flow's state type: flat packing, per-position views, validation of user states."""
import numpy as np
import pytest
from conftest import random_state
from gradflow.presets import global_local

from gradflow import InvalidInputError, State
from gradflow.theory.reduction import signature_reduction


def test_flat_round_trip_and_trajectories():
    m = global_local(36, n_local=2, n_clusters=2)
    red = signature_reduction(m)
    rng = np.random.default_rng(0)
    S, F = red.n_classes, red.n_features
    y = rng.normal(size=(7, S * F + S * S + S))
    states = State.from_flat(red, y)
    assert states.shape == (7,) and len(states) == 7
    np.testing.assert_array_equal(states.flat(), y)
    np.testing.assert_array_equal(states[3].flat(), y[3])
    # per-position views: a position carries its class's numbers; the diagonal is B_self
    st = states[3]
    c = m.class_of
    np.testing.assert_array_equal(st.A, st.A_classes[c])
    p, q = 0, int(np.flatnonzero(c == c[0])[1])
    assert st.B[p, q] == st.B_classes[c[p], c[q]] and st.B[p, p] == st.B_self[c[p]]
    np.testing.assert_array_equal(states.B[3], st.B)
    with pytest.raises(InvalidInputError, match="entries"):
        State.from_flat(red, y[:, :-1])


def test_user_states_are_validated(two_cluster_model):
    m = two_cluster_model
    A, B = random_state(m, np.random.default_rng(1))
    st = State.from_positions(m, A, B)
    np.testing.assert_array_equal(st.B, B)
    np.testing.assert_array_equal(st.A, A)
    with pytest.raises(InvalidInputError, match="A must be real"):
        State.from_positions(m, A + 1j, B)                       # complex is refused, not truncated
    with pytest.raises(InvalidInputError, match="B must have shape"):
        State.from_positions(m, A, B[:3])
    with pytest.raises(InvalidInputError, match="too large"):
        State.from_positions(m, A, 1e7 * B)


def test_wrong_types_get_clear_errors(two_cluster_model):
    import gradflow
    A, B = random_state(two_cluster_model, np.random.default_rng(2))
    with pytest.raises(InvalidInputError, match="model must be a DataModel"):
        gradflow.population_grad("m", A, B)
    with pytest.raises(InvalidInputError, match="method must be one of"):
        gradflow.population_loss(two_cluster_model, A, B, method="exakt")
