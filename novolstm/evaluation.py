"""Train cells on the same tasks with the same budget over several seeds, and compare.

The NovoLSTM design document advises regular comparisons with the standard LSTM;
this module makes them a command (``novolstm compare``). Every cell trains through
its backend's generated code: the backend-neutral hook ``vjp_numpy`` gives outputs
and gradients (the NumPy and torch backends' generated backward passes, JAX's autodiff,
or on Keras the autodiff of the backend Keras runs on), a linear readout and the loss
live in NumPy, and Adam updates the canonical parameters. So the same loop serves every
backend (numpy, torch, jax, keras; not onnx, an inference runtime) and every spec.

Tasks:
    adding: the adding problem (Hochreiter & Schmidhuber 1997): two channels, random
        values and a marker on two steps; regress the sum of the two marked values.
        Predicting the mean scores MSE 0.167.
    copy: the copy-memory task: remember 5 symbols of 8, wait through blanks, then
        recall them after a delimiter. Guessing scores cross-entropy log(8) = 2.08
        on the recall steps.
    digits: scikit-learn's 8x8 handwritten digits, read row by row (8 steps of 8
        pixels); classify into 10 classes. Ships with scikit-learn: no download.

Examples:
    >>> results = compare(["lstm"], ["adding"], seeds=[0], steps=3, length=5, units=4, quiet=True)
    >>> results[0].cell, results[0].task, len(results[0].curve), results[0].test_steps
    ('lstm', 'adding T=5', 3, [0, 1, 2, 3])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .api import init_params, load_generated
from .progress import progress_bar
from .spec_loader import load_spec


@dataclass(frozen=True)
class Task:
    name: str
    inputs: int
    outputs: int
    kind: str  # "regression" (last step), "sequence" (classify every recall step) or "classification" (last step)
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    baseline: float
    metric: str


def adding_task(length: int, rng, train: int = 2000, test: int = 500) -> Task:
    def make(n):
        x = np.zeros((n, length, 2))
        x[:, :, 0] = rng.random((n, length))
        first = rng.integers(0, max(1, length // 2), n)
        second = rng.integers(length // 2, length, n)
        x[np.arange(n), first, 1] = 1.0
        x[np.arange(n), second, 1] = 1.0
        return x, (x[:, :, 0] * x[:, :, 1]).sum(axis=1, keepdims=True)

    (xa, ya), (xb, yb) = make(train), make(test)
    return Task("adding", 2, 1, "regression", xa, ya, xb, yb, float(np.var(yb)), "test MSE")


def copy_task(length: int, rng, symbols: int = 8, remember: int = 5, train: int = 2000, test: int = 500) -> Task:
    blank, delimiter = symbols, symbols + 1
    total = remember + length + remember + 1

    def make(n):
        seq = rng.integers(0, symbols, (n, remember))
        tokens = np.full((n, total), blank)
        tokens[:, :remember] = seq
        tokens[:, remember + length] = delimiter
        target = np.full((n, total), -1)  # -1: no loss on this step
        target[:, -remember:] = seq
        return np.eye(symbols + 2)[tokens], target

    (xa, ya), (xb, yb) = make(train), make(test)
    return Task(
        "copy",
        symbols + 2,
        symbols,
        "sequence",
        xa,
        ya,
        xb,
        yb,
        float(np.log(symbols)),
        "test cross-entropy on recall steps",
    )


def digits_task(rng) -> Task:
    from sklearn.datasets import load_digits  # ships its data: no download at run time

    data = load_digits()
    x = data.images / 16.0
    order = rng.permutation(len(x))
    x, y = x[order], data.target[order]
    cut = int(0.8 * len(x))
    return Task("digits", 8, 10, "classification", x[:cut], y[:cut], x[cut:], y[cut:], 0.1, "test accuracy")


TASKS: dict[str, Callable[[int, np.random.Generator], Task]] = {
    "adding": adding_task,
    "copy": copy_task,
    "digits": lambda length, rng: digits_task(rng),
}


@dataclass
class Result:
    cell: str
    task: str
    seed: int
    backend: str
    curve: list  # training loss per step
    score: float  # the task's metric on its test set at the end of training
    metric: str
    baseline: float
    test_steps: list = field(default_factory=list)  # the steps after which the test set was scored (0: untrained)
    test_curve: list = field(default_factory=list)  # the task's metric on its test set at those steps


def load_results(path) -> list[Result]:
    """Read a results.json written by ``novolstm compare``, older files included.

    Files written before the test set was scored during training have no ``test_steps`` and
    ``test_curve``; their one known test score, at the end of training, becomes a curve of one point.

    Args:
        path: the results.json file.

    Returns:
        One ``Result`` per row.

    Raises:
        ValueError: the file is not a list of result rows.
    """
    rows = json.loads(Path(path).read_text())
    known = {f.name for f in fields(Result)}
    required = known - {"test_steps", "test_curve"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and required <= r.keys() <= known for r in rows):
        raise ValueError(f"{path}: expected a list of result rows with the fields {sorted(known)}")
    results = [Result(**r) for r in rows]
    for r in results:
        if not r.test_steps:
            r.test_steps, r.test_curve = [len(r.curve)], [r.score]
    return results


class _Adam:
    def __init__(self, params, lr):
        self.lr, self.t = lr, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params, grads):
        self.t += 1
        for k, g in grads.items():
            g = np.clip(g, -1.0, 1.0)  # the long tasks have exploding gradients early on
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            m_hat = self.m[k] / (1 - 0.9**self.t)
            v_hat = self.v[k] / (1 - 0.999**self.t)
            params[k] = params[k] - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _head(task: Task, outputs, readout, y):
    """Loss, its gradient with respect to the cell outputs and the readout, and predictions."""
    W, b = readout["readout_W"], readout["readout_b"]
    if task.kind == "sequence":
        logits = outputs @ W + b
        valid = y >= 0
        z = logits - logits.max(-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        count = max(1, valid.sum())
        loss = -np.log(p[valid, y[valid]] + 1e-12).sum() / count
        g_logits = p.copy()
        g_logits[valid, y[valid]] -= 1
        g_logits *= valid[..., None] / count
        g_out = g_logits @ W.T
        grads = {
            "readout_W": outputs.reshape(-1, outputs.shape[-1]).T @ g_logits.reshape(-1, W.shape[1]),
            "readout_b": g_logits.reshape(-1, W.shape[1]).sum(0),
        }
        return loss, g_out, grads, logits
    last = outputs[:, -1]
    pred = last @ W + b
    g_out = np.zeros_like(outputs)
    if task.kind == "regression":
        err = pred - y
        loss = float((err**2).mean())
        g_pred = 2 * err / err.size
    else:
        z = pred - pred.max(-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        g_pred = p.copy()
        g_pred[np.arange(len(y)), y] -= 1
        g_pred /= len(y)
    g_out[:, -1] = g_pred @ W.T
    return loss, g_out, {"readout_W": last.T @ g_pred, "readout_b": g_pred.sum(0)}, pred


def _score(task: Task, prediction, y) -> float:
    if task.kind == "regression":
        return float(((prediction - y) ** 2).mean())
    if task.kind == "classification":
        return float((prediction.argmax(-1) == y).mean())
    valid = y >= 0
    z = prediction - prediction.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[valid, y[valid]].mean())


def evaluation_steps(steps: int, evaluations: int = 10) -> list[int]:
    """The steps after which training scores the test set: evenly spaced from 0 (untrained) to ``steps``.

    Examples:
        >>> evaluation_steps(300)
        [0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 300]
        >>> evaluation_steps(3)
        [0, 1, 2, 3]

    Raises:
        ValueError: fewer than one evaluation.
    """
    if evaluations < 1:
        raise ValueError(f"evaluations must be at least 1 (the end of training), got {evaluations}")
    return sorted({round(steps * k / evaluations) for k in range(evaluations + 1)})


def train(
    cell,
    task: Task,
    seed: int = 0,
    backend: str = "numpy",
    steps: int = 300,
    units: int = 32,
    batch: int = 32,
    lr: float = 1e-2,
    progress=None,
    evaluations: int = 10,
) -> Result:
    """Train ``cell`` with a linear readout on ``task`` (Adam, gradients clipped to [-1, 1]).

    Args:
        cell: a built-in name, a path to a spec file, or a loaded spec.
        task: the task (``TASKS[name](length, rng)``).
        seed: the seed of the initial weights and the batches.
        backend: the backend whose generated code runs forward and backward (numpy, torch,
            jax or keras).
        steps: training steps.
        units: the state size.
        batch: examples per step.
        lr: Adam's learning rate.
        progress: called as ``progress(step, loss)`` after every step, if given.
        evaluations: how many times (besides before the first step) the test set is scored,
            evenly spaced, the last after the final step (``evaluation_steps``).

    Returns:
        A ``Result``: the training loss per step, and the task's metric on its test set at
        each evaluation step and at the end.

    Raises:
        ValueError: a backend without the gradient hook (onnx).
    """
    spec = load_spec(cell)
    module = load_generated(spec, backend)
    if not hasattr(module, "vjp_numpy"):
        raise ValueError(
            f"the {backend} backend has no backend-neutral gradient hook (vjp_numpy) to train with; "
            "compare trains on numpy, torch, jax or keras"
        )
    rng = np.random.default_rng(seed)
    params = init_params(spec, task.inputs, units, seed=seed)
    params["readout_W"] = rng.normal(scale=1 / np.sqrt(units), size=(units, task.outputs))
    params["readout_b"] = np.zeros(task.outputs)
    adam = _Adam(params, lr)
    cell_names = spec.param_names

    def test_score() -> float:
        outputs, _ = module.run_numpy({k: params[k] for k in cell_names}, task.x_test)
        _, _, _, prediction = _head(task, np.asarray(outputs), params, task.y_test)
        return _score(task, prediction, task.y_test)

    test_steps = evaluation_steps(steps, evaluations)
    test_curve = [test_score()] if test_steps[0] == 0 else []
    curve = []
    for step in range(steps):
        idx = rng.integers(0, len(task.x_train), batch)
        x, y = task.x_train[idx], task.y_train[idx]
        outputs, _, vjp = module.vjp_numpy({k: params[k] for k in cell_names}, x)
        loss, g_out, grads, _ = _head(task, np.asarray(outputs), params, y)
        _, _, g_cell = vjp(g_out, None)
        grads.update({k: np.asarray(v) for k, v in g_cell.items()})
        adam.step(params, grads)
        curve.append(loss)
        if step + 1 in test_steps:
            test_curve.append(test_score())
        if progress:
            progress(step + 1, loss)
    return Result(
        spec.name, task.name, seed, backend, curve, test_curve[-1], task.metric, task.baseline, test_steps, test_curve
    )


def compare(
    cells,
    tasks,
    seeds=(0, 1, 2),
    backend: str = "numpy",
    steps: int = 300,
    length=30,
    units: int = 32,
    quiet: bool = False,
) -> list[Result]:
    """Every cell on every task (at every length) for every seed, with the same data, budget and optimizer.

    Args:
        cells: spec names or paths.
        tasks: names in ``TASKS`` (adding, copy, digits).
        seeds: one run per seed; a seed fixes the data and the initial weights.
        backend: the backend that trains.
        steps: training steps per run.
        length: the sequence length of adding and copy, or a list of them (digits has 8 rows).
        units: the state size of every cell.
        quiet: no progress bar on standard error.

    Returns:
        One ``Result`` per task, length, seed and cell.

    Raises:
        ValueError: an unknown task.
    """
    lengths = [length] if isinstance(length, int) else list(length)
    results = []
    for task_name in tasks:
        if task_name not in TASKS:
            raise ValueError(f"unknown task {task_name!r}; expected one of {sorted(TASKS)}")
        for n in lengths if task_name != "digits" else [8]:
            for seed in seeds:
                task = TASKS[task_name](n, np.random.default_rng([seed, 99]))
                name = task.name if task_name == "digits" else f"{task.name} T={n}"
                task = Task(name, *[getattr(task, f) for f in Task.__dataclass_fields__ if f != "name"])
                for cell in cells:
                    label = f"{name} seed {seed} {load_spec(cell).name}"
                    bar = progress_bar(label, steps, quiet)
                    results.append(
                        train(
                            cell,
                            task,
                            seed,
                            backend,
                            steps,
                            units,
                            progress=lambda k, loss, bar=bar: bar(k, f"loss {loss:.4f}"),
                        )
                    )
    return results


def results_table(results: list[Result]) -> str:
    """Markdown: mean and spread of each cell's score per task, with the task's baseline."""
    lines = ["| task | metric | baseline | cell | score (mean ± std over seeds) | seeds |", "|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r.task, r.cell) for r in results)
    for task, cell in keys:
        rs = [r for r in results if r.task == task and r.cell == cell]
        scores = np.array([r.score for r in rs])
        lines.append(
            f"| {task} | {rs[0].metric} | {rs[0].baseline:.3f} | {cell} | {scores.mean():.4f} ± {scores.std():.4f} | {len(rs)} |"
        )
    return "\n".join(lines)


def plot_curves(results: list[Result], path, columns: int = 2):
    """Learning curves as a grid: one panel per task, and a legend panel.

    Each panel shows the task's test metric (the one the results table reports) at the evaluation
    steps of training: per cell the mean over seeds with a band from the lowest to the highest seed,
    and the table's baseline (guessing) as a dashed line. MSE is drawn on a log axis; cross-entropy
    and accuracy on linear axes from 0, so a curve sitting at chance looks flat.

    Args:
        results: the runs (``compare`` or ``load_results``).
        path: the image file to write.
        columns: panels per row.

    Returns:
        The matplotlib Figure (already written to ``path``).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    tasks = list(dict.fromkeys(r.task for r in results))
    cells = list(dict.fromkeys(r.cell for r in results))
    colors = dict(
        zip(
            cells,
            ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:grey"] * 4,
        )
    )
    columns = min(columns, len(tasks) + 1)
    rows = -(-(len(tasks) + 1) // columns)
    # About the docs' page width at 100 dpi, so the text keeps its size there.
    fig = Figure(figsize=(3.6 * columns, 2.6 * rows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        runs = [r for r in results if r.task == task]
        highest = runs[0].baseline
        for cell in (c for c in cells if any(r.cell == c for r in runs)):
            mine = [r for r in runs if r.cell == cell]
            steps = mine[0].test_steps
            if any(r.test_steps != steps for r in mine):
                raise ValueError(f"{task}, {cell}: the seeds were scored at different steps; cannot band them")
            scores = np.array([r.test_curve for r in mine], dtype=float)
            ax.plot(steps, scores.mean(0), color=colors[cell], linewidth=1.3, marker="o", markersize=2.5)
            if len(mine) > 1:
                ax.fill_between(steps, scores.min(0), scores.max(0), color=colors[cell], alpha=0.2, linewidth=0)
            highest = max(highest, float(scores.max()))
        ax.axhline(runs[0].baseline, color="black", linestyle="--", linewidth=1)
        if runs[0].metric.endswith("MSE"):
            ax.set_yscale("log")
        elif "accuracy" in runs[0].metric:
            ax.set_ylim(0, 1)
        else:
            ax.set_ylim(0, 1.1 * highest)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("training step", fontsize=9)
        ax.set_ylabel(runs[0].metric.replace(" on recall steps", "\n(recall steps)"), fontsize=9)
        ax.tick_params(labelsize=8)
    legend = axes.flat[len(tasks)]
    legend.axis("off")
    handles = [Line2D([], [], color=colors[c], linewidth=2, label=c) for c in cells]
    handles.append(Line2D([], [], color="black", linestyle="--", label="baseline (guessing)"))
    legend.legend(handles=handles, loc="center", fontsize=9, frameon=False)
    for ax in axes.flat[len(tasks) + 1 :]:
        ax.set_visible(False)
    seeds = len({r.seed for r in results})
    fig.suptitle(
        f"Test metric of the results table during training, mean over {seeds} seed{'s' if seeds > 1 else ''}"
        + (" (band: lowest to highest seed)" if seeds > 1 else ""),
        fontsize=10,
    )
    fig.savefig(path)
    return fig
