"""Robustness around the numerical core: files that would load silently wrong, outputs checked
before any work, divergence, strict sweep and config input, memory and CPU limits of this
process (its own cgroup), the command line's one-line messages and first-run notice."""
import errno
import os
import re
import tomllib

import numpy as np
import pytest
from gradflow.presets import global_local

import gradflow
from gradflow import (
    ConfigError,
    FileFormatError,
    InvalidInputError,
    OutputPathError,
    Solution,
    TrainRun,
)
from gradflow.cli import main


@pytest.fixture(scope="module")
def small():
    """A three-class model and a short flow and run of it, saved once."""
    m = global_local(16, n_local=2, local_size=4)
    sol = gradflow.solve(m, 5.0, t_eval=[0.0, 2.0, 5.0])
    run = gradflow.train_transformer(m, steps=30, lr=0.1, batch_size=8, record_every=10)
    return m, sol, run


def _write(ds, path):
    ds.to_netcdf(path)
    return path


def _replace(ds, name, index, value):
    ds = ds.copy(deep=True)
    data = ds[name].values.copy()
    data[index] = value
    ds[name] = (ds[name].dims, data)
    return ds


# ---- 1. files that would load silently wrong -------------------------------------------------
def test_a_solution_file_without_its_times_or_with_non_finite_states_is_refused(tmp_path, small):
    _, sol, _ = small
    ds = sol.to_xarray()
    # without the time coordinate xarray would hand out 0, 1, 2 as times
    path = _write(ds.drop_vars("time"), tmp_path / "no_time.nc")
    with pytest.raises(FileFormatError, match=r"no_time.nc.*'time'"):
        Solution.load(path)
    with pytest.raises(FileFormatError, match="lacks the coordinate 'time'"):
        Solution.from_xarray(ds.drop_vars("time"))
    path = _write(_replace(ds, "A_classes", (1, 0, 0), np.nan), tmp_path / "nan_state.nc")
    with pytest.raises(FileFormatError, match=r"nan_state.nc.*'A_classes' holds non-finite values.*\(1, 0, 0\)"):
        Solution.load(path)
    path = _write(_replace(ds, "B_self", (2, 0), np.inf), tmp_path / "inf_state.nc")
    with pytest.raises(FileFormatError, match=r"inf_state.nc.*'B_self'"):
        Solution.load(path)
    path = _write(ds.assign_coords(time=[0.0, 5.0, 2.0]), tmp_path / "unsorted.nc")
    with pytest.raises(FileFormatError, match=r"unsorted.nc.*'time'.*strictly increasing.*5.0 then 2.0"):
        Solution.load(path)
    path = _write(ds.assign_coords(time=[0.0, np.nan, 5.0]), tmp_path / "nan_time.nc")
    with pytest.raises(FileFormatError, match=r"nan_time.nc.*'time'.*finite"):
        Solution.load(path)
    bad = ds.copy()
    bad.attrs["status"] = "fine"
    with pytest.raises(FileFormatError, match=r"status.nc.*attribute 'status' must be a whole number"):
        Solution.load(_write(bad, tmp_path / "status.nc"))
    back = Solution.load(_write(ds, tmp_path / "good.nc"))       # the good file still loads
    np.testing.assert_array_equal(back.t, [0.0, 2.0, 5.0])


def test_a_trainrun_file_is_checked_alike(tmp_path, small):
    _, _, run = small
    ds = run.to_xarray()
    with pytest.raises(FileFormatError, match=r"run_no_time.nc.*'time'"):
        TrainRun.load(_write(ds.drop_vars("time"), tmp_path / "run_no_time.nc"))
    with pytest.raises(FileFormatError, match=r"run_nan.nc.*variable 'A' holds non-finite"):
        TrainRun.load(_write(_replace(ds, "A", (1, 0, 0), np.nan), tmp_path / "run_nan.nc"))
    with pytest.raises(FileFormatError, match=r"run_q.nc.*variable 'Q'"):
        TrainRun.load(_write(_replace(ds, "Q", (0, 0), np.inf), tmp_path / "run_q.nc"))
    steps = ds.copy(deep=True)
    steps["step"] = ("time", np.array([0, 20, 10, 30]))
    with pytest.raises(FileFormatError, match=r"'step' values must be strictly increasing, got 20 then 10"):
        TrainRun.load(_write(steps, tmp_path / "run_steps.nc"))
    lr = ds.copy()
    lr.attrs["lr"] = "fast"
    with pytest.raises(FileFormatError, match=r"attribute 'lr' must be a finite number, got 'fast'"):
        TrainRun.load(_write(lr, tmp_path / "run_lr.nc"))
    back = TrainRun.load(_write(ds, tmp_path / "run.nc"))
    assert back.step.tolist() == [0, 10, 20, 30] and back.t.tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0])


