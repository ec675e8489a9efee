"""Data models from photographs: segmentation, amplitudes, shipped images, the per-area table,
the saved flow, the figure's data and the command line."""
import socket

import numpy as np
import pytest
from scipy import ndimage

import gradflow
from gradflow.analysis.areas import AreaTable, area_table, learned_last, within_area_fraction
from gradflow.analysis.image_flows import MOMENTS, ImageFlow, image_flow
from gradflow.images import (
    SAMPLE_NAMES,
    area_amplitudes,
    area_boundaries,
    data_model,
    exact_areas,
    patch_means,
    sample_images,
    segment,
)

SEVERAL = ["astronaut", "camera", "coffee", "chelsea", "rocket", "logo", "lfw:7"]


@pytest.fixture(scope="module")
def shipped():
    return sample_images(SEVERAL)


def assert_valid_labels(labels, grid, n_areas, min_area=1):
    """Labels 0..N-1 on the grid, each area one 4-connected region (scipy's labelling as the
    independent reference), numbered by first appearance in row-major order."""
    assert labels.shape == grid and labels.dtype.kind == "i"
    assert sorted(np.unique(labels).tolist()) == list(range(n_areas))
    for j in range(n_areas):
        _, count = ndimage.label(labels == j, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
        assert count == 1, f"area {j} has {count} pieces"
    _, first = np.unique(labels.ravel(), return_index=True)
    assert np.all(np.diff(first) > 0)
    assert np.bincount(labels.ravel()).min() >= min_area


def patch_image(mask, colours, scale=3):
    """An image whose patches (scale x scale pixels) take colours[mask[r, c]]."""
    colours = np.asarray(colours, dtype=np.float64)
    img = colours[np.asarray(mask)]
    return np.kron(img, np.ones((scale, scale) + (1,) * (img.ndim - 2)))


# ---- segmentation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,n_areas", [((14, 14), 8), ((7, 10), 5), ((14, 14), 1), ((6, 6), 20)])
def test_labels_valid_and_connected_on_shipped_images(shipped, grid, n_areas):
    for name, img in shipped.items():
        labels = segment(img, grid, n_areas)
        assert_valid_labels(labels, grid, n_areas, min_area=min(2, grid[0] * grid[1] // n_areas))
        assert np.array_equal(labels, segment(img, grid, n_areas)), name        # deterministic


def test_two_colour_image_is_split_along_its_colour_edge():
    rows, cols = np.mgrid[:14, :14]
    disc = (rows - 6.2) ** 2 + (cols - 8.1) ** 2 < 16          # a round region, not aligned with anything
    grey = patch_image(disc.astype(int), [0.2, 0.9])
    assert np.array_equal(segment(grey, (14, 14), 2), disc.astype(int))   # the background comes first
    rgb = patch_image(disc.astype(int), [[0.9, 0.1, 0.1], [0.1, 0.2, 0.8]])
    assert np.array_equal(segment(rgb, (14, 14), 2), disc.astype(int))
    for n_areas in (3, 8):                                     # more areas: none straddles the edge
        labels = segment(rgb, (14, 14), n_areas)
        assert_valid_labels(labels, (14, 14), n_areas)
        for j in range(n_areas):
            assert np.unique(disc[labels == j]).size == 1
    # a straight edge between patch columns 5 and 6, at 2 pixels a patch
    img = np.zeros((28, 28))
    img[:, 12:] = 1.0
    assert np.array_equal(segment(img, (14, 14), 2), np.repeat([[0] * 6 + [1] * 8], 14, axis=0))


def test_four_rectangles_of_unequal_size_are_recovered():
    """Known regions: four rectangles of different sizes and colours on a 14 x 14 grid, at 3
    pixels a patch with noise, are found exactly with n_areas = 4."""
    truth = np.zeros((14, 14), dtype=int)
    truth[:5, 9:] = 1
    truth[5:, :4] = 2
    truth[10:, 4:] = 3
    colours = np.array([[0.9, 0.8, 0.2], [0.1, 0.5, 0.9], [0.8, 0.1, 0.3], [0.2, 0.8, 0.3]])
    img = np.kron(colours[truth], np.ones((3, 3, 1)))
    img = np.clip(img + 0.03 * np.random.default_rng(0).standard_normal(img.shape), 0, 1)
    labels = segment(img, (14, 14), 4)
    assert_valid_labels(labels, (14, 14), 4)
    for j in range(4):      # each found area is exactly one rectangle (labels are renumbered)
        assert np.unique(truth[labels == j]).size == 1
    assert np.unique(labels).size == 4


def test_intensity_scale_and_dtype_do_not_matter(shipped):
    img = shipped["coffee"]
    labels = segment(img)
    assert np.array_equal(labels, segment(img / 255.0))
    assert np.array_equal(labels, segment(3.0 * img.astype(np.float64) - 7.0))
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)   # opaque alpha
    assert np.array_equal(labels, segment(rgba))


def test_segmentation_follows_the_image_better_than_random_partitions(shipped):
    for name in ("camera", "coffee", "astronaut"):
        means = patch_means(shipped[name])
        ours = within_area_fraction(means, segment(shipped[name]))
        voronoi = np.mean([within_area_fraction(means, segment(shipped[name], method="voronoi", seed=s))
                           for s in range(5)])
        assert ours < 0.6 * voronoi, (name, ours, voronoi)


def test_repair_merges_by_ward_and_splits_into_connected_areas():
    # a strip of four patches with features 0, 0, 1, 10: Ward merges (0, 0), then (0, 1)
    features = np.array([[0.0], [0.0], [1.0], [10.0]]).reshape(1, 4, 1)
    assert exact_areas(np.arange(4).reshape(1, 4), features, 3).tolist() == [[0, 0, 1, 2]]
    assert exact_areas(np.arange(4).reshape(1, 4), features, 2).tolist() == [[0, 0, 0, 1]]
    # a checkerboard is 196 one-patch pieces; a single label must be split; both end at N
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(14, 14, 3))
    checker = (np.add.outer(np.arange(14), np.arange(14)) % 2).astype(int)
    for start in (checker, np.zeros((14, 14), int)):
        for n in (1, 7, 30):
            assert_valid_labels(exact_areas(start, feats, n, min_area=2), (14, 14), n, min_area=2)
    # a split of a uniform strip cuts it in the middle (Ward on the position features)
    strip = np.stack(np.meshgrid(np.zeros(1), np.arange(8) * 0.1, indexing="ij"), axis=-1)
    assert exact_areas(np.zeros((1, 8), int), strip, 2).tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]


