"""The published plots' structure, drawn from small results files: facets, labels, log axis, targets,
seed bands, chance lines and the table's test metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from novolstm.bench.harness import plot
from novolstm.evaluation import Result, load_results, plot_curves


def _ratio(dtype, mode, num, den, ratio, target):
    return {
        "backend": "torch",
        "shape": "typical",
        "dtype": dtype,
        "mode": mode,
        "numerator": num,
        "denominator": den,
        "ratio": ratio,
        "target": target,
    }


@pytest.fixture
def bench_results(tmp_path):
    ratios = [
        _ratio(d, m, "lstm spec", "native: torch.nn.LSTM", 0.8 if d == "float32" else 1.2, 1.0)
        for d in ("float32", "bfloat16")
        for m in ("forward", "forward+backward")
    ]
    ratios += [
        _ratio(d, m, "novolstm spec", "lstm spec", 1.5, 1.3)
        for d in ("float32", "bfloat16")
        for m in ("forward", "forward+backward")
    ]
    ratios.append(_ratio("float32", "forward+backward", "novolstm_reference spec", "lstm spec", 3.0, 1.3))
    rows = [
        {
            "backend": "torch",
            "shape": "typical",
            "dtype": "float32",
            "candidate": "lstm spec",
            "batch": 32,
            "steps": 100,
            "units": 128,
        }
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"ratios": ratios, "rows": rows, "machine": "a 2-core test machine"}))
    return json.loads(path.read_text())


def test_ratios_one_facet_per_mode_and_dtype_on_a_log_axis_centred_on_1(bench_results, tmp_path):
    fig = plot(bench_results, tmp_path / "ratios.png")
    assert (tmp_path / "ratios.png").stat().st_size > 0
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [
        "forward, float32",
        "forward+backward, float32",
        "forward, bfloat16",
        "forward+backward, bfloat16",
    ]
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


_TASKS = (
    ("adding T=5", "test MSE", 0.16, 0.2),
    ("copy T=5", "test cross-entropy on recall steps", 2.08, 2.1),
    ("digits", "test accuracy", 0.1, 0.1),
)


def _curves(tmp_path) -> list[Result]:
    """A results.json as compare writes it: every run scored on its test set at 0, 10, ..., 40 steps."""
    rng = np.random.default_rng(0)
    rows = []
    for task, metric, baseline, start in _TASKS:
        for cell in ("lstm", "novolstm"):
            for seed in (0, 1, 2):
                steps = [0, 10, 20, 30, 40]
                if metric == "test accuracy":
                    test = (0.9 - 0.8 * np.exp(-np.array(steps) / 15) + 0.05 * rng.random(5)).tolist()
                else:
                    test = (start * np.exp(-np.array(steps) / 30) * (1 + 0.1 * rng.random(5))).tolist()
                rows.append(
                    {
                        "cell": cell,
                        "task": task,
                        "seed": seed,
                        "backend": "numpy",
                        "curve": rng.random(40).tolist(),
                        "score": test[-1],
                        "metric": metric,
                        "baseline": baseline,
                        "test_steps": steps,
                        "test_curve": test,
                    }
                )
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    return load_results(path)


def test_curves_grid_of_the_tables_test_metric_with_seed_bands_and_baselines(tmp_path):
    results = _curves(tmp_path)
    fig = plot_curves(results, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    visible = [ax for ax in fig.get_axes() if ax.get_visible()]
    assert len(visible) == len(_TASKS) + 1  # one panel per task and the legend
    panels, legend = visible[:-1], visible[-1]
    for ax, (task, metric, baseline, _) in zip(panels, _TASKS):
        assert ax.get_title() == task
        assert ax.get_ylabel().replace("\n", " ").replace("(recall steps)", "on recall steps") == metric
        assert ax.get_yscale() == ("log" if metric == "test MSE" else "linear")
        assert ax.get_xlabel() == "training step"
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and np.isclose(dashed[0].get_ydata()[0], baseline)
        low, high = ax.get_ylim()
        assert low <= baseline <= high
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2  # a seed band per cell
        curves = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        assert len(curves) == 2
        for line, band, cell in zip(curves, bands, ("lstm", "novolstm")):
            runs = np.array([r.test_curve for r in results if r.task == task and r.cell == cell])
            np.testing.assert_array_equal(line.get_xdata(), [0, 10, 20, 30, 40])
            np.testing.assert_allclose(line.get_ydata(), runs.mean(0))  # the mean over seeds
            # The band spans the lowest to the highest seed at every evaluation step.
            corners = band.get_paths()[0].vertices
            np.testing.assert_allclose(corners[:, 1].min(), runs.min(), rtol=1e-12)
            np.testing.assert_allclose(corners[:, 1].max(), runs.max(), rtol=1e-12)
            # The last point is the score the results table reports.
            table = np.mean([r.score for r in results if r.task == task and r.cell == cell])
            assert np.isclose(line.get_ydata()[-1], table)
    assert panels[1].get_ylim()[0] == 0  # cross-entropy from 0: a curve at chance looks flat
    assert panels[2].get_ylim() == (0, 1)
    labels = [t.get_text() for t in legend.get_legend().get_texts()]
    assert labels == ["lstm", "novolstm", "baseline (guessing)"]
    assert "Test metric" in fig._suptitle.get_text() and "3 seeds" in fig._suptitle.get_text()


def test_results_files_without_test_curves_load_as_one_point_at_the_end(tmp_path):
    old = {
        "cell": "lstm",
        "task": "adding T=5",
        "seed": 0,
        "backend": "numpy",
        "curve": [0.3, 0.2, 0.1],
        "score": 0.05,
        "metric": "test MSE",
        "baseline": 0.16,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps([old]))
    (result,) = load_results(path)
    assert (result.test_steps, result.test_curve, result.score) == ([3], [0.05], 0.05)
    fig = plot_curves([result], tmp_path / "curves.png")
    (line,) = [line for line in fig.get_axes()[0].get_lines() if line.get_linestyle() == "-"]
    assert list(line.get_xdata()) == [3] and list(line.get_ydata()) == [0.05]
    path.write_text(json.dumps([{**old, "surprise": 1}]))
    with pytest.raises(ValueError, match="expected a list of result rows"):
        load_results(path)