# ---- 2. outputs checked before any work ------------------------------------------------------
def _error_lines(err: str) -> list:
    """The command's own lines on stderr (a cold cache's first-run notice left out)."""
    return [line for line in err.strip().splitlines() if not line.startswith("gradflow: first run:")]


def _must_not_run(*args, **kwargs):
    raise AssertionError("the work started before the outputs were checked")


def test_figures_check_every_output_before_any_work(tmp_path, monkeypatch):
    import gradflow.figures.paper as paper
    monkeypatch.setattr(paper, "setup", _must_not_run)
    out = tmp_path / "fig"
    out.mkdir()
    os.mkfifo(out / "fig6_phase_diagram.png")
    with pytest.raises(OutputPathError, match="fig6_phase_diagram.png.*not a regular file"):
        paper.make_figures(out, quick=True)
    assert sorted(p.name for p in out.iterdir()) == ["fig6_phase_diagram.png"]
    # the checked names are the names the figure functions save under
    import inspect
    saved = re.findall(r'save_figure\(fig, out_dir, "(\w+)"', inspect.getsource(paper))
    assert sorted(saved) == sorted(paper.FIGURE_NAMES)


def test_images_check_every_output_before_the_solve(tmp_path, monkeypatch, capsys):
    import gradflow.analysis.image_flows as image_flows
    monkeypatch.setattr(image_flows, "image_flow", _must_not_run)
    out = tmp_path / "im"
    out.mkdir()
    os.mkfifo(out / "images_00.png")
    assert main(["images", "--sample", "camera", "--grid", "4", "--areas", "2", "--out", str(out)]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "images_00.png" in err[0] and "not a regular file" in err[0]
    from gradflow.cli import image_figure_paths
    names = [p.name for p in image_figure_paths(out, 2)]
    assert names == ["images_00.png", "images_00.pdf", "images_01.png", "images_01.pdf", "images_overview.png",
                     "images_overview.pdf", "images_t2.png", "images_t2.pdf"]


@pytest.mark.parametrize("argv", [
    ["sweep", "--grid", "GRID", "--out", "AFILE"],
    ["figures", "--quick", "--out", "AFILE"],
    ["images", "--sample", "camera", "--grid", "4", "--areas", "2", "--out", "AFILE"],
    ["ladder", "--P", "16", "--n-local", "2", "--rungs", "model", "--seeds", "1", "--steps", "2", "--out", "AFILE"],
])
def test_an_output_directory_that_is_a_file_is_bad_input(tmp_path, capsys, argv):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    grid = tmp_path / "grid.toml"
    grid.write_text('preset = "global_local"\nt_max = 10.0\n[fixed]\nn_local = 2\n[grid]\nP = [16]\n')
    argv = [str(afile) if a == "AFILE" else str(grid) if a == "GRID" else a for a in argv]
    assert main(argv) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "internal error" not in err[0] and "not a directory" in err[0]
    assert afile.read_text() == "keep"


def test_output_directories_that_cannot_be_made(tmp_path, monkeypatch):
    from pathlib import Path

    from gradflow.io import check_output_path, output_dir
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(OutputPathError, match="symlink loop"):
        output_dir(tmp_path / "loop1")
    with pytest.raises(OutputPathError, match="symlink loop"):
        output_dir(tmp_path / "loop1" / "sub")
    with pytest.raises(OutputPathError, match="symlink loop"):
        check_output_path(tmp_path / "loop1")
    with pytest.raises(OutputPathError, match="symlink loop"):
        check_output_path(tmp_path / "loop1" / "x.nc")
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputPathError, match="a part of the path is a file"):
        output_dir(tmp_path / "afile" / "sub")

    def denied(self, *args, **kwargs):          # what a read-only parent gives (also as root)
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(OutputPathError, match="'.*new' cannot be made: permission denied"):
        output_dir(tmp_path / "new")


