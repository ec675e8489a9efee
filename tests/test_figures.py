"""`gradflow figures --quick` writes all six figures, and the data drawn in each is right."""
import numpy as np
import pytest

import gradflow
from gradflow.analysis.scaling import fit_power_law, local_slopes, power_law_range
from gradflow.figures import make_figures

NAMES = ["fig1_correlations", "fig2_attention_maps", "fig3_loss", "fig4_phase_scaling",
         "fig5_diversity", "fig6_phase_diagram"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, make_figures(out, quick=True)


@pytest.fixture(scope="module")
def quick_flow():
    """The quick figures' model and its exact flow, solved here independently of the figures."""
    m = gradflow.presets.global_local(36, n_local=2, local_size=4, mask_ratio=0.5)
    return m, gradflow.solve(m, 1e4)


def _extent(fig, artist):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    return artist.get_window_extent(fig.canvas.get_renderer())


@pytest.mark.slow
def test_files_are_the_drawn_figures(quick):
    """Each PNG decodes to the figure's size at the style's dpi and is not blank; each PDF's page
    is the figure's size in points."""
    import re

    from matplotlib.image import imread

    from gradflow.figures.style import STYLE
    out, results = quick
    assert sorted(results) == sorted(f"fig_{n.split('_', 1)[1]}" for n in NAMES)
    for name, res in zip(NAMES, results.values()):
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert res.paths == [png, pdf]
        w, h = res.size
        pixels = imread(png)
        assert pixels.shape[:2] == (round(h * STYLE["savefig.dpi"]), round(w * STYLE["savefig.dpi"])), name
        assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 50, name   # drawn on
        box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf.read_bytes())
        assert box and (float(box.group(1)), float(box.group(2))) == pytest.approx((72 * w, 72 * h), abs=0.5)


def check_correlations(res):
    """Figure 1: the target FP grows from 0; the Monte-Carlo band is the min-max over seeds of
    MC minus flow (nonzero width with several seeds, small against the curves); the PP curves
    that can coincide are told apart by width, dash and drawing order."""
    d = res.data
    fp = d["target_fp_local"]
    assert fp[0] == 0.0 and fp[-1] > 2.0
    assert d["n_seeds"] > 1
    for (query, curve), (t, mean, lo, hi) in d["bands"].items():
        assert np.all(lo <= mean + 1e-15) and np.all(mean <= hi + 1e-15)
        assert np.max(hi - lo) > 1e-4, (query, curve)            # a band, not a line
        assert np.max(np.abs(mean)) < 0.05 * np.max(np.abs(fp)), (query, curve)   # MC follows the flow
    for query in ("local query (small area)", "global query (dominant area)"):
        ls_self, w_self, z_self = d["lines"][(query, "pp_self")]
        ls_other, w_other, z_other = d["lines"][(query, "pp_other")]
        assert ls_self != ls_other and w_self > 2 * w_other and z_other > z_self


def check_attention_maps(res, model, sol):
    """Figure 2: columns start at t = 0, then each query's phases in time order, labelled with
    the phase times of an independent solve; every map is a distribution; t = 0 is uniform."""
    d = res.data
    ph = gradflow.phases(sol)
    lp, gp = 0, int(np.flatnonzero(model.clusters[0].areas == 0)[0])
    for qname, p in (("local query", lp), ("global query", gp)):
        cols = d["columns"][qname]
        labels, times = [c[0] for c in cols], np.array([c[1] for c in cols])
        assert labels[0] == "t = 0" and times[0] == 0.0 and sorted(labels[1:]) == ["T1", "T2", "T3"]
        assert np.all(np.diff(times) > 0), cols
        for lab, tt in cols[1:]:
            assert tt == pytest.approx(getattr(ph, lab)[0, p], rel=1e-9)
    # the global query's target grows before its distractor halves: T2 comes before T1
    assert [c[0] for c in d["columns"]["global query"]] == ["t = 0", "T2", "T1", "T3"]
    maps = d["maps"]
    uniform = maps[("local query", "t = 0", "flow")]
    np.testing.assert_allclose(uniform, 1.0 / uniform.size, rtol=1e-12)
    for mp in maps.values():
        assert abs(mp.sum() - 1.0) < 1e-10


def check_loss(res):
    """Figure 3: the oracle floor; the exact loss above it, and the mean-field state's exact loss
    too, while the mean-field flow's own loss falls below it (which is why both are drawn)."""
    d = res.data
    # 8 local patches masked with all 3 area mates: 0.5^4 * 1/2 each; 28 global ones: 0.5^28 * 1/2
    assert d["oracle"] == pytest.approx(8 * 0.5**5 + 28 * 0.5**29, rel=1e-12)
    assert np.all(d["exact"] >= d["oracle"]) and np.all(d["meanfield_exact"] >= d["oracle"])
    assert d["meanfield"][-1] < 0.1 * d["oracle"]
    assert d["meanfield_exact_gap"] == pytest.approx(np.max(np.abs(d["meanfield_exact"] / d["exact"] - 1)))


