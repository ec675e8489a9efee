"""Sweeps as Dask tasks: an in-process client by default, a LocalCluster of 2 worker processes
in the slow tests."""
import numpy as np
import pytest
import xarray as xr
from gradflow.presets import global_local

from gradflow import ConfigError, InvalidInputError
from gradflow.analysis.sweeps import sweep
from gradflow.cli import main
from gradflow.flow.phase_times import phases
from gradflow.flow.solver import solve


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.slow
def test_sweep_gathers_skips_and_records_failures(tmp_path, client):
    grid = {"P": [16, 36], "mask_ratio": [0.3, 0.6], "n_local": [2, 9]}      # n_local=9 cannot fit
    ds = sweep("global_local", grid, t_max=500.0, out=tmp_path, client=client)
    assert ds["final_loss"].dims == ("P", "mask_ratio", "n_local")
    # the four points that cannot be built are recorded as failed without running
    assert ds.attrs["computed"] == 4 and ds.attrs["points"] == 8 and ds.attrs["failed"] == 4
    failed = ds["error"].values != ""
    assert failed[:, :, 1].all() and not failed[:, :, 0].any()
    assert "n_local" in str(ds["error"].sel(P=16, mask_ratio=0.3, n_local=9).values)
    # a point equals a direct solve
    ph = phases(solve(global_local(36, n_local=2, mask_ratio=0.6), 500.0))
    assert ds["T2"].sel(P=36, mask_ratio=0.6, n_local=2) == pytest.approx(np.median(ph.T2[ph.is_local]), rel=1e-12)
    on_disk = xr.load_dataset(tmp_path / "sweep.nc")
    np.testing.assert_array_equal(on_disk["final_loss"].values, ds["final_loss"].values)
    # a rerun reads the finished points from disk
    again = sweep("global_local", grid, t_max=500.0, out=tmp_path, client=client)
    assert again.attrs["computed"] == 0 and again.attrs["failed"] == 4
    np.testing.assert_array_equal(again["T3"].values, ds["T3"].values)


@pytest.mark.slow
def test_sweep_with_monte_carlo(client):
    ds = sweep("global_local", {"mask_ratio": [0.4, 0.6]}, t_max=100.0, fixed={"P": 16, "n_local": 2},
               mc=dict(steps=200, lr=0.5, batch_size=64, seeds=2, record_every=20), client=client)
    assert np.all(ds["mc_max_error"].values < 0.05)