def test_making_a_directory_where_the_system_refuses():
    from gradflow.io import output_dir
    with pytest.raises(OutputPathError, match="gradflow-test.*cannot be made"):
        output_dir("/sys/gradflow-test/out")          # /sys refuses new directories even to root


# ---- 3. divergence ---------------------------------------------------------------------------
def test_a_start_beyond_the_score_range_is_refused():
    m = global_local(16, n_local=2, local_size=4)
    with pytest.raises(InvalidInputError, match=r"init_scale=1e\+06 .*diverge at step 0"):
        gradflow.train_transformer(m, steps=30, lr=0.1, batch_size=8, init_scale=1e6)


def test_divergence_names_the_exact_step_not_the_record(monkeypatch):
    import gradflow.training.sgd as sgd
    m = global_local(16, n_local=2, local_size=4)
    monkeypatch.setattr(sgd, "LOG_WEIGHT_LIMIT", 5.5)    # |score| 5.5 is reached between steps 40 and 50
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        every = gradflow.train_transformer(m, steps=200, lr=10.0, batch_size=8, record_every=1)
    s = every.step[-1] + 1                                # the first step whose scores are out of range
    assert 40 < s < 50 and f"diverged at step {s}:" in every.message
    span = np.abs(every.B[-1]).max() + np.abs(every.A[-1]).max()
    assert span <= 5.5                                    # the last record is still in range
    with pytest.warns(RuntimeWarning, match=f"diverged at step {s}:"):
        sparse = gradflow.train_transformer(m, steps=200, lr=10.0, batch_size=8, record_every=10)
    assert sparse.status == -1 and sparse.step[-1] == 40 and "records stop at step 40" in sparse.message


# ---- 4. sweeps --------------------------------------------------------------------------------
@pytest.mark.parametrize("mc, needle", [
    (dict(steps="10", lr=0.1, batch_size=8), r"mc.steps must be a positive integer, got '10'"),
    (dict(steps=10, lr=-1, batch_size=8), r"mc.lr must be > 0, got -1"),
    (dict(steps=10, lr=0.1, batch_size=True), r"mc.batch_size must be a positive integer, got True"),
    (dict(steps=10, lr=0.1), r"mc needs batch_size"),
    (dict(steps=10, lr=0.1, batch_size=8, seed=2), r"unknown key 'seed' \(did you mean 'seeds'\?\)"),
    ([1, 2], r"mc must be a mapping"),
])
def test_sweep_checks_monte_carlo_options_before_any_point(mc, needle, monkeypatch):
    import gradflow.analysis.sweeps as sweeps
    monkeypatch.setattr(sweeps, "_run", _must_not_run)
    with pytest.raises(InvalidInputError, match=needle):
        sweeps.sweep("global_local", {"P": [16]}, t_max=1.0, fixed={"n_local": 2}, mc=mc)


def test_sweep_refuses_an_option_both_fixed_and_swept(tmp_path, monkeypatch):
    import gradflow.analysis.sweeps as sweeps
    monkeypatch.setattr(sweeps, "_run", _must_not_run)
    with pytest.raises(InvalidInputError, match="'P' given both in fixed and in grid"):
        sweeps.sweep("global_local", {"P": [16, 36]}, t_max=1.0, fixed={"P": 64})
    spec = tmp_path / "grid.toml"
    spec.write_text('preset = "global_local"\nt_max = 10.0\n[fixed]\nP = 64\n[grid]\nP = [16]\n'
                    '[mc]\nsteps = 10\nlr = 0.1\nbatch_size = 8\n')
    with pytest.raises(ConfigError, match=r"grid.toml.*'P' given both in fixed and in grid"):
        sweeps.read_sweep_file(spec)
    spec.write_text('preset = "global_local"\nt_max = 10.0\n[grid]\nP = [16]\n[mc]\nsteps = "10"\nlr = 0.1\n'
                    'batch_size = 8\n')
    with pytest.raises(ConfigError, match=r"grid.toml.*mc.steps must be a positive integer"):
        sweeps.read_sweep_file(spec)


