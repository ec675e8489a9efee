import numpy as np
import pytest
from gradflow.presets import balanced, global_local, square_grid


@pytest.mark.parametrize("P", [36, 64, 256, 1024])
def test_global_local_classes_do_not_grow_with_P(P):
    m = global_local(P, n_local=2, local_size=4, mask_ratio=0.5, n_clusters=2)
    assert m.n_classes == 1 + 2 * 2
    for cl in m.clusters:
        sizes = cl.area_sizes()
        assert sizes[0] == P - 2 * 4 and np.all(sizes[1:] == 4)   # area 0 is the global area
    # local areas are compact 2x2 blocks
    H, W = m.grid
    rows, cols = np.nonzero(m.clusters[0].areas.reshape(H, W) == 1)
    assert np.ptp(rows) == 1 and np.ptp(cols) == 1
    # the two clusters put their local areas in different places
    assert not np.any((m.clusters[0].areas > 0) & (m.clusters[1].areas > 0))


def test_global_local_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="n_local"):
        global_local(16, n_local=4, local_size=4)


def test_square_grid():
    assert square_grid(64) == (8, 8) and square_grid(12) == (3, 4) and square_grid(7) == (1, 7)


def test_balanced_tilings():
    m = balanced(grid=(8, 8), area_shape=(4, 4), mask_ratio=0.5, n_clusters=1)
    assert m.n_classes == 4 and np.all(m.clusters[0].area_sizes() == 16)
    m2 = balanced(grid=(8, 8), area_shape=(4, 4), mask_ratio=0.5, n_clusters=2)
    assert np.all(m2.clusters[1].area_sizes() == 16)
    assert m2.n_classes == 16           # each area cut into four by the shifted tiling
    assert balanced(grid=(16, 16), area_shape=(8, 8), mask_ratio=0.5, n_clusters=2).n_classes == 16
    with pytest.raises(ValueError, match="area_shape"):
        balanced(grid=(8, 8), area_shape=(3, 4), mask_ratio=0.5)


def test_one_registry_one_calling_convention():
    from gradflow.presets import PRESETS, preset
    assert set(PRESETS) >= {"global_local", "balanced"}
    for name in PRESETS:
        m = preset(name, P=16, mask_ratio=0.4)
        assert m.n_patches == 16 and m.mask_ratio == 0.4
    assert preset("balanced", P=16).grid == (4, 4) and preset("balanced", P=16).n_features == 4
    assert preset("global_local", P=64, n_local=2) == global_local(64, n_local=2)
    # an option the preset does not have is refused, naming the nearest one
    with pytest.raises(ValueError, match=r"no option 'n_locl' \(did you mean 'n_local'\?\)"):
        preset("global_local", P=64, n_locl=2)
    with pytest.raises(ValueError, match="no option 'n_local'"):
        preset("balanced", P=64, n_local=2)
    with pytest.raises(ValueError, match="preset"):
        preset("nope", P=16)
    with pytest.raises(ValueError, match="area_shape"):
        preset("balanced", P=15)                                  # 3 x 5: no four equal areas


def test_presets_refuse_options_they_do_not_have():
    from gradflow import InvalidInputError
    from gradflow.presets import balanced, global_local, voronoi
    for fn in (global_local, balanced, voronoi):
        with pytest.raises(InvalidInputError, match="unknown option 'bogus'"):
            fn(bogus=1)
