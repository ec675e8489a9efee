"""The ladder: the time-scale fit on synthetic traces, the rung registry, the report (rows,
verdicts, divergence, skip-if-on-disk) and the command line."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from gradflow.presets import global_local

from gradflow.analysis import ladder as lad
from gradflow.analysis.ladder import (
    RATIO_FACTOR,
    Rung,
    TimeScaleFit,
    fit_time_scale,
    one_time_scale,
    resolve_rungs,
    rung_names,
)
from gradflow.cli import main
from gradflow.flow.phase_times import crossing_time

T2, T3 = 70.0, 450.0


def _flow(k_ratio=1.0):
    """Synthetic own-area traces (local, global) with T2 = 70 and T3 / T2 = 450 / 70 (times
    k_ratio): fraction(t) = 1 / (1 + (T2 / t)^k), crossing 0.95 at T2 19^(1/k)."""
    k = math.log(19.0) / math.log(k_ratio * T3 / T2)

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(divide="ignore", over="ignore"):
            local = np.where(t > 0, 1.0 / (1.0 + (T2 / np.maximum(t, 1e-300)) ** k), 0.0)
            glob = np.where(t > 0, 1.0 / (1.0 + (8.0 / np.maximum(t, 1e-300)) ** 1.5), 0.0)
        return np.stack([0.875 * local, glob], axis=-1)
    return f


def _ratio(f, t):
    frac = f(t)[:, 0] / 0.875
    return crossing_time(t, frac, 0.95, True) / crossing_time(t, frac, 0.5, True)


def test_a_flow_at_twice_the_speed_fits_c_2_with_no_deviation():
    flow = _flow()
    t = np.concatenate([[0.0], np.geomspace(0.5, 600, 40)])
    fit = fit_time_scale(t, flow(2.0 * t), flow)
    assert fit.c == pytest.approx(2.0, rel=1e-4) and fit.max_deviation < 1e-4 and not fit.at_edge
    assert fit.max_deviation_unscaled > 0.1                       # without the rescaling it is far off
    fits, why = one_time_scale(fit, _ratio(flow, 2 * np.geomspace(1, 1e4, 4000)), _ratio(flow, np.geomspace(1, 1e4, 4000)))
    assert fits and why == ""
    # and a rung that *is* the flow gives c = 1
    assert fit_time_scale(t, flow(t), flow).c == pytest.approx(1.0, rel=1e-4)


def test_a_changed_t3_t2_ratio_is_flagged():
    """The rung's T3/T2 is 3x the flow's: no single rescaling maps one onto the other, and the
    verdict says so (by the deviation and by the ratio)."""
    flow, other = _flow(), _flow(k_ratio=3.0)
    t = np.concatenate([[0.0], np.geomspace(0.5, 2000, 50)])
    grid = np.geomspace(1, 1e5, 8000)
    fit = fit_time_scale(t, other(t), flow)
    ratio, flow_ratio = _ratio(other, grid), _ratio(flow, grid)
    assert ratio / flow_ratio == pytest.approx(3.0, rel=0.01)
    fits, why = one_time_scale(fit, ratio, flow_ratio)
    assert not fits and "T3/T2" in why
    # the ratio rule alone: a small deviation does not excuse a ratio off by more than RATIO_FACTOR
    small = TimeScaleFit(c=1.0, rms=0.0, max_deviation=0.01, max_deviation_unscaled=0.01, at_edge=False)
    assert not one_time_scale(small, 1.6 * RATIO_FACTOR, 1.6)[0]
    assert one_time_scale(small, 0.9 * RATIO_FACTOR, 1.0)[0]
    edge = TimeScaleFit(c=1e-3, rms=0.0, max_deviation=0.0, max_deviation_unscaled=0.5, at_edge=True)
    assert "edge" in one_time_scale(edge, np.nan, 6.0)[1]


def test_phases_verdict_tells_a_violated_order_from_a_run_that_ends_early():
    nan = np.nan
    assert lad.phases_verdict(10.0, 20.0, 30.0) is True
    assert lad.phases_verdict(10.0, 20.0, nan) is None           # T3 lies beyond the run
    assert lad.phases_verdict(10.0, nan, nan) is None
    assert lad.phases_verdict(nan, nan, nan) is None
    assert lad.phases_verdict(20.0, 10.0, 30.0) is False         # two reached phases out of order
    assert lad.phases_verdict(20.0, 10.0, nan) is False
    assert lad.phases_verdict(nan, 10.0, 30.0) is False          # T2 reached, T1 only after the run
    assert lad.phases_verdict(10.0, nan, 30.0) is False
    assert lad.combined_verdict([True, None]) is None and lad.combined_verdict([True, True]) is True
    assert lad.combined_verdict([None, False, True]) is False and lad.combined_verdict([]) is None
    assert lad._phases_cell(None, "1/2") == "not reached within the run (1/2)"
    assert lad._phases_cell(False, "0/2") == "**no** (0/2)"


def test_a_time_scale_past_the_flow_s_settling_is_undetermined():
    """The rung's first record lands, at the fitted c, where the flow no longer moves: any
    larger c fits too. So does a rung that crossed every level before its first record."""
    assert lad.time_scale_undetermined(2.0, 10.0, (5.0, 8.0, 30.0), settled=500.0) == ""
    why = lad.time_scale_undetermined(100.0, 10.0, (5.0, 8.0, 30.0), settled=500.0)
    assert why.startswith("c undetermined") and "settled" in why
    why = lad.time_scale_undetermined(1.0, 1e4, (5000.0, 4935.0, 9630.0), settled=2e4)
    assert "before the first record" in why
    fit = TimeScaleFit(c=1010.0, rms=0.003, max_deviation=0.008, max_deviation_unscaled=0.01, at_edge=False)
    assert one_time_scale(fit, 2.0, 6.5, undetermined=why) == (None, why)
    # the settling time of a flow table: the first time from which its traces stay within tolerance
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([[0.0], [0.5], [0.995], [0.998], [1.0]])
    tr = lad.Traces(t, y, y, y, np.ones((1, 1)))
    table = lad.FlowTable("x", global_local(16, n_local=2), "exact", tr, 4.0, True, {})
    assert table.settled == 2.0 and table([10.0])[0, 0] == 1.0      # held at its last value past the horizon


def test_the_registry():
    names = rung_names()
    assert names[0] == "model" and {"factorized", "learned-value", "heads4", "layernorm", "depth2", "adam",
                                     "gaussian"} <= set(names)
    assert names[-1] == "mae-pixels" and lad.RUNGS["mae-pixels"].data_options      # the top rung, own data
    with pytest.raises(ValueError, match="did you mean 'adam'"):
        resolve_rungs("model,adma")
    with pytest.raises(ValueError, match="repeat"):
        resolve_rungs(["model", "model"])
    with pytest.raises(ValueError, match="at least one"):
        resolve_rungs(",")
    assert [r.name for r in resolve_rungs("adam, model")] == ["adam", "model"]
    # a rung whose modules are missing is neither listed nor run; a name cannot be taken twice
    assert not Rung("x", "", requires=("no_such_package_xyz.sub",)).available()
    ghost = Rung("ghost", "needs a module that does not exist", requires=("no_such_module_xyz",))
    lad.register_rung(ghost)
    try:
        assert "ghost" not in rung_names()
        with pytest.raises(ValueError, match="no_such_module_xyz"):
            resolve_rungs("ghost")
        with pytest.raises(ValueError, match="already registered"):
            lad.register_rung(ghost)
    finally:
        del lad.RUNGS["ghost"]
    # the rung rules: LayerNorm's lr follows the width, the wide Gaussian rung is 4 (F + P) wide
    model = global_local(16, n_local=2)
    assert lad.RUNGS["layernorm"].lr(1.0, model) == pytest.approx(2.0 / 19 ** 2)
    assert lad.RUNGS["gaussian-wide"].width(model) == 4 * 19


def test_importing_gradflow_and_the_ladder_does_not_import_torch():
    code = ("import sys, gradflow, gradflow.cli, gradflow.analysis.ladder, gradflow.figures.ladder; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ladder_list_and_bad_input(capsys):
    assert main(["ladder", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == rung_names()
    assert main(["ladder", "--rungs", "modle", "--out", "x"]) == 2
    assert "did you mean 'model'" in capsys.readouterr().err
    assert main(["ladder"]) == 2
    assert main(["ladder", "--seeds", "0", "--out", "x", "--rungs", "model"]) == 2


def test_without_torch_the_ladder_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"          # as if the extra were not installed
            "import gradflow\nfrom gradflow.cli import main\n"
            "from gradflow.presets import global_local\n"
            "try:\n    gradflow.train_torch(global_local(16, n_local=2), steps=1, lr=1.0)\n"
            "except ModuleNotFoundError as exc:\n    print('API:', exc)\n"
            f"sys.exit(main(['ladder', '--P', '16', '--n-local', '2', '--out', {str(tmp_path)!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and "pip install 'gradflow[torch]'" in out.stderr
    assert "API: gradflow.train_torch needs PyTorch" in out.stdout
    assert not list(tmp_path.glob("runs/*"))


@pytest.fixture(scope="module")
def local_client():
    """Dask in this process: one worker thread, no subprocesses."""
    from dask.distributed import Client
    c = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    yield c
    c.close()


@pytest.mark.filterwarnings("ignore:gradflow.train_torch:RuntimeWarning")      # the rung meant to diverge
def test_ladder_report_divergence_and_rerun(tmp_path, local_client):
    """Two rungs and a diverging one on a small model: rows with the verdicts, the diverged rung
    reported rather than hidden, the figure written, and a rerun that trains nothing."""
    pytest.importorskip("torch")
    model = global_local(16, n_local=2, local_size=4, mask_ratio=0.5)
    boom = Rung("boom", "a learned value at a step that diverges", dict(value="learned"), lr_scale=1e4)
    # the model's own transformer at a huge step: bounded, so it does not diverge, but its first
    # record is already where the flow has settled
    leap = Rung("leap", "the model at lr x 1e4", lr_scale=1e4)
    kw = dict(seeds=2, steps=60, lr=0.5, batch_size=32, n_records=12, eval_size=128, out=tmp_path,
              client=local_client, progress=False)
    res = lad.ladder(model, ["model", "factorized", boom, leap], **kw)
    rows = json.loads((tmp_path / "report.json").read_text())
    assert [r["rung"] for r in rows] == ["model", "factorized", "boom", "leap"]
    for row in rows:
        assert {"rung", "phases_ordered", "area_wide", "max_deviation", "time_scale"} <= set(row)
    model_row, fact_row, boom_row, leap_row = rows
    assert model_row["finished"] == 2 and model_row["max_deviation"] < 0.1
    assert model_row["time_scale"] == pytest.approx(1.0, abs=0.15)      # the model runs on the flow's clock
    assert fact_row["time_scale"] > 1.5 * model_row["time_scale"]      # factorized runs ahead of the flow
    assert boom_row["finished"] == 0 and boom_row["diverged"] == 2 and "diverged" in boom_row["note"]
    # at t = 30 the model has decoupled and grown its target, but not reached T3: not a violation
    assert np.isfinite(model_row["T2"]) and model_row["T3"] is None
    assert model_row["phases_ordered"] is None and model_row["phases_not_reached"] == 2
    assert res.flow_row["horizon"] == 30.0 and res.flow_row["phases_ordered"] is None      # the same horizon
    assert leap_row["finished"] == 2 and leap_row["single_time_scale"] is None
    assert leap_row["time_scale_note"].startswith("c undetermined")
    text = (tmp_path / "report.md").read_text()
    assert "0/2 finished" in text and "| model |" in text and "| model | not reached within the run (0/2) |" in text
    assert "*flow* (exact, to t = 30)" in text and "not reached by t = 30" in text
    from gradflow.figures.ladder import ladder_figure
    ladder_figure(res, tmp_path)
    assert (tmp_path / "ladder.png").stat().st_size > 10_000
    assert len(list((tmp_path / "runs").glob("*.nc"))) == 8
    again = lad.ladder(model, ["model", "factorized", boom, leap], **kw)
    assert again.computed == 0 and again.skipped == 8 and again.rows[0]["time_scale"] == res.rows[0]["time_scale"]
    assert again.runs_line(tmp_path / "runs") == f"8 runs: 0 trained now, 8 skipped (already in {tmp_path / 'runs'})"


@pytest.mark.slow
def test_ladder_command_line_on_a_local_cluster(tmp_path, capsys):
    pytest.importorskip("torch")
    args = ["ladder", "--P", "16", "--n-local", "2", "--rungs", "model,adam", "--seeds", "2", "--steps", "80",
            "--lr", "0.5", "--records", "10", "--eval-size", "128", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 trained now" in out and "| adam |" in out
    assert (tmp_path / "ladder.png").is_file() and str(tmp_path / "ladder.png") in out     # the command draws it
    assert main(args) == 0
    assert "0 trained now" in capsys.readouterr().out        # a rerun skips the runs on disk
    assert main(args + ["--scheduler", "tcp://127.0.0.1:1"]) == 2