# ---- 5. config files ----------------------------------------------------------------------------
@pytest.mark.parametrize("body, needle", [
    ("areas = [true, false, true, true]", r"clusters\[0\].areas\[0\] must be an integer.*True \(a boolean\)"),
    ("areas = [0.0, 0.0, 1.0, 1.0]", r"clusters\[0\].areas\[0\] must be an integer.*0.0 \(a float\)"),
    ("areas = [[0, 0], [1, 1.0]]", r"clusters\[0\].areas\[1\]\[1\] must be an integer"),
    ("areas = [0, 0, 1, 1]\namplitudes = { 01 = { values = [2.0] }, 1 = { values = [3.0] } }",
     r"clusters\[0\].amplitudes.01: .* 1, not '01'"),
])
def test_config_labels_are_integers_written_once(body, needle):
    from gradflow.model.config import model_from_dict
    with pytest.raises(ConfigError, match=needle):
        model_from_dict(tomllib.loads("mask_ratio = 0.5\nn_patches = 4\n[[clusters]]\n" + body))


# ---- 6. memory ---------------------------------------------------------------------------------
def _fake_proc(tmp_path, cgroup: str, mounts: list) -> str:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    lines = [f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime - {kind} {kind} {opts}"
             for i, (kind, root, point, opts) in enumerate(mounts)]
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    return str(proc)


def test_the_memory_of_this_process_s_own_cgroup_is_read(tmp_path):
    from gradflow._validate import cgroup_dirs, cgroup_memory_available
    # cgroup v2: the process's cgroup limits nothing, its parent 3 GiB of which 1 GiB is in use
    # (0.25 GiB of it reclaimable cache)
    root = tmp_path / "unified"
    own = root / "user.slice" / "job"
    own.mkdir(parents=True)
    (own / "memory.max").write_text("max\n")
    (root / "user.slice" / "memory.max").write_text(f"{3 << 30}\n")
    (root / "user.slice" / "memory.current").write_text(f"{1 << 30}\n")
    (root / "user.slice" / "memory.stat").write_text(f"anon 1\ninactive_file {1 << 28}\n")
    proc = _fake_proc(tmp_path, "0::/user.slice/job\n", [("cgroup2", "/", str(root), "rw")])
    assert cgroup_dirs("memory", proc) == [str(own), str(own.parent), str(root)]
    assert cgroup_memory_available(proc) == (3 << 30) - (1 << 30) + (1 << 28)


