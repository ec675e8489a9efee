import numpy as np
import pytest

from gradflow import Amplitude, Cluster, DataModel


def test_exposed_fields_and_classes():
    m = DataModel(grid=(2, 3), clusters=[Cluster([[0, 0, 1], [0, 1, 1]], prob=0.25),
                                         Cluster([0, 1, 1, 0, 1, 2], prob=0.75)], mask_ratio=0.3)
    assert m.n_patches == 6 and m.grid == (2, 3) and m.n_clusters == 2
    assert m.features == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert m.n_features == 5 and m.feature_index(1, 2) == 4 and m.feature_index(0, 1) == 1
    assert [c.prob for c in m.clusters] == [0.25, 0.75]
    assert m.clusters[0].areas.tolist() == [0, 0, 1, 0, 1, 1]
    # signatures (0,0) (0,1) (1,1) (0,0) (1,1) (1,2): four classes, first-appearance order
    assert m.class_of.tolist() == [0, 1, 2, 0, 2, 3]
    assert m.class_sizes.tolist() == [2, 1, 2, 1]
    np.testing.assert_allclose(m.ceiling()[0], 1 - 0.3 ** 2)


def test_uniform_probability_default_does_not_touch_callers_cluster():
    c = Cluster([0, 1])
    m = DataModel(n_patches=2, clusters=[c, Cluster([0, 0])], mask_ratio=0.5)
    assert [cl.prob for cl in m.clusters] == [0.5, 0.5] and c.prob is None


def test_amplitude_uniform_is_gauss_legendre():
    a = Amplitude.uniform(0.5, 1.5, n_atoms=4)
    # exact for polynomials up to degree 7 against the uniform density on [0.5, 1.5]
    for n in range(8):
        exact = (1.5 ** (n + 1) - 0.5 ** (n + 1)) / (n + 1)
        assert a.weights @ a.values ** n == pytest.approx(exact, rel=1e-13)


def test_amplitude_mapping_leaves_other_areas_at_one():
    c = Cluster([0, 1, 2], amplitudes={1: Amplitude([2.0, 3.0], [0.5, 0.5])})
    assert [a.values.tolist() for a in c.amplitudes] == [[1.0], [2.0, 3.0], [1.0]]


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_patches=3, clusters=[Cluster([0, 1])], mask_ratio=0.5), "areas"),
    (dict(n_patches=2, clusters=[Cluster([0, 1])], mask_ratio=0.0), "mask_ratio"),
    (dict(n_patches=2, clusters=[Cluster([0, 1])], mask_ratio=1.0), "mask_ratio"),
    (dict(n_patches=2, clusters=[Cluster([0, 1])], mask_ratio=float("nan")), "mask_ratio"),
    (dict(n_patches=2, clusters=[Cluster([0, 1], prob=0.4), Cluster([0, 0], prob=0.5)], mask_ratio=0.5), "prob"),
    (dict(n_patches=2, clusters=[], mask_ratio=0.5), "clusters"),
    (dict(n_patches=0, clusters=[Cluster([0])], mask_ratio=0.5), "n_patches"),
    (dict(grid=(2, 0), clusters=[Cluster([0])], mask_ratio=0.5), "grid"),
    (dict(n_patches=5, grid=(2, 2), clusters=[Cluster([0, 0, 0, 0])], mask_ratio=0.5), "n_patches"),
])
def test_model_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DataModel(**kwargs)


@pytest.mark.parametrize("make, field, value", [
    (lambda: Cluster([0, 2]), "labels", "2"),
    (lambda: Cluster([1, 1]), "labels", "1"),
    (lambda: Cluster([0, 1], prob=-0.1), "prob", "-0.1"),
    (lambda: Cluster([0, 1], prob=float("inf")), "prob", "inf"),
    (lambda: Cluster([0.5, 1]), "areas", "0.5"),
    (lambda: Amplitude([1.0, -2.0]), "values", "-2.0"),
    (lambda: Amplitude([0.0]), "values", "0.0"),
    (lambda: Amplitude([2e152]), "values", "2e+152"),
    (lambda: Amplitude([1.0, 2.0], [0.7, 0.7]), "weights", "0.7"),
    (lambda: Amplitude([1.0, 2.0], [1.2, -0.2]), "weights", "-0.2"),
    (lambda: Amplitude.uniform(2.0, 1.0), "high", "1.0"),
    (lambda: Cluster([0, 1], amplitudes={5: Amplitude([1.0])}), "amplitudes", "5"),
])
def test_component_errors_name_field_and_value(make, field, value):
    with pytest.raises(ValueError, match=field) as err:
        make()
    assert value in str(err.value)


def test_roundtrip_through_dict():
    m = DataModel(n_patches=4, clusters=[Cluster([0, 1, 1, 0], amplitudes=Amplitude([1.0, 2.0])),
                                         Cluster([0, 0, 0, 0])], mask_ratio=0.2)
    m2 = DataModel.from_dict(m.to_dict())
    assert m2.to_dict() == m.to_dict()


def test_models_equal_by_specification():
    def build(gamma):
        return DataModel(grid=(2, 2), clusters=[Cluster([[0, 1], [1, 1]], amplitudes=Amplitude.uniform(0.5, 1.5, 3))],
                         mask_ratio=gamma)
    a, b, c = build(0.5), build(0.5), build(0.4)
    assert a == b and hash(a) == hash(b) and a.fingerprint() == b.fingerprint()
    assert a != c and a.fingerprint() != c.fingerprint()
    assert DataModel.from_dict(a.to_dict()) == a
    assert len(a.fingerprint()) == 64 and a.fingerprint() == build(0.5).fingerprint()


def test_errors_are_the_library_s_own_value_errors():
    import gradflow
    with pytest.raises(gradflow.InvalidInputError):
        DataModel(n_patches=2, clusters=[Cluster([0, 1])], mask_ratio="0.5")   # a string is not coerced
    assert issubclass(gradflow.InvalidInputError, ValueError)
    assert issubclass(gradflow.ConfigError, gradflow.InvalidInputError)
    with pytest.raises(gradflow.InvalidInputError, match="continuous"):
        Amplitude([1.0, 2.0], continuous=(-1.0, 2.0))          # bounds of a continuous law are checked
    with pytest.raises(gradflow.InvalidInputError, match="n_atoms"):
        Amplitude.uniform(1, 2, 1e6)                              # a float count is refused
    with pytest.raises(gradflow.InvalidInputError, match="at most"):
        Amplitude.uniform(1, 2, 100_000)                          # too many atoms to fit in memory
