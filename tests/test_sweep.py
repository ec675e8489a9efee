"""Sweeps as Dask tasks on a LocalCluster of 2 workers."""
import numpy as np
import pytest
import xarray as xr

from gradflow.cli import main
from gradflow.observables import phases
from gradflow.presets import global_local
from gradflow.solver import solve
from gradflow.sweep import sweep


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_sweep_gathers_skips_and_records_failures(tmp_path, client):
    grid = {"P": [16, 36], "mask_ratio": [0.3, 0.6], "n_local": [2, 9]}      # n_local=9 cannot fit
    ds = sweep("global_local", grid, t_max=500.0, out=tmp_path, client=client)
    assert ds["final_loss"].dims == ("P", "mask_ratio", "n_local")
    assert ds.attrs["computed"] == 8 and ds.attrs["points"] == 8
    failed = ds["error"].values != ""
    assert failed[:, :, 1].all() and not failed[:, :, 0].any()
    assert "n_local" in str(ds["error"].sel(P=16, mask_ratio=0.3, n_local=9).values)
    # a point equals a direct solve
    ph = phases(solve(global_local(36, n_local=2, mask_ratio=0.6), 500.0))
    assert ds["T2"].sel(P=36, mask_ratio=0.6, n_local=2) == pytest.approx(np.median(ph.T2[ph.is_local]), rel=1e-12)
    on_disk = xr.load_dataset(tmp_path / "sweep.nc")
    np.testing.assert_array_equal(on_disk["final_loss"].values, ds["final_loss"].values)
    # a rerun reads the finished points and retries only the failed ones
    again = sweep("global_local", grid, t_max=500.0, out=tmp_path, client=client)
    assert again.attrs["computed"] == 4
    np.testing.assert_array_equal(again["T3"].values, ds["T3"].values)


def test_sweep_with_monte_carlo(client):
    ds = sweep("global_local", {"mask_ratio": [0.4, 0.6]}, t_max=100.0, fixed={"P": 16, "n_local": 2},
               mc=dict(steps=200, lr=0.5, batch_size=64, seeds=2, record_every=20), client=client)
    assert np.all(ds["mc_max_error"].values < 0.05)


def test_sweep_command_line(tmp_path, capsys):
    spec = tmp_path / "grid.toml"
    spec.write_text('preset = "global_local"\nt_max = 200.0\n[fixed]\nn_local = 2\n[grid]\nP = [16, 36]\n')
    assert main(["sweep", "--grid", str(spec), "--out", str(tmp_path / "out")]) == 0
    assert "2 points (2 computed now, 0 failed)" in capsys.readouterr().out
    assert main(["sweep", "--grid", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2
    assert main(["sweep", "--grid", str(spec), "--out", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1"]) == 2


def test_sweep_bad_input():
    with pytest.raises(ValueError, match="preset"):
        sweep("nope", {"P": [16]}, t_max=1.0)
    with pytest.raises(ValueError, match="grid"):
        sweep("global_local", {}, t_max=1.0)
