"""The evaluation harness: tasks are well-formed, training lowers the loss, the CLI writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from novolstm.cli import main
from novolstm.evaluation import TASKS, compare, evaluation_steps, load_results, results_table, train


def test_tasks_are_well_formed():
    rng = np.random.default_rng(0)
    adding = TASKS["adding"](12, rng)
    assert adding.x_train.shape[1:] == (12, 2) and (adding.x_train[:, :, 1].sum(1) == 2).all()
    np.testing.assert_allclose(adding.y_train[:, 0], (adding.x_train[:, :, 0] * adding.x_train[:, :, 1]).sum(1))
    copy = TASKS["copy"](10, rng)
    recall = copy.y_train[:, -5:]
    np.testing.assert_array_equal(recall, copy.x_train[:, :5].argmax(-1))
    digits = TASKS["digits"](0, rng)
    assert digits.x_train.shape[1:] == (8, 8) and set(np.unique(digits.y_train)) == set(range(10))


def test_training_beats_the_baseline_on_digits():
    task = TASKS["digits"](0, np.random.default_rng(0))
    result = train("novolstm", task, seed=0, steps=60, units=16)
    assert result.curve[-1] < result.curve[0]
    assert result.score > 3 * result.baseline  # accuracy well above chance


def test_the_test_set_is_scored_during_training_with_the_tables_metric():
    """Each evaluation point is the score a run stopped at that step reports."""
    task = TASKS["digits"](0, np.random.default_rng(0))
    result = train("gru", task, seed=1, steps=20, units=8)
    assert result.test_steps == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20] == evaluation_steps(20)
    assert len(result.test_curve) == len(result.test_steps) and result.test_curve[-1] == result.score
    for step in (0, 8):  # untrained, and part-way (the same seed draws the same weights and batches)
        stopped = train("gru", task, seed=1, steps=step, units=8)
        assert stopped.score == result.test_curve[result.test_steps.index(step)]
    assert result.test_curve[-1] > result.test_curve[0]  # it learns
    assert evaluation_steps(3) == [0, 1, 2, 3] and evaluation_steps(300, 3) == [0, 100, 200, 300]
    with pytest.raises(ValueError, match="at least 1"):
        evaluation_steps(10, 0)


def test_compare_cli_writes_table_json_and_plot(tmp_path, capsys):
    code = main(
        [
            "compare",
            "--cells",
            "lstm",
            "gru",
            "--tasks",
            "adding",
            "--lengths",
            "5",
            "--seeds",
            "0",
            "--steps",
            "4",
            "--units",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["cell"] for r in rows} == {"lstm", "gru"} and all(len(r["curve"]) == 4 for r in rows)
    assert all(r["test_steps"] == [0, 1, 2, 3, 4] and r["test_curve"][-1] == r["score"] for r in rows)
    assert [r.test_curve for r in load_results(tmp_path / "results.json")] == [r["test_curve"] for r in rows]
    assert "| adding T=5 | test MSE |" in (tmp_path / "results.md").read_text()


def test_results_table_reports_mean_and_spread():
    results = compare(["lstm"], ["adding"], seeds=[0, 1], steps=2, length=5, units=4, quiet=True)
    assert "± " in results_table(results) and "| 2 |" in results_table(results)