@pytest.mark.slow
def test_sweep_command_line(tmp_path, capsys):
    spec = tmp_path / "grid.toml"
    spec.write_text('preset = "global_local"\nt_max = 200.0\n[fixed]\nn_local = 2\n[grid]\nP = [16, 36]\n')
    assert main(["sweep", "--grid", str(spec), "--out", str(tmp_path / "out")]) == 0
    assert "2 points (2 computed now, 0 failed)" in capsys.readouterr().out
    # a point that fails (n_local = 9 areas of 4 do not fit in P = 16) makes the exit status 1
    some_fail = tmp_path / "some_fail.toml"
    some_fail.write_text('preset = "global_local"\nt_max = 200.0\n[fixed]\nP = 16\n[grid]\nn_local = [2, 9]\n')
    assert main(["sweep", "--grid", str(some_fail), "--out", str(tmp_path / "out2")]) == 1
    assert "2 points (1 computed now, 1 failed)" in capsys.readouterr().out
    assert main(["sweep", "--grid", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2
    assert main(["sweep", "--grid", str(spec), "--out", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1"]) == 2


def test_sweep_bad_input():
    with pytest.raises(ValueError, match="preset"):
        sweep("nope", {"P": [16]}, t_max=1.0)
    with pytest.raises(ValueError, match="grid"):
        sweep("global_local", {}, t_max=1.0)
    # a grid that cannot run at all is refused before any work, naming the bad option
    with pytest.raises(InvalidInputError, match=r"no point.*'n_locl'.*did you mean 'n_local'"):
        sweep("global_local", {"n_locl": [1, 2]}, t_max=1.0)
    with pytest.raises(InvalidInputError, match="fixed"):
        sweep("global_local", {"P": [16]}, t_max=1.0, fixed=3)
    with pytest.raises(InvalidInputError, match="t_max"):
        sweep("global_local", {"P": [16]}, t_max="1e3")


def test_grid_files_follow_their_schema(tmp_path):
    import tomllib

    from gradflow.analysis.sweeps import EXAMPLE, read_sweep_file
    good = tmp_path / "grid.toml"
    good.write_text(EXAMPLE)
    spec = read_sweep_file(good)
    assert spec["grid"] == tomllib.loads(EXAMPLE)["grid"] and spec["preset"] == "global_local"
    for body, needle in [("preset = 'global_local'\nt_max = 10\n[grid]\nP = [16]\n[mcc]\nsteps = 1", "'mcc'"),
                         ("preset = 'global_local'\nt_max = 10\ngrid = 5", "grid"),
                         ("preset = 'global_local'\nt_max = 10\nfixed = 3\n[grid]\nP = [16]", "fixed"),
                         ("preset = 'nope'\nt_max = 10\n[grid]\nP = [16]", "preset"),
                         ("preset = 'global_local'\nt_max = '10'\n[grid]\nP = [16]", "t_max"),
                         ("preset = 'global_local'\nt_max = 10\n[grid]\nP = [16]\n[mc]\nstep = 3", "'steps'")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        with pytest.raises(ConfigError, match=needle):
            read_sweep_file(bad)


@pytest.fixture(scope="module")
def local_client():
    """Dask in this process: one worker thread, no subprocesses."""
    from dask.distributed import Client
    c = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    yield c
    c.close()


def test_sweep_points_equal_direct_solves_and_cache_by_model(tmp_path, local_client):
    grid = {"P": [16, 36], "n_local": [2, 9]}                  # n_local=9 cannot fit
    ds = sweep("global_local", grid, t_max=300.0, out=tmp_path, client=local_client)
    assert (ds.attrs["points"], ds.attrs["computed"], ds.attrs["failed"]) == (4, 2, 2)
    assert "n_local" in str(ds["error"].sel(P=16, n_local=9).values)
    ph = phases(solve(global_local(36, n_local=2), 300.0))
    assert float(ds["T2"].sel(P=36, n_local=2)) == pytest.approx(np.median(ph.T2[ph.is_local]), rel=1e-12)
    again = sweep("global_local", grid, t_max=300.0, out=tmp_path, client=local_client)
    assert again.attrs["computed"] == 0
    np.testing.assert_array_equal(again["final_loss"].values, ds["final_loss"].values)
    # a damaged point file (a value missing, or not NetCDF at all) is computed again, not an
    # internal error: the same numbers come back and the file is whole again
    import xarray as xr
    files = sorted(tmp_path.glob("point-*.nc"))
    xr.load_dataset(files[0]).drop_vars("T1").to_netcdf(files[0])
    files[1].write_bytes(b"not a NetCDF file")
    mended = sweep("global_local", grid, t_max=300.0, out=tmp_path, client=local_client)
    assert mended.attrs["computed"] == 2 and mended.attrs["failed"] == 2
    np.testing.assert_array_equal(mended["final_loss"].values, ds["final_loss"].values)
    assert sweep("global_local", grid, t_max=300.0, out=tmp_path, client=local_client).attrs["computed"] == 0


def test_sweep_recomputes_when_the_factory_builds_another_model(tmp_path, local_client):
    """The cache is keyed by the built model, not by the factory's name and parameters."""
    def factory(P):
        return global_local(P, n_local=2, mask_ratio=0.5)
    first = sweep(factory, {"P": [16]}, t_max=200.0, out=tmp_path, client=local_client)

    def factory(P):                                            # noqa: F811 (same name, new model)
        return global_local(P, n_local=2, mask_ratio=0.3)
    second = sweep(factory, {"P": [16]}, t_max=200.0, out=tmp_path, client=local_client)
    assert second.attrs["computed"] == 1
    direct = solve(global_local(16, n_local=2, mask_ratio=0.3), 200.0)
    assert float(second["final_loss"][0]) == pytest.approx(direct.loss[-1], rel=1e-12)
    assert float(second["final_loss"][0]) != float(first["final_loss"][0])


def test_a_sweep_without_t_max_runs_each_flow_until_converged(tmp_path, local_client):
    from gradflow.presets import balanced
    ds = sweep("balanced", {"P": [16]}, out=tmp_path, client=local_client)
    direct = solve(balanced(P=16))
    assert direct.status == 0 and "converged" in direct.message
    assert float(ds["final_loss"][0]) == pytest.approx(direct.loss[-1], rel=1e-12)
    assert ds.attrs["t_max"] == "until converged" and ds.attrs["failed"] == 0
    spec = tmp_path / "grid.toml"
    spec.write_text('preset = "balanced"\n[grid]\nP = [16]\n')          # t_max left out
    assert main(["sweep", "--grid", str(spec), "--out", str(tmp_path)]) == 0    # the point is on disk already


def test_a_point_file_we_may_not_read_is_not_taken_for_damaged(tmp_path, monkeypatch):
    """A damaged point file is computed again; one we may not read raises (recomputing could not
    replace it either), rather than being silently recomputed."""
    from gradflow.analysis import sweeps
    bad = tmp_path / "point.nc"
    bad.write_text("not netcdf")
    assert sweeps._load_point(bad) is None

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(sweeps, "load_dataset", denied)
    with pytest.raises(PermissionError):
        sweeps._load_point(bad)
