"""The MAE rung on pixel patches (gradflow.training.mae, PatchMAE): the data pipeline against
brute force (patches, crop, contents against the images module's amplitudes), the network's
loss and the measured own-segment attention against a NumPy computation, a short run's records,
and the rung in the ladder with its own data model and flow."""
import json

import numpy as np
import pytest

from gradflow import phases
from gradflow.images import area_amplitudes, data_model
from gradflow.training import TrainRun
from gradflow.training.mae import (
    MAEData,
    assemble_patches,
    image_patches,
    mae_data,
    prepare_image,
    train_mae,
)


def _two_images():
    """Two small synthetic RGB images with structure a segmentation follows."""
    rng = np.random.default_rng(3)
    a = np.zeros((24, 24, 3))
    a[:, 12:] = [0.9, 0.2, 0.1]
    a[16:, :] = [0.1, 0.3, 0.8]
    b = np.tile(np.linspace(0, 1, 24)[None, :, None], (24, 1, 3))
    b[:8] = 0.5
    return {"a": a + 0.02 * rng.standard_normal(a.shape), "b": b + 0.02 * rng.standard_normal(b.shape)}


@pytest.fixture(scope="module")
def tiny():
    return mae_data(_two_images(), grid=(3, 4), n_areas=3, mask_ratio=0.5, patch=2, channels="rgb")


def test_patches_are_the_pixel_blocks_and_reassemble_the_image():
    rng = np.random.default_rng(0)
    img = rng.random((3 * 5, 4 * 5, 3))
    patches = image_patches(img, (3, 4), 5)
    assert patches.shape == (12, 75)
    for r in range(3):                         # position p = r gw + c is the block at (r, c)
        for c in range(4):
            block = img[5 * r:5 * r + 5, 5 * c:5 * c + 5]
            np.testing.assert_array_equal(patches[r * 4 + c], block.reshape(-1))
    np.testing.assert_array_equal(assemble_patches(patches, (3, 4), 5), img)
    with pytest.raises(ValueError, match="must be 15 x 20 pixels"):
        image_patches(img[:-1], (3, 4), 5)


def test_prepared_image_is_the_centre_crop_resized_and_rescaled():
    """A wide image whose outer columns hold an extreme value: the centre crop to the grid's
    square aspect drops them, so the ramp in the middle spans [0, 1] after rescaling."""
    img = np.zeros((40, 80))
    img[:, 20:60] = np.linspace(0.0, 1.0, 40)[None, :]        # the centre square: a ramp
    img[:, :20] = 50.0
    img[:, 60:] = -50.0
    out = prepare_image(img, (2, 2), 10, "grey")
    assert out.shape == (20, 20, 1) and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[0, :, 0], np.linspace(0, 1, 20), atol=0.04)   # the ramp, not the stripes
    assert np.ptp(out[:, 7, 0]) < 1e-12                                         # rows alike
    tall = prepare_image(img.T, (1, 2), 10, "rgb")            # a tall image for a wide grid: crop rows
    assert tall.shape == (10, 20, 3) and np.array_equal(tall[..., 0], tall[..., 2])


def test_contents_have_the_model_amplitudes(tiny):
    """The RMS of ||x_p|| over an area's patches is the area's amplitude in the data model,
    as images.area_amplitudes computes it from the prepared image; the model is the one
    images.data_model makes of the prepared images."""
    assert isinstance(tiny, MAEData) and tiny.contents.shape == (2, 12, 12)
    for k in range(2):
        lab = tiny.labels[k].ravel()
        norms = np.sqrt((tiny.contents[k] ** 2).sum(axis=1))
        rms = np.sqrt(np.bincount(lab, norms ** 2) / np.bincount(lab))
        np.testing.assert_allclose(rms, area_amplitudes(tiny.images[k], tiny.labels[k]), rtol=1e-10)
        # contents are the centred pixels, scaled: the mean colour is removed channel by channel
        pix = tiny.contents[k].reshape(12, -1, 3)
        np.testing.assert_allclose(pix.mean(axis=(0, 1)), 0.0, atol=1e-12)
    assert tiny.model == data_model(list(tiny.images), (3, 4), 3, 0.5)
    np.testing.assert_array_equal(tiny.labels[0].ravel(), tiny.model.clusters[0].areas)


