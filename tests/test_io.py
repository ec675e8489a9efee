"""Saved results: NetCDF round trips, atomic writes, clear errors on bad files."""
import numpy as np
import pytest

import gradflow
from gradflow import Amplitude, Cluster, DataModel, Solution, TrainRun
from gradflow._atomic import atomic_path
from gradflow.presets import global_local


@pytest.fixture(scope="module")
def model():
    return DataModel(grid=(3, 3), mask_ratio=0.4, clusters=[
        Cluster([[0, 0, 1], [0, 1, 1], [2, 2, 2]], prob=0.7, amplitudes=Amplitude.uniform(0.5, 1.5, 3)),
        Cluster([[0, 0, 0], [1, 1, 0], [1, 1, 0]], prob=0.3, amplitudes={1: Amplitude([0.5, 2.0])})])


def test_solution_round_trip(tmp_path, model):
    sol = gradflow.solve(model, 50.0)
    path = tmp_path / "sol.nc"
    sol.save(path)
    back = Solution.load(path)
    for name in ("t", "A", "B", "A_classes", "B_classes", "B_self", "loss", "area_attention"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sol, name))
    assert back.model.to_dict() == model.to_dict() and back.method == sol.method
    assert (back.status, back.message, back.nfev) == (sol.status, sol.message, sol.nfev)
    # a loaded file interpolates between stored times (Hermite with the flow's velocities)
    np.testing.assert_allclose(back.at(sol.t[70]).A, sol.A[70], atol=1e-12)
    np.testing.assert_allclose(back.at(3.3).A, sol.at(3.3).A, atol=1e-4)
    ds = sol.to_xarray()
    assert set(ds["A"].dims) == {"time", "query", "feature"} and set(ds["B"].dims) == {"time", "query", "key"}
    assert ds["area_attention"].dims == ("time", "cluster", "query")


def test_per_position_solution_round_trip(tmp_path, model):
    rng = np.random.default_rng(0)
    init = (0.1 * rng.normal(size=(9, model.n_features)), 0.1 * rng.normal(size=(9, 9)))
    sol = gradflow.solve(model, 5.0, init=init, t_eval=[0.0, 1.0, 5.0])
    sol.save(tmp_path / "p.nc")
    back = Solution.load(tmp_path / "p.nc")
    assert back.reduction.n_classes == 9
    np.testing.assert_array_equal(back.B, sol.B)


def test_trainrun_round_trip(tmp_path, model):
    run = gradflow.train_transformer(model, steps=30, lr=0.1, batch_size=8, record_every=10, seed=4)
    run.save(tmp_path / "run.nc")
    back = TrainRun.load(tmp_path / "run.nc")
    for name in ("t", "step", "A", "B", "area_attention", "Q", "E", "V"):
        np.testing.assert_array_equal(getattr(back, name), getattr(run, name))
    np.testing.assert_array_equal(back.loss, run.loss)           # NaN at step 0 survives
    assert (back.seed, back.steps, back.lr, back.batch_size, back.d) == (4, 30, 0.1, 8, run.d)
    assert back.model.to_dict() == model.to_dict()


def test_bad_files_are_refused(tmp_path, model):
    sol = gradflow.solve(model, 5.0, t_eval=[0.0, 5.0])
    good = tmp_path / "good.nc"
    sol.save(good)
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.nc"):
        Solution.load(truncated)
    with pytest.raises(ValueError, match="does not exist"):
        Solution.load(tmp_path / "missing.nc")
    with pytest.raises(ValueError, match="not a gradflow trainrun"):
        TrainRun.load(good)
    ds = sol.to_xarray()
    ds.attrs["gradflow_format"] = 99
    ds.to_netcdf(tmp_path / "future.nc")
    with pytest.raises(ValueError, match="gradflow_format"):
        Solution.load(tmp_path / "future.nc")


def test_interrupted_write_leaves_old_file(tmp_path):
    target = tmp_path / "x.nc"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.nc"]      # no temporary left behind


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    sol = gradflow.solve(global_local(16, n_local=2, local_size=4), 5.0, t_eval=[0.0, 5.0])
    import xarray as xr

    def broken(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(KeyboardInterrupt):
        sol.save(tmp_path / "s.nc")
    assert list(tmp_path.iterdir()) == []