def check_phase_scaling(res):
    """Figure 4: the drawn fit ranges, fitted lines and local slopes are those of the analysis
    functions; the legend quotes the fitted numbers; ticks readable; legend off the data."""
    r, drawn, fig = res.data["scaling"], res.data["drawn"], res.figure
    Ps = r.Ps.astype(float)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    for name in ("T1", "T2", "T3"):
        T = r.times[name]
        np.testing.assert_allclose(drawn[name]["local_slope"], local_slopes(Ps, T), rtol=1e-12)
        i0 = power_law_range(Ps, T)
        assert r.fit_start[name] == i0
        label = next(lab for lab in labels if lab.startswith(name))
        if i0 is None:
            assert "fit_P" not in drawn[name] and "no power law" in label
            continue
        slope, (lo, hi) = fit_power_law(Ps[i0:], T[i0:])
        np.testing.assert_array_equal(drawn[name]["fit_P"], Ps[i0:])
        drawn_slope = np.polyfit(np.log(drawn[name]["fit_P"]), np.log(drawn[name]["fit_T"]), 1)[0]
        assert drawn_slope == pytest.approx(slope, rel=1e-9)
        assert f"slope {slope:.3f} [{lo:.3f}, {hi:.3f}]" in label
        assert f"P = {int(Ps[i0])}..{int(Ps[-1])}" in label
    # at least three labelled ticks inside every axis of the figure, and the legend off the axes
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            ticks = axis.get_majorticklocs()
            assert np.count_nonzero((ticks >= min(lim)) & (ticks <= max(lim))) >= 3
        assert not _extent(fig, fig.legends[0]).overlaps(_extent(fig, ax))
    return r


def check_diversity(res, sol):
    """Figure 5: diversity starts at exactly 0 (Q = 0) and ends well above it; the phase marks
    are the summary's medians of an independent solve."""
    d = res.data
    assert abs(d["flow"][0]) < 1e-12 and d["flow"][-1] > 0.2
    summary = gradflow.summarize(gradflow.phases(sol))
    for name, (T, _) in d["at_phases"].items():
        assert T == pytest.approx(summary.time(name), rel=1e-12)


@pytest.mark.slow
def test_figure_data(quick, quick_flow):
    _, r = quick
    model, sol = quick_flow
    check_correlations(r["fig_correlations"])
    check_attention_maps(r["fig_attention_maps"], model, sol)
    check_loss(r["fig_loss"])
    res = check_phase_scaling(r["fig_phase_scaling"])
    # the quick sizes: T1 flat, T2 nearly linear at large P; T3's slope still rising (no fit)
    assert abs(res.slopes["T1"]) < 0.05 and 0.9 < res.slopes["T2"] < 1.05 and res.fit_start["T3"] is None
    check_diversity(r["fig_diversity"], sol)
    # 6: the diagram's axes are the sampled shares and mask ratios, T2 finite where reached;
    # a legend entry only for markers that are drawn
    d6 = r["fig_phase_diagram"].data
    assert d6["T2"].shape == (d6["gamma"].size, d6["share"].size) and np.isfinite(d6["T2"]).all()
    texts = [t.get_text() for t in r["fig_phase_diagram"].figure.legends[0].get_texts()]
    assert len(texts) == int(d6["two_phases"].any()) + int((~d6["two_phases"]).any())


@pytest.mark.slow
def test_full_figures(tmp_path):
    """The committed figures (about 2.5 minutes): the same checks at full size, and the numbers
    the README's captions quote."""
    r = make_figures(tmp_path, quick=False)
    m = gradflow.presets.global_local(64, n_local=4, local_size=4, mask_ratio=0.5)
    sol = gradflow.solve(m, 1e4)
    check_correlations(r["fig_correlations"])
    assert r["fig_correlations"].data["n_seeds"] == 3
    check_attention_maps(r["fig_attention_maps"], m, sol)
    res = check_phase_scaling(r["fig_phase_scaling"])
    assert all(res.fit_start[n] is not None for n in ("T1", "T2", "T3"))
    assert abs(res.slopes["T1"]) < 0.01 and 0.95 < res.slopes["T2"] < 1.0 and 0.9 < res.slopes["T3"] < 1.0
    check_diversity(r["fig_diversity"], sol)
