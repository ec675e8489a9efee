"""`gradflow figures --quick` writes all six figures, and the data drawn in each is right."""
import numpy as np
import pytest

from gradflow.figures import make_figures

NAMES = ["fig1_correlations", "fig2_attention_maps", "fig3_loss", "fig4_phase_scaling",
         "fig5_diversity", "fig6_phase_diagram"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, make_figures(out, quick=True)


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


def test_figure_data(quick):
    _, r = quick
    # 1: the local query's target FP correlation starts at 0 (Q = 0) and grows
    fp = r["fig_correlations"].data["target_fp_local"]
    assert fp[0] == 0.0 and fp[-1] > 2.0
    # 2: at t = 0 attention is uniform over the P patches, and every map is a distribution
    maps = r["fig_attention_maps"].data["maps"]
    uniform = maps[("local query", "t = 0", "flow")]
    np.testing.assert_allclose(uniform, 1.0 / uniform.size, rtol=1e-12)
    for mp in maps.values():
        assert abs(mp.sum() - 1.0) < 1e-10
    # 3: the area-oracle floor is the exact expected loss of the oracle, below the exact flow
    d3 = r["fig_loss"].data
    # 8 local patches masked with all 3 area mates: 0.5^4 * 1/2 each; 28 global ones: 0.5^28 * 1/2
    assert d3["oracle"] == pytest.approx(8 * 0.5**5 + 28 * 0.5**29, rel=1e-12)
    assert np.all(d3["exact"] >= d3["oracle"])
    # 4: T2 grows with P
    assert r["fig_phase_scaling"].data["scaling"].slopes["T2"] > 0.3
    # 5: diversity starts at exactly 0 (Q = 0) and ends well above it
    d5 = r["fig_diversity"].data["flow"]
    assert abs(d5[0]) < 1e-12 and d5[-1] > 0.2
    # 6: the diagram's axes are the sampled shares and mask ratios, T2 finite where reached
    d6 = r["fig_phase_diagram"].data
    assert d6["T2"].shape == (d6["gamma"].size, d6["share"].size) and np.isfinite(d6["T2"]).all()