def test_mae_data_bad_input():
    with pytest.raises(ValueError, match="grid"):
        mae_data(_two_images(), grid=(3, 0))
    with pytest.raises(ValueError, match="channels"):
        mae_data(_two_images(), grid=3, n_areas=2, patch=2, channels="cmyk")
    with pytest.raises(ValueError, match="not a mix"):
        mae_data(["camera", np.zeros((8, 8))], grid=2, n_areas=2, patch=2)
    with pytest.raises(ValueError, match="unknown sample image"):
        mae_data("camerra", grid=2, n_areas=2, patch=2)


torch = pytest.importorskip("torch")
from gradflow.training.pytorch import PatchMAE, PixelBatch, _measure  # noqa: E402
from gradflow.training.sampling import BatchSampler  # noqa: E402
from test_ladder import local_client  # noqa: E402, F401  (Dask in this process, one worker thread)


def _brute_force(net, data, fq, vis):
    """Loss and per-(cluster, query, area) attention of masked queries, in NumPy from the
    network's parameters (docs/model.md section 6 for the MAE)."""
    P = {n: p.detach().numpy().astype(np.float64) for n, p in net.named_parameters()}
    Q = P["Q"] if "Q" in P else P["W_Q"].T @ P["W_K"]
    model = data.model
    K, N = model.n_clusters, max(cl.n_areas for cl in model.clusters)
    by_area, count, loss = np.zeros((K, model.n_patches, N)), np.zeros((K, model.n_patches)), 0.0
    image_of = np.array([k for k, _ in model.features])
    for i in range(fq.shape[0]):
        k = image_of[fq[i, 0]]
        x = data.contents[k]
        areas = model.clusters[k].areas
        values = np.where(vis[i][:, None], x @ P["W_e"].T + P["b_e"], P.get("mask", 0.0))
        keys = P["pos"] + values
        for p in np.flatnonzero(~vis[i]):
            s = (P["pos"][p] + P.get("mask", 0.0)) @ Q @ keys.T
            w = np.exp(s - s.max())
            w /= w.sum()
            y = P["W_d"] @ (w @ values) + P["b_d"]
            loss += 0.5 * np.sum((y - x[p]) ** 2)
            for j in range(model.clusters[k].n_areas):
                by_area[k, p, j] += w[vis[i] & (areas == j)].sum()
            count[k, p] += 1
    return loss / fq.shape[0], by_area / np.maximum(count, 1)[..., None]


@pytest.mark.parametrize("attention, mask_token", [("merged", False), ("factorized", True)])
def test_loss_and_own_segment_mass_equal_a_brute_force_computation(tiny, attention, mask_token):
    m = tiny.model
    rng = np.random.default_rng(1)
    net = PatchMAE(m.n_patches, tiny.n_pixels, 6, attention=attention, mask_token=mask_token, init_scale=0.7,
                   rng=rng, dtype=torch.float64, device="cpu")
    with torch.no_grad():                           # a mask token and biases away from their zero start
        for p in net.slow_parameters():
            p.add_(0.3 * torch.as_tensor(rng.standard_normal(p.shape)))
    fq, z, vis = BatchSampler(m).sample(rng, 40)
    contents = torch.as_tensor(tiny.contents, dtype=torch.float64)
    image_of = torch.as_tensor(np.array([k for k, _ in m.features]))

    def make(fq_, z_, vis_):
        return PixelBatch(fq_, vis_, contents, image_of, "cpu", torch.float64)

    loss_ref, by_area_ref = _brute_force(net, tiny, fq, vis)
    loss, _ = net(make(fq, z, vis))                 # the training path (gradients recorded)
    assert float(loss.detach()) == pytest.approx(loss_ref, rel=1e-12)
    by_area, masked, eval_loss = _measure(net, m, (fq, z, vis), make, "cpu")
    assert eval_loss == pytest.approx(loss_ref, rel=1e-12)
    seen = np.isfinite(by_area)
    np.testing.assert_allclose(by_area[seen], by_area_ref[seen], atol=1e-13)
    np.testing.assert_allclose((np.nan_to_num(by_area).sum(axis=-1) + masked)[np.isfinite(masked)], 1.0,
                               atol=1e-12)
    assert np.ptp(by_area[seen]) > 0.1              # the attention is far from uniform: a real check


