"""The published plots' structure, drawn from small results files: facets, labels, log axis, targets,
seed bands, chance lines and the table's test metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from novolstm.bench.harness import plot
from novolstm.evaluation import Result, plot_curves


def _ratio(dtype, mode, num, den, ratio, target):
    return {"backend": "torch", "shape": "typical", "dtype": dtype, "mode": mode, "numerator": num,
            "denominator": den, "ratio": ratio, "target": target}


@pytest.fixture
def bench_results(tmp_path):
    ratios = [_ratio(d, m, "lstm spec", "native: torch.nn.LSTM", 0.8 if d == "float32" else 1.2, 1.0)
              for d in ("float32", "bfloat16") for m in ("forward", "forward+backward")]
    ratios += [_ratio(d, m, "novolstm spec", "lstm spec", 1.5, 1.3) for d in ("float32", "bfloat16") for m in ("forward", "forward+backward")]
    ratios.append(_ratio("float32", "forward+backward", "novolstm_reference spec", "lstm spec", 3.0, 1.3))
    rows = [{"backend": "torch", "shape": "typical", "dtype": "float32", "candidate": "lstm spec", "batch": 32, "steps": 100, "units": 128}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"ratios": ratios, "rows": rows, "machine": "a 2-core test machine"}))
    return json.loads(path.read_text())


def test_ratios_one_facet_per_mode_and_dtype_on_a_log_axis_centred_on_1(bench_results, tmp_path):
    fig = plot(bench_results, tmp_path / "ratios.png")
    assert (tmp_path / "ratios.png").stat().st_size > 0
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["forward, float32", "forward+backward, float32", "forward, bfloat16", "forward+backward, bfloat16"]
    title = fig._suptitle.get_text()
    assert "typical shape (32x100x128)" in title and "a 2-core test machine" in title
    for ax in axes:
        assert ax.get_xscale() == "log"
        low, high = ax.get_xlim()
        assert low < 1 < high and np.isclose(np.log(low), -np.log(high))  # centred on 1 in log space
        assert low < 0.8 and high > 3.0  # every ratio fits
    for ax in axes[::2]:  # the rows are shared: labelled once, in the left column
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["lstm / torch.nn.LSTM", "novolstm / lstm", "novolstm_reference / lstm"]
        assert list(ax.get_yticks()) == [2, 1, 0]  # the first pair on top
    # One bar and one target mark per measured ratio; the pair not measured says so.
    bars = sum(len(ax.patches) for ax in axes)
    assert bars == len(bench_results["ratios"])
    targets = [line for ax in axes for line in ax.get_lines() if line.get_linewidth() == 2]
    assert sorted({line.get_xdata()[0] for line in targets}) == [1.0, 1.3] and len(targets) == bars
    texts = [t.get_text() for ax in axes for t in ax.texts]
    assert texts.count("  not reported") == 3 and "3.00" in texts and "0.80" in texts
    colors = {round(p.get_width() + 1, 2): p.get_facecolor()[:3] for ax in axes for p in ax.patches}
    assert colors[0.8][1] > colors[0.8][0] and colors[3.0][0] > colors[3.0][1]  # green met, red missed


def test_ratios_without_any_ratio_say_so(tmp_path):
    fig = plot({"ratios": [], "rows": []}, tmp_path / "ratios.png")
    assert (tmp_path / "ratios.png").stat().st_size > 0
    assert not fig.get_axes() and "no ratios measured" in fig.texts[0].get_text()


def _curves(tmp_path) -> list[Result]:
    rng = np.random.default_rng(0)
    rows = []
    for task, metric, baseline, start in (("adding T=5", "test MSE", 0.16, 0.2), ("digits", "test accuracy", 0.1, 2.3)):
        for cell in ("lstm", "novolstm"):
            for seed in (0, 1, 2):
                curve = (start * np.exp(-np.arange(40) / 15) * (1 + 0.1 * rng.random(40))).tolist()
                rows.append({"cell": cell, "task": task, "seed": seed, "backend": "numpy", "curve": curve,
                             "score": float(rng.random()), "metric": metric, "baseline": baseline})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    return [Result(**r) for r in json.loads(path.read_text())]


def test_curves_grid_with_seed_bands_chance_lines_and_the_tables_metric(tmp_path):
    results = _curves(tmp_path)
    fig = plot_curves(results, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    visible = [ax for ax in fig.get_axes() if ax.get_visible()]
    adding, digits, legend = visible
    assert (adding.get_title(), digits.get_title()) == ("adding T=5", "digits")
    assert adding.get_yscale() == "log" and digits.get_yscale() == "linear"
    assert adding.get_ylabel() == "training MSE" and digits.get_ylabel() == "training cross-entropy"
    for ax, chance in ((adding, 0.16), (digits, np.log(10))):
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and np.isclose(dashed[0].get_ydata()[0], chance)
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # a seed band per cell
    # The table's test metric: MSE as a marker with its spread beside the curves, accuracy written out.
    scores = {r.cell: np.mean([s.score for s in results if s.cell == r.cell and s.task == "adding T=5"]) for r in results}
    markers = [line for line in adding.get_lines() if line.get_marker() == "D"]
    assert sorted(float(m.get_ydata()[0]) for m in markers) == pytest.approx(sorted(scores.values()))
    digit_texts = [t.get_text() for t in digits.texts]
    assert "test accuracy" in digit_texts and any(t.startswith("lstm 0.") for t in digit_texts)
    assert [t.get_text() for t in legend.get_legend().get_texts()][:2] == ["lstm", "novolstm"]
    assert "3 seeds" in fig._suptitle.get_text()
