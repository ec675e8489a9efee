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
    m = balanced((8, 8), (4, 4), 0.5, n_clusters=1)
    assert m.n_classes == 4 and np.all(m.clusters[0].area_sizes() == 16)
    m2 = balanced((8, 8), (4, 4), 0.5, n_clusters=2)
    assert np.all(m2.clusters[1].area_sizes() == 16)
    assert m2.n_classes == 16           # each area cut into four by the shifted tiling
    assert balanced((16, 16), (8, 8), 0.5, n_clusters=2).n_classes == 16
    with pytest.raises(ValueError, match="area_shape"):
        balanced((8, 8), (3, 4), 0.5)