def test_a_short_run_records_finite_measured_attention(tmp_path, tiny):
    run = train_mae(data=tiny, steps=30, lr=0.5, batch_size=16, record_every=10, eval_size=64, seed=2)
    assert run.status == 0 and run.model == tiny.model and run.t.tolist() == [0.0, 5.0, 10.0, 15.0]
    assert run.attention_by_area.shape == (4, 2, 12, 3) and run.E.shape == (64, 12) and run.V.shape == (64, 6)
    total = np.nan_to_num(run.attention_by_area).sum(axis=-1) + run.masked_mass
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    assert np.all(np.isfinite(run.eval_loss)) and run.eval_loss[-1] < run.eval_loss[0]
    own = np.take_along_axis(run.attention_by_area, np.stack([c.areas for c in tiny.model.clusters])[None, ..., None],
                             axis=3)[..., 0]
    np.testing.assert_array_equal(run.target_attention, own)
    assert phases(run).target.shape == (4, 2, 12)
    run.save(tmp_path / "mae.nc")
    back = TrainRun.load(tmp_path / "mae.nc")
    np.testing.assert_array_equal(back.attention_by_area, run.attention_by_area)
    assert back.architecture["trainer"] == "torch-mae" and back.architecture["images"] == ["a", "b"]
    # SGD's default lr for the linear maps on contents is lr / (gamma P)
    assert run.architecture["embedding_lr"] == pytest.approx(0.5 / (0.5 * 12))
    with pytest.raises(ValueError, match="mask_token"):
        train_mae(data=tiny, steps=1, lr=0.1, mask_token="yes")
    with pytest.raises(ValueError, match="dim"):
        train_mae(data=tiny, steps=1, lr=0.1, dim=0)


def test_the_mae_rung_in_the_ladder(tmp_path, local_client):  # noqa: F811  (the fixture imported above)
    """mae-pixels on two shipped photographs at 3 x 3 patches: its report row has the ladder's
    fields, it is compared with the flow of its own data model (which the report lists as a
    flow of its own), and a rerun skips its runs and reads that flow back."""
    from gradflow.presets import global_local

    from gradflow.analysis import ladder as lad
    model = global_local(16, n_local=2, local_size=4, mask_ratio=0.5)
    kw = dict(seeds=2, steps=40, lr=0.5, batch_size=16, n_records=8, eval_size=64, out=tmp_path,
              client=local_client, progress=False, images="camera,coffee", grid=3, n_areas=2, patch=4)
    res = lad.ladder(model, "mae-pixels", **kw)
    rows = json.loads((tmp_path / "report.json").read_text())
    assert [r["rung"] for r in rows] == ["mae-pixels"]
    row = rows[0]
    assert {"rung", "phases_ordered", "area_wide", "max_deviation", "time_scale", "min_target_fraction"} <= set(row)
    assert row["finished"] == 2 and row["flow"] == "mae-pixels" and np.isfinite(row["max_deviation"])
    flow = res.flow_of("mae-pixels")
    assert flow.model == mae_data("camera,coffee", 3, 2, 0.5, patch=4).model and flow.method == "exact"
    assert list(res.flows) == ["mae-pixels"] and flow.converged
    assert "*flow: data of mae-pixels* (exact, converged at t = " in res.table()
    assert len(list((tmp_path / "flows").glob("*.npz"))) == 1
    again = lad.ladder(model, "mae-pixels", **kw)
    assert again.computed == 0 and again.skipped == 2 and "2 skipped" in again.runs_line()
    assert again.rows[0]["max_deviation"] == res.rows[0]["max_deviation"]
    with pytest.raises(ValueError, match="no chosen rung reads"):
        lad.ladder(model, "model", **kw)