def test_min_area_and_every_patch_its_own_area(shipped):
    img = shipped["astronaut"]
    assert np.bincount(segment(img, (14, 14), 8).ravel()).min() >= 2
    assert_valid_labels(segment(img, (5, 5), 25), (5, 5), 25)
    assert np.bincount(segment(img, (14, 14), 8, min_area=10).ravel()).min() >= 10


@pytest.mark.parametrize("image,kwargs,field", [
    (np.zeros((4, 20, 20, 3)), {}, "image"),                      # four dimensions
    (np.zeros((20, 20, 2)), {}, "image"),                         # two channels
    (np.array([["a"]]), {}, "image"),
    (np.full((20, 20), np.nan), {}, "image"),
    (np.zeros((10, 30)), {}, "image"),                            # fewer rows than the grid
    (np.zeros((30, 30)), {"n_areas": 0}, "n_areas"),
    (np.zeros((30, 30)), {"n_areas": 197}, "n_areas"),
    (np.zeros((30, 30)), {"n_areas": 2.5}, "n_areas"),
    (np.zeros((30, 30)), {"grid": (0, 4)}, "grid"),
    (np.zeros((30, 30)), {"method": "slick"}, "method"),
    (np.zeros((30, 30)), {"min_area": 0}, "min_area"),
    (np.zeros((30, 30)), {"method": "voronoi", "seed": -1}, "seed"),
    (np.full((30, 30, 4), 2.0), {}, "alpha"),                     # float alpha outside [0, 1]
])
def test_bad_images_and_arguments_are_refused_by_name(image, kwargs, field):
    with pytest.raises(ValueError, match=field):
        segment(image, **kwargs)


def test_nan_error_names_the_pixel():
    img = np.zeros((30, 30, 3))
    img[4, 5, 1] = np.nan
    with pytest.raises(gradflow.InvalidInputError, match=r"image must be finite.*\[4, 5, 1\]"):
        segment(img)


