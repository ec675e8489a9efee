"""The command line: exit codes, one-line messages, and the end-to-end file workflow."""
import subprocess
import sys

import numpy as np
import pytest

from gradflow import Solution, TrainRun
from gradflow.cli import main

CONFIG = """
mask_ratio = 0.45
grid = [3, 4]
[[clusters]]
areas = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]]
prob = 0.6
amplitudes = { uniform = [0.5, 1.5], n_atoms = 4 }
[[clusters]]
areas = [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
prob = 0.4
[clusters.amplitudes.1]
values = [0.5, 2.0]
weights = [0.5, 0.5]
"""


def test_solve_train_compare_workflow(tmp_path, capsys):
    cfg = tmp_path / "model.toml"
    cfg.write_text(CONFIG)
    assert main(["solve", "--config", str(cfg), "--t-max", "20", "--out", str(tmp_path / "s.nc")]) == 0
    sol = Solution.load(tmp_path / "s.nc")
    assert sol.model.n_clusters == 2 and sol.model.clusters[0].amplitudes[0].continuous == (0.5, 1.5)
    assert main(["train", "--config", str(cfg), "--steps", "200", "--lr", "0.1", "--batch-size", "64",
                 "--seeds", "2", "--record-every", "50", "--out", str(tmp_path / "r.nc")]) == 0
    runs = [TrainRun.load(tmp_path / f"r_seed{s}.nc") for s in range(2)]
    assert runs[0].seed == 0 and runs[1].seed == 1 and not np.array_equal(runs[0].Q, runs[1].Q)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "s.nc"), str(tmp_path / "r_seed0.nc"),
                 str(tmp_path / "r_seed1.nc")]) == 0
    assert "target_attention" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["solve", "--preset", "nope"], "preset"),
    (["solve", "--mask-ratio", "1.5"], "mask_ratio"),
    (["solve", "--t-max", "-1"], "--t-max must be"),          # named by its flag
    (["solve", "--method", "magic"], "method"),
    (["solve", "--config", "missing.toml"], "missing.toml"),
    (["solve", "--preset", "balanced", "--P", "10"], "P"),
    (["train", "--steps", "0", "--lr", "0.1", "--out", "x.nc"], "steps"),
    (["compare", "missing.nc", "other.nc"], "missing.nc"),
    (["verify", "--n-local", "99"], "n_local"),
    (["solve", "--preset", "balanced", "--n-local", "3"], "--n-local does not apply to preset 'balanced'"),
    (["solve", "--P", "16", "--n-local", "4"], "--n-local"),     # the message names the flags to set
    (["solve", "--config", "m.toml", "--P", "16"], "cannot be combined with --config"),
    (["compare", "missing.nc", "other.nc", "--tol", "nan"], "--tol"),      # bad input: 2, not a failed comparison
    (["config"], "--example"),
    (["solve", "--out", "."], "directory"),
    (["solve", "--out", "/nonexistent/dir/x.nc"], "does not exist"),
])
def test_user_errors_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and "Traceback" not in err


def test_usage_errors_exit_2_without_traceback():
    out = subprocess.run([sys.executable, "-m", "gradflow", "solve", "--P", "abc"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_default_job_prints_summary():
    out = subprocess.run([sys.executable, "-m", "gradflow"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "phases of local queries (16): T1" in out.stdout and "wall time" in out.stdout


def test_a_reader_that_goes_away_stops_the_output_quietly():
    # gradflow solve | head: the pipe is closed before the first line is written
    proc = subprocess.Popen([sys.executable, "-m", "gradflow", "solve", "--t-max", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 141, err          # 128 + SIGPIPE, as a Unix tool that met a closed pipe
    assert "error" not in err and "Traceback" not in err and "Exception ignored" not in err


@pytest.mark.parametrize("body, needle", [
    ("clusters = 5", "clusters"),
    ("clusters = [5]", "clusters[0]"),
    ("[[clusters]]\nareas = [0, 1]\namplitudes = { uniform = 5 }", "uniform"),
    ("[[clusters]]\nareas = [0, 1]\namplitudes = { uniform = [0.5, 1.5], n_atoms = 'x' }", "n_atoms"),
])
def test_bad_config_files_exit_2(tmp_path, capsys, body, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("mask_ratio = 0.5\nn_patches = 2\n" + body + "\n")
    assert main(["solve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err


def test_one_seed_is_named_like_many(tmp_path):
    assert main(["train", "--P", "16", "--n-local", "2", "--steps", "20", "--lr", "0.1", "--batch-size", "8",
                 "--record-every", "10", "--out", str(tmp_path / "R.nc")]) == 0
    assert (tmp_path / "R_seed0.nc").is_file() and not (tmp_path / "R.nc").exists()


def test_internal_failures_exit_1_and_debug_shows_them(monkeypatch, capsys):
    import gradflow.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(cli, "solve", broken)
    assert main(["solve", "--t-max", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "internal error" in err and "kernel exploded" in err and "--debug" in err and "\n" not in err
    with pytest.raises(RuntimeError, match="kernel exploded"):
        main(["--debug", "solve", "--t-max", "1"])


def test_examples_printed_work_as_they_are(tmp_path, capsys):
    import tomllib

    from gradflow.model.config import model_from_dict
    assert main(["config", "--example"]) == 0
    model = model_from_dict(tomllib.loads(capsys.readouterr().out))
    assert model.n_clusters == 2 and model.grid == (4, 4)
    assert model.clusters[1].amplitudes[1].values.tolist() == [0.5, 2.0]
    assert main(["sweep", "--example"]) == 0
    grid = tmp_path / "grid.toml"
    grid.write_text(capsys.readouterr().out)
    from gradflow.analysis.sweeps import read_sweep_file
    assert read_sweep_file(grid)["grid"]["mask_ratio"] == [0.3, 0.5]


def test_flags_are_not_abbreviated_and_unknown_ones_name_the_command(capsys):
    """``--mask 0.3`` is not taken for ``--mask-ratio`` (an abbreviation would silently change
    meaning once another flag shares the prefix), and an unknown flag is reported by the
    command it was given to."""
    with pytest.raises(SystemExit) as stop:
        main(["solve", "--mask", "0.3", "--t-max", "10"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "gradflow solve: error: unrecognized arguments: --mask 0.3"
    assert main(["train", "--steps", "5", "--lr", "-1", "--out", "x.nc"]) == 2
    assert capsys.readouterr().err.strip().startswith("gradflow: error: --lr must be")