def test_the_memory_of_a_cgroup_v1_hierarchy(tmp_path):
    from gradflow._validate import cgroup_memory_available
    mem = tmp_path / "memory"
    own = mem / "docker" / "abc"
    own.mkdir(parents=True)
    (own / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    (own / "memory.usage_in_bytes").write_text(f"{1 << 29}\n")
    (own / "memory.stat").write_text("cache 5\ntotal_inactive_file 0\n")
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")     # v1's "unlimited"
    proc = _fake_proc(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
                      [("cgroup", "/", str(mem), "rw,memory")])
    assert cgroup_memory_available(proc) == (2 << 30) - (1 << 29)


def test_memory_refusals_state_what_is_needed_and_what_is_available(monkeypatch):
    import gradflow._validate as v
    assert v.meminfo_available() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(v, "available_memory", lambda: float(4 << 30))
    with pytest.raises(InvalidInputError, match=r"the thing would need 8.0 GiB of memory; this process has 4.0 GiB"):
        v.check_memory(2 ** 30, "the thing")
    v.check_memory(2 ** 28, "the thing")               # 2 GiB of 4: fits


@pytest.mark.parametrize("make, d", [
    (lambda: gradflow.train_transformer(global_local(P=40000), steps=1, lr=0.1, batch_size=8), 40005),
    (lambda: gradflow.train_transformer(global_local(16, n_local=2), steps=1, lr=0.1, batch_size=8, d=10**5), 10**5),
    (lambda: gradflow.train_transformer(global_local(16, n_local=2), steps=1, lr=0.1, batch_size=10**8), 19),
])
def test_training_too_large_for_memory_is_refused_before_allocating(make, d, monkeypatch):
    import gradflow._validate as v
    monkeypatch.setattr(v, "available_memory", lambda: float(16 << 30))
    with pytest.raises(InvalidInputError, match=r"training at d = \d+.* would need [\d.]+ GiB.* 16.0 GiB available") as err:
        make()
    need = float(re.search(r"would need ([\d.]+) GiB", str(err.value)).group(1))
    assert f"d = {d} " in str(err.value) and need * 2**30 >= 8 * 4 * d * d      # at least Q and its temporaries


def test_too_many_atoms_say_the_size_they_would_need():
    with pytest.raises(InvalidInputError, match=r"n_atoms must be at most 4096, got 1000000: .* 22351.7 GiB"):
        gradflow.Amplitude.uniform(1, 2, n_atoms=10**6)


# ---- 7. types ------------------------------------------------------------------------------
@pytest.mark.parametrize("value, needle", [
    (["0", "1"], "real numeric array"), ([False, True], "real numeric array"), ([0, 1j], "complex"),
    ([0.0, 2.0, 1.0], "strictly increasing, got 2.0 then 1.0"), ([], "non-empty"), ([[0.0, 1.0]], "1-d"),
    ([0.0, 3.0], r"lie in \[0, 2\]"), (range(10**8), "at most 1,000,000 times, got 100,000,000"),
])
def test_output_times_helper_refuses_what_is_not_times(value, needle):
    from gradflow._validate import increasing_times
    with pytest.raises(InvalidInputError, match=needle):
        increasing_times("t_eval", value, high=2.0)
    np.testing.assert_array_equal(increasing_times("t_eval", [0, 1.5]), [0.0, 1.5])


def test_instance_names_every_accepted_class():
    from gradflow._validate import instance
    with pytest.raises(InvalidInputError, match="sol must be a Solution or TrainRun, got str 'x'"):
        instance("sol", "x", (Solution, TrainRun))


# ---- 8. threads ------------------------------------------------------------------------------
def test_the_cpu_quota_of_this_process_s_own_cgroup_walking_up(tmp_path):
    from gradflow._validate import cgroup_cpu_quota
    root = tmp_path / "unified"
    own = root / "a" / "b"
    own.mkdir(parents=True)
    (own / "cpu.max").write_text("max 100000\n")
    (root / "a" / "cpu.max").write_text("150000 100000\n")      # 1.5 CPUs on the parent
    proc = _fake_proc(tmp_path, "0::/a/b\n", [("cgroup2", "/", str(root), "rw")])
    assert cgroup_cpu_quota(proc) == 1.5
    v1 = tmp_path / "cpu"
    (v1 / "job").mkdir(parents=True)
    (v1 / "job" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "job" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "proc").rename(tmp_path / "proc2")
    proc = _fake_proc(tmp_path, "3:cpu,cpuacct:/job\n0::/\n", [("cgroup", "/", str(v1), "rw,cpu,cpuacct")])
    assert cgroup_cpu_quota(proc) == 0.5


def test_available_cpus_follow_a_changed_affinity():
    import subprocess
    import sys
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    code = ("import os; from gradflow.theory.parallel import available_cpus; a = available_cpus(); "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(a, available_cpus())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before >= 2 and after == 1


def test_the_training_kernel_follows_the_thread_policy(monkeypatch):
    import numba

    import gradflow.training.transformer as tr
    if numba.config.NUMBA_NUM_THREADS < 2 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    m = global_local(16, n_local=2)
    rng = np.random.default_rng(0)
    V, E = tr.make_embeddings(m, 19, "orthonormal", rng)
    from gradflow.theory import parallel
    from gradflow.training.sampling import BatchSampler
    batch = BatchSampler(m).sample(rng, 8)
    used = []
    real = parallel.run_rows
    monkeypatch.setattr(tr, "run_rows", lambda call, n, threads: (used.append(threads), real(call, n, threads)))
    Q = 0.01 * rng.standard_normal((19, 19))
    one = tr.batch_loss_grad(Q, E, V, *batch)                           # 8 x 16 x 16: small
    monkeypatch.setattr(tr, "TRAIN_PARALLEL_WORK", 1)
    two = tr.batch_loss_grad(Q, E, V, *batch)
    with parallel.at_most_threads(1):               # a cap for this thread's calls (timings of one core)
        capped = tr.batch_loss_grad(Q, E, V, *batch)
    assert used == [1, 2, 1]
    # two chunks of samples summed in order give the one-chunk answer up to rounding
    assert two[0] == pytest.approx(one[0], rel=1e-14) and capped[0] == one[0]
    np.testing.assert_allclose(two[1], one[1], rtol=1e-12, atol=1e-15)


def test_kernels_called_from_many_threads_at_once_give_the_sequential_answers():
    """A threaded Dask client or the ladder's PyTorch threads call the kernels from several threads
    at once. The kernels run their rows on gradflow's own thread pool, never on a Numba threading
    layer (Numba's workqueue layer aborted the process on a concurrent launch): with the work
    thresholds at zero, so that every call splits its rows over threads, every caller gets the
    sequential answer, and no Numba threading layer was ever started."""
    import subprocess
    import sys
    code = """
import concurrent.futures as cf, numpy as np, numba
from gradflow.presets import global_local
from gradflow.flow.solver import solve
from gradflow.theory import parallel
from gradflow.training import transformer
from gradflow.training.sampling import BatchSampler
from gradflow.training.transformer import batch_loss_grad, make_embeddings
m = global_local(16, n_local=2, local_size=4)
def flow(i):
    return solve(m, 20.0, t_eval=[0.0, 10.0, 20.0]).target_attention[-1]
def train(i):
    rng = np.random.default_rng(i % 2)
    V, E = make_embeddings(m, 19, "orthonormal", rng)
    return batch_loss_grad(np.zeros((19, 19)), E, V, *BatchSampler(m).sample(rng, 64))[0]
one = [flow(0), train(0), train(1)]
parallel.PARALLEL_WORK = 0
transformer.TRAIN_PARALLEL_WORK = 0
with cf.ThreadPoolExecutor(4) as ex:
    flows = list(ex.map(flow, range(8)))
    losses = list(ex.map(train, range(16)))
try:
    layer = numba.threading_layer()
except ValueError:
    layer = "none"
print(layer, max(np.abs(f - one[0]).max() for f in flows),
      max(abs(l - one[i % 2 + 1]) / abs(one[i % 2 + 1]) for i, l in enumerate(losses)))
"""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    layer, flow_err, loss_err = out.stdout.split()
    # the flows are bit-identical (each row is computed alone); the training loss sums its chunks
    # of samples in order, so it differs from one chunk only by rounding
    assert layer == "none" and float(flow_err) == 0.0 and float(loss_err) < 1e-14


# ---- 9-12. the command line ------------------------------------------------------------------
def test_help_shows_each_preset_s_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--P P number of patches, on the most square grid (default: the preset's own: global_local 64, " \
           "balanced 64, voronoi 196)" in text
    assert "(default: the preset's own: global_local 1, balanced 1, voronoi 16)" in text


@pytest.mark.parametrize("P", [16, 17])
def test_small_global_local_models_keep_a_dominant_global_area(P):
    from gradflow.cli import _model_from, _parser
    model = _model_from(_parser().parse_args(["solve", "--P", str(P)]))
    sizes = model.clusters[0].area_sizes()
    assert sizes[0] > sizes[1:].max()


def test_balanced_with_an_odd_grid_names_the_flags_to_use(capsys):
    assert main(["solve", "--preset", "balanced", "--P", "10"]) == 2
    err = " ".join(_error_lines(capsys.readouterr().err))
    assert "--P 10 lays the patches out as a 2x5 grid" in err and "e.g. 8, 16, 24" in err and "--config" in err
    assert "give area_shape" not in err


def test_an_early_stop_is_one_clean_line(capsys):
    assert main(["solve", "--t-max", "2000", "--max-wall-time", "1e-9"]) == 1
    captured = capsys.readouterr()
    err = _error_lines(captured.err)
    assert err == [line for line in err if line.startswith("gradflow: ")]
    warning = [line for line in err if line.startswith("gradflow: warning: solve: integration stopped")]
    assert len(warning) == 1 and ".py" not in warning[0] and "RuntimeWarning" not in warning[0]
    assert "last step ends at t = " in captured.out and "t_max " not in captured.out


def test_train_says_when_its_kernel_compiles(tmp_path, monkeypatch, capsys):
    import gradflow.cli as cli
    import gradflow.training.transformer as tr
    monkeypatch.setattr(cli, "compiled_before", lambda: True)
    monkeypatch.setattr(tr, "compiled_before", lambda: False)
    assert main(["train", "--P", "16", "--n-local", "2", "--steps", "2", "--lr", "0.1", "--batch-size", "4",
                 "--out", str(tmp_path / "r.nc")]) == 0
    assert "compiling the training kernels" in capsys.readouterr().err
    assert main(["solve", "--P", "16", "--n-local", "2", "--t-max", "1"]) == 0
    assert "compiling" not in capsys.readouterr().err          # solve does not use the training kernel


def test_reported_speed_excludes_compilation(monkeypatch):
    """The kernels are compiled (or loaded) before the clock starts: a warm-up that takes 100 s
    of a fake clock leaves wall_time untouched."""
    import types

    import gradflow.training.sgd as sgd
    now = [0.0]
    monkeypatch.setattr(sgd, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    real = sgd._warm_up

    def slow_warm_up(model):
        real(model)
        now[0] += 100.0
    monkeypatch.setattr(sgd, "_warm_up", slow_warm_up)
    run = gradflow.train_transformer(global_local(16, n_local=2), steps=3, lr=0.1, batch_size=4)
    assert run.wall_time == 0.0


def test_trajectory_helper_refuses_what_is_not_a_result(small):
    from gradflow._validate import trajectory
    _, sol, run = small
    assert trajectory("result", sol) is sol and trajectory("result", run) is run
    with pytest.raises(InvalidInputError, match="result must be a Solution or TrainRun, got str 'x'"):
        trajectory("result", "x")


WORKER_THREADS_SCRIPT = """
import os
import gradflow              # a script that imports gradflow: so does every worker it spawns, first
from gradflow.analysis.cluster import ONE_THREAD, local_client


def threads():
    import numba
    return numba.config.NUMBA_NUM_THREADS, numba.get_num_threads()


if __name__ == "__main__":
    before = {k: os.environ.get(k) for k in ONE_THREAD}
    with local_client(2) as client:
        print(sorted(set(client.run(threads).values())), len(client.run(threads)))
    print({k: os.environ.get(k) for k in ONE_THREAD} == before)
"""


def test_local_cluster_workers_run_one_numba_thread_and_leave_this_environment_alone(tmp_path):
    """Dask sets a worker's env= variables after the worker has imported the script's modules
    (gradflow and Numba): the cluster gradflow starts must spawn its workers with one thread, or
    two workers on two cores run four threads; this process's environment stays as it was."""
    import subprocess
    import sys
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs (with one, Numba starts one thread anyway)")
    script = tmp_path / "workers.py"
    script.write_text(WORKER_THREADS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[(1, 1)] 2", "True"]


def test_a_failing_part_stops_the_other_threads_and_is_raised():
    """An error (or Ctrl-C) in one part of a kernel call stops every thread at its next part and
    reaches the caller; it does not wait for the other thread to work through the rest alone."""
    import time

    from gradflow.theory import parallel
    for failure in (ValueError("part 0 failed"), KeyboardInterrupt()):
        ran = []

        def call(rows):
            ran.append(int(rows[0]))
            time.sleep(0.05)
            if rows[0] == 0:
                raise failure
        with pytest.raises(type(failure)):
            parallel.run_rows(call, 16, 2)
        assert len(ran) <= 3                  # of 8 parts: the failing one and at most one per thread


RUN_ROWS_AT_SHUTDOWN = """
import threading, time
import numpy as np
from gradflow.theory import parallel
parallel.run_rows(lambda rows: None, 4, 2)          # the pool exists
def late():                                         # runs after the main thread has finished
    time.sleep(0.3)
    out = np.zeros(10)
    def call(rows):
        out[rows] = rows
    parallel.run_rows(call, 10, 2)
    print(out.sum())
threading.Thread(target=late).start()
"""


def test_kernel_calls_after_the_main_thread_has_finished_run_on_the_calling_thread():
    """Once the interpreter shuts down its thread pools take no more work; a kernel call from a
    thread still running then does every part itself (it raised RuntimeError)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", RUN_ROWS_AT_SHUTDOWN], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["45.0"], out.stderr[-2000:]