# ---- amplitudes and the data model ------------------------------------------------------------------
def test_contrast_amplitudes_follow_the_documented_rule():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 200, size=(13, 17, 3))      # patches of unequal pixel counts
    labels = np.zeros((4, 5), int)
    labels[:, 3:] = 1
    labels[3, :3] = 2
    # reference: pixel by pixel, with the patch edges round(i * H / gh)
    x = (img - img.min()) / (img.max() - img.min())
    m = x.reshape(-1, 3).mean(axis=0)
    ys, xs = np.round(np.linspace(0, 13, 5)).astype(int), np.round(np.linspace(0, 17, 6)).astype(int)
    sums, counts = np.zeros(3), np.zeros(3)
    for r in range(4):
        for c in range(5):
            block = x[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
            sums[labels[r, c]] += ((block - m) ** 2).sum()
            counts[labels[r, c]] += block.size
    rms = np.sqrt(sums / counts)
    np.testing.assert_allclose(area_amplitudes(img, labels), rms / rms.mean(), rtol=1e-12)
    assert area_amplitudes(img, labels).mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(area_amplitudes(img, labels, "unit"), np.ones(3))


def test_amplitudes_are_clipped_and_constant_images_get_one():
    # three equal areas at 0, 1/2 and 1: the middle one is the image mean, RMS 0 -> clipped to 0.05
    mask = np.repeat([[0, 0, 1, 1, 2, 2]], 6, axis=0)
    img = patch_image(mask, [0.0, 0.5, 1.0])
    amps = area_amplitudes(img, mask)
    assert amps[1] == 0.05 and amps[0] == amps[2] == pytest.approx(1.5)
    np.testing.assert_array_equal(area_amplitudes(np.full((12, 12), 7.0), mask), np.ones(3))
    # one bright patch among 49 one-patch areas: 48/49 against a mean RMS of 96/2401, 24.5 -> 20
    labels = np.arange(49).reshape(7, 7)
    img = np.zeros((7, 7))
    img[3, 3] = 1.0
    amps = area_amplitudes(img, labels)
    assert amps[24] == 20.0 and np.allclose(np.delete(amps, 24), 24.5 / 48)


def test_data_model_has_one_cluster_per_image_and_is_deterministic(shipped):
    images = {n: shipped[n] for n in ("camera", "coffee", "lfw:7")}
    model = data_model(images, grid=(8, 8), n_areas=5, mask_ratio=0.4)
    assert model.grid == (8, 8) and model.n_clusters == 3 and model.mask_ratio == 0.4
    for k, img in enumerate(images.values()):
        labels = segment(img, (8, 8), 5)
        assert np.array_equal(model.clusters[k].areas.reshape(8, 8), labels)
        amps = [a.values.tolist() for a in model.clusters[k].amplitudes]
        assert amps == [[float(a)] for a in area_amplitudes(img, labels)]           # point masses
    again = data_model(list(images.values()), grid=(8, 8), n_areas=5, mask_ratio=0.4)
    assert again == model and again.fingerprint() == model.fingerprint()
    weighted = data_model(images, grid=(8, 8), n_areas=5, probs=[0.5, 0.3, 0.2], amplitudes="unit")
    assert weighted.probs.tolist() == [0.5, 0.3, 0.2]
    assert all(a.values.tolist() == [1.0] for c in weighted.clusters for a in c.amplitudes)
    with pytest.raises(ValueError, match="probs"):
        data_model(images, grid=(8, 8), n_areas=5, probs=[0.5, 0.5])
    with pytest.raises(ValueError, match="amplitudes"):
        data_model(images, grid=(8, 8), n_areas=5, amplitudes="rms")


# ---- shipped images ----------------------------------------------------------------------------------
def test_sample_images_load_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sample_images tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    images = sample_images(list(SAMPLE_NAMES) + ["lfw:0", "lfw:199"])
    assert list(images) == list(SAMPLE_NAMES) + ["lfw:0", "lfw:199"]
    assert images["astronaut"].shape == (512, 512, 3) and images["camera"].shape == (512, 512)
    assert images["logo"].shape[2] == 4 and images["lfw:199"].shape == (25, 25)
    assert len(sample_images()) == 16
    with pytest.raises(ValueError, match="did you mean 'coffee'"):
        sample_images(["cofee"])
    with pytest.raises(ValueError, match="lfw:0"):
        sample_images("lfw:200")


def test_images_namespace_imports_every_way():
    import gradflow.images as by_import
    from gradflow.images import segment as by_from
    assert gradflow.images is by_import and by_from is segment is gradflow.images.segment


# ---- the per-area table and which areas are learned last ---------------------------------------------
def test_learned_last_recovers_a_known_law():
    """T2 = 50 size^-0.5 amplitude^-2 exactly: the regression finds -0.5 and -2 with R^2 = 1; with
    equal amplitudes inside an image, T2 falls with size (rank correlation -1 within images)."""
    rng = np.random.default_rng(1)
    size = rng.integers(2, 60, size=40)
    amp = np.repeat(rng.uniform(0.3, 3.0, size=4), 10)      # one amplitude per image of 10 areas
    cols = {"image": np.repeat(np.arange(4), 10), "area": np.tile(np.arange(10), 4), "size": size,
            "amplitude": amp, "border_distance": rng.uniform(0, 6, size=40),
            "T2": 50.0 * size ** -0.5 * amp ** -2.0}
    for n in ("T1", "T3", "target", "target_fraction"):
        cols[n] = np.zeros(40)
    result = learned_last(AreaTable(cols, ["a", "b", "c", "d"], 100.0, 0.05))
    assert result.regression["log size"][0] == pytest.approx(-0.5, abs=1e-9)
    assert result.regression["log amplitude"][0] == pytest.approx(-2.0, abs=1e-9)
    assert result.regression["border_distance"][0] == pytest.approx(0.0, abs=1e-9)
    assert result.r_squared == pytest.approx(1.0)
    assert result.within_image["size"] == pytest.approx(-1.0)
    assert all(row["smallest"] for row in result.last)
    assert "rho" in result.text()


@pytest.fixture(scope="module")
def small_flow(shipped):
    """Three photographs at 6 x 6 patches, 3 areas each, exact flow."""
    images = {n: shipped[n] for n in ("astronaut", "coffee", "chelsea")}
    return image_flow(images, grid=(6, 6), n_areas=3, t_max=3000.0, method="exact")


def test_area_table_columns(small_flow):
    sol, ph = small_flow.solution, small_flow.ph
    table = small_flow.area_table()
    assert len(table) == 9 and table.names == ["astronaut", "coffee", "chelsea"]
    rows, cols = np.divmod(np.arange(36), 6)
    border = np.minimum.reduce([rows, cols, 5 - rows, 5 - cols])
    for i in range(9):
        k, j = table["image"][i], table["area"][i]
        pos = np.flatnonzero(small_flow.labels(k).ravel() == j)
        assert table["size"][i] == pos.size
        assert table["amplitude"][i] == sol.model.clusters[k].amplitudes[j].values[0]
        assert table["border_distance"][i] == pytest.approx(border[pos].mean())
        assert table["T2"][i] == pytest.approx(np.median(ph.T2[k, pos]))      # every area reached T2 here
        assert table["target"][i] == pytest.approx(sol.target_attention[-1, k, pos].mean())
    assert np.all(table["T1"] > 0) and np.all(np.isfinite(table["T2"]))
    assert "astronaut" in table.table() and table.to_xarray().sizes["row"] == 9
    assert area_table(sol, table.names).table() == table.table()


def test_query_attention_maps_are_the_exact_expected_attention(small_flow):
    """The kept maps equal the expected attention evaluated per position (every position its own
    class: independent of the classes the flow ran on) at the query's phase times."""
    from gradflow.theory.population import attention_maps
    from gradflow.theory.state import State
    sol = small_flow.solution
    for k in range(3):
        p = small_flow.query[k]
        assert p == 3 * 6 + 3                                         # the centre patch
        for m, t in enumerate(small_flow.moment_times[k]):
            state = sol.at(t)
            ref = attention_maps(State.from_positions(sol.model, state.A, state.B), clusters=[k])[0, p]
            np.testing.assert_allclose(small_flow.query_attention[k, m], ref, rtol=1e-7, atol=1e-12)
            assert small_flow.query_attention[k, m].sum() == pytest.approx(1.0)
        T1, T2 = small_flow.moment_times[k, 1:3]
        assert T1 == small_flow.ph.T1[k, p] and T2 == small_flow.ph.T2[k, p]
    # at t = 0 every key gets the same weight; at the end the query's own area holds its target
    assert np.allclose(small_flow.query_attention[:, 0], 1.0 / 36)


def test_saved_flow_redraws_without_solving(small_flow, tmp_path):
    from gradflow.figures.images import draw_images, draw_learned_last
    small_flow.save(tmp_path / "flow.nc")
    loaded = ImageFlow.load(tmp_path / "flow.nc")
    assert loaded.names == small_flow.names and loaded.settings == small_flow.settings
    for k in range(3):
        assert np.array_equal(loaded.labels(k), small_flow.labels(k))
        assert np.array_equal(loaded.images[k], small_flow.images[k])
    for name in ("T1", "T2", "T3"):
        np.testing.assert_array_equal(getattr(loaded.ph, name), getattr(small_flow.ph, name))
    np.testing.assert_array_equal(loaded.query_attention, small_flow.query_attention)
    assert loaded.area_table().table() == small_flow.area_table().table()

    res = draw_images(loaded, tmp_path, None, "rows")
    assert [p.name for p in res.paths] == ["rows.png", "rows.pdf"] and all(p.stat().st_size > 0 for p in res.paths)
    for k, name in enumerate(loaded.names):
        drawn = res.data[name]
        labels = loaded.labels(k)
        # the map columns run in time order, whatever the order of T1 and T2; unreached ones last
        column_times = [drawn["times"][list(MOMENTS).index(c)] for c in drawn["columns"]]
        finite = [x for x in column_times[:-1] if np.isfinite(x)]
        assert drawn["columns"][0] == "t = 0" and drawn["columns"][-1] == "end" and finite == sorted(finite)
        assert all(np.isfinite(x) for x in column_times[:len(finite)])
        np.testing.assert_array_equal(drawn["attention"], small_flow.query_attention[k])
        # every boundary segment separates two patches of different areas, and all such pairs are drawn
        differing = int((labels[:, 1:] != labels[:, :-1]).sum() + (labels[1:] != labels[:-1]).sum())
        assert len(drawn["boundaries"]) == differing
        for (x0, y0), (x1, y1) in drawn["boundaries"]:
            if x0 == x1:           # vertical: between (r, x0 - 1) and (r, x0)
                assert labels[int(y0), int(x0) - 1] != labels[int(y0), int(x0)]
            else:
                assert labels[int(y0) - 1, int(x0)] != labels[int(y0), int(x0)]
        for j, curve in drawn["curves"].items():
            # drawn along the phase traces; at t = 0 and at the end they are the attention kernel's
            pos = labels.ravel() == j
            assert curve.size == loaded.ph.t.size
            for i_trace, i_out in ((0, 0), (-1, -1)):
                np.testing.assert_allclose(curve[i_trace], np.nanmean(loaded.solution.target_fraction[i_out, k, pos]),
                                           rtol=1e-10)
    t2 = draw_learned_last(loaded, tmp_path)
    np.testing.assert_array_equal(t2.data["T2"], small_flow.area_table()["T2"])
    # another query for a redraw: recomputed maps, from the saved flow
    other = loaded.with_query((0, 0))
    assert np.all(other.query == 0) and not np.allclose(other.query_attention[:, -1], loaded.query_attention[:, -1])


def test_mean_field_path_at_the_vit_grid(shipped, tmp_path):
    """The ViT grid (14 x 14 patches, 8 areas) with a mean-field flow and exact observables: the
    drawn maps are the exact expected attention of the flow's state at the drawn times, and each
    area's curve ends at its final own-area attention / ceiling."""
    from gradflow.figures.images import draw_images
    from gradflow.theory.population import attention_maps
    flow = image_flow({n: shipped[n] for n in ("rocket", "camera")}, t_max=3000.0, method="meanfield")
    assert flow.solution.method == "meanfield" and flow.model.grid == (14, 14)
    res = draw_images(flow, tmp_path / "new" / "folder")      # the folder is made
    for k, name in enumerate(flow.names):
        drawn = res.data[name]
        i_end = -1
        exact_end = attention_maps(flow.solution.state(i_end), "exact", clusters=[k])[0][flow.query[k]]
        np.testing.assert_allclose(drawn["attention"][-1], exact_end, rtol=1e-10, atol=1e-15)
        assert drawn["attention"][-1].sum() == pytest.approx(1.0, rel=1e-12)
        labels = flow.labels(k)
        final = flow.solution.target_fraction[-1, k]
        for j, curve in drawn["curves"].items():
            np.testing.assert_allclose(curve[-1], np.nanmean(final[labels.ravel() == j]), rtol=1e-10)


def test_shared_area_attention_counts_co_membership():
    """Two clusters: in cluster 0 the query's area is {0, 1, 2, 3}; key 1 shares it in both
    clusters, keys 2 and 3 in cluster 0 only: ranks (3, 1.5, 1.5) against weights ranked (3, 2, 1)
    give rho = 1.5 / sqrt(1.5 * 2) = sqrt(3) / 2."""
    from gradflow import Cluster, DataModel
    from gradflow.analysis.areas import shared_area_attention
    model = DataModel(n_patches=6, clusters=[Cluster([0, 0, 0, 0, 1, 1]), Cluster([0, 0, 1, 1, 1, 1])])
    attention = np.array([[0.1, 0.5, 0.3, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    rho = shared_area_attention(model, np.array([0, 5]), attention)
    assert rho[0] == pytest.approx(np.sqrt(3) / 2)
    assert np.isnan(rho[1])                             # cluster 1: equal weights have no ranking


def test_area_boundaries_of_a_known_map():
    segs = area_boundaries([[0, 0, 1], [2, 2, 1]])
    assert sorted(map(lambda s: tuple(map(tuple, s)), segs.tolist())) == sorted([
        ((2.0, 0.0), (2.0, 1.0)), ((2.0, 1.0), (2.0, 2.0)), ((0.0, 1.0), (1.0, 1.0)), ((1.0, 1.0), (2.0, 1.0))])


def test_target_attention_is_the_attention_kernels(small_flow):
    from gradflow.flow.observables import target_attention_along
    direct = target_attention_along(small_flow.solution.states)
    np.testing.assert_allclose(small_flow.solution.target_attention_classes, direct, rtol=1e-12, atol=1e-15)


# ---- the command line --------------------------------------------------------------------------------
def test_images_command_and_redraw(tmp_path, capsys):
    from skimage.io import imsave

    from gradflow.cli import main
    rows, cols = np.mgrid[:40, :40]
    picture = np.where((rows - 18) ** 2 + (cols - 22) ** 2 < 150, 220, 30).astype(np.uint8)
    imsave(tmp_path / "disc.png", picture)
    out = tmp_path / "out"
    args = ["--grid", "5", "--areas", "2", "--t-max", "300", "--method", "exact", "--query", "1,3",
            "--out", str(out)]
    assert main(["images", str(tmp_path / "disc.png"), *args]) == 0
    first = capsys.readouterr().out
    assert "disc.png" in first and (out / "images.nc").is_file() and (out / "images_00.png").is_file()
    assert (out / "images_t2.png").is_file() and (out / "images_overview.png").is_file()
    flow = ImageFlow.load(out / "images.nc")
    assert np.array_equal(flow.labels(0), segment(picture, (5, 5), 2)) and flow.query.tolist() == [8]
    assert main(["images", "--redraw", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    def table(text):
        return text.split("areas and their phases")[1].split("  wrote")[0]
    assert table(again) == table(first)
    assert "patch (row 1, col 3)" in again and "wrote 6 files" in again       # no images.nc written
    assert main(["images", "--sample", "nosuch", "--out", str(out)]) == 2
    assert main(["images", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    (tmp_path / "not.png").write_text("no image")
    assert main(["images", str(tmp_path / "not.png"), "--out", str(out)]) == 2
    assert main(["images", "--sample", "camera", "--grid", "4x", "--out", str(out)]) == 2
    assert main(["images", "--sample", "camera", "--query", "9,9", "--grid", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 5 and "nosuch" in err and "missing.png" in err and "--grid" in err
    assert "query must be" in err


@pytest.mark.slow
def test_sixteen_photographs_at_full_size():
    """16 photographs, 14 x 14 patches, 8 areas, mean field: every label map valid, 128 areas."""
    images = sample_images()
    flow = image_flow(images, t_max=2000.0, method="meanfield")
    assert flow.solution.status == 0 and flow.model.n_clusters == 16
    for k in range(16):
        assert_valid_labels(flow.labels(k), (14, 14), 8, min_area=2)
    table = flow.area_table()
    assert len(table) == 128 and np.isfinite(table["T1"]).mean() > 0.75     # 0.85 at t = 2000
    for k, img in enumerate(images.values()):
        rows = table["image"] == k
        np.testing.assert_allclose(table["amplitude"][rows], area_amplitudes(img, flow.labels(k)), rtol=1e-12)
