"""Run the benchmarks: ratios side by side, GFLOP/s against a plain matmul, import and codegen
time, peak memory; written as JSON, a markdown table and a plot."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from novolstm.bench import SHAPES, adapter
from novolstm.bench.timing import compare
from novolstm.progress import progress_bar

#: (numerator, denominator, mode) -> target ratio; "native" is the adapter's native candidate.
#: An adapter may set its own TARGETS (NumPy compares its forward with the textbook cell).
TARGETS = {
    ("lstm spec", "native", "forward"): 1.0,
    ("lstm spec", "native", "forward+backward"): 1.0,
    ("novolstm spec", "lstm spec", "forward"): 1.3,
    ("novolstm spec", "lstm spec", "forward+backward"): 1.3,
    ("novolstm_reference spec", "lstm spec", "forward+backward"): 1.3,
}


def import_seconds(repeats: int = 3) -> float:
    """Median wall time of ``import novolstm`` in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import novolstm; print(time.perf_counter() - t)"
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats)
    )


def codegen_seconds(backend: str = "numpy", spec: str = "novolstm", repeats: int = 5) -> float:
    """Median time of generating and compiling a cell from scratch (caches cleared)."""
    from novolstm import api

    samples = []
    for _ in range(repeats):
        api._generate.cache_clear()
        api._load.cache_clear()
        start = time.perf_counter()
        api.get_cell(backend, spec)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def peak_python_bytes(fn) -> int:
    """Peak memory NumPy and Python allocate during ``fn`` (tracemalloc sees NumPy's buffers)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(backends, shapes, repeats: int = 7, dtype: str = "float32", quiet: bool = False) -> dict:
    results: dict = {"dtype": dtype, "repeats": repeats, "rows": [], "ratios": []}
    for backend in backends:
        ad = adapter(backend)
        for shape_name in shapes:
            batch, steps, units = SHAPES[shape_name]
            cands = list(ad.candidates(batch, steps, units, dtype))
            bar = progress_bar(f"{backend} {shape_name}", 3, quiet)
            bar(0)
            forward = compare({c.name: c.forward for c in cands} | {"plain matmul": ad.matmul(batch, steps, units, dtype)}, repeats)
            bar(1)
            both = compare({c.name: c.forward_backward for c in cands if c.forward_backward}, repeats)
            bar(2)
            flops = 2 * batch * steps * (2 * units) * (4 * units)  # the LSTM forward's matmuls
            matmul_rate = flops / forward.pop("plain matmul")
            for c in cands:
                row = {"backend": backend, "shape": shape_name, "candidate": c.name, "forward_s": forward[c.name],
                       "forward_backward_s": both.get(c.name), "batch": batch, "steps": steps, "units": units}
                if c.name == "lstm spec":
                    row["gflops_fraction_of_matmul"] = (flops / forward[c.name]) / matmul_rate
                if c.forward_backward and getattr(ad, "TRACEMALLOC_SEES_BUFFERS", False):
                    row["peak_bytes_forward_backward"] = peak_python_bytes(c.forward_backward)
                results["rows"].append(row)
            bar(3)
            native = next((c.name for c in cands if c.name.startswith("native")), None)
            for (num, den, mode), goal in getattr(ad, "TARGETS", TARGETS).items():
                den_name = native if den == "native" else den
                times = forward if mode == "forward" else both
                if den_name and num in times and den_name in times:
                    results["ratios"].append({"backend": backend, "shape": shape_name, "mode": mode, "numerator": num,
                                              "denominator": den_name, "ratio": times[num] / times[den_name], "target": goal})
    return results


def markdown(results: dict, extras: dict) -> str:
    lines = [f"Medians of {results['repeats']} interleaved repeats, {results['dtype']}, one run on one machine.", "",
             "| backend | shape | candidate | forward ms | forward+backward ms | GFLOP/s vs matmul |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        both = f"{1e3 * r['forward_backward_s']:.2f}" if r["forward_backward_s"] else "n/a"
        frac = f"{r['gflops_fraction_of_matmul']:.2f}" if "gflops_fraction_of_matmul" in r else ""
        lines.append(f"| {r['backend']} | {r['shape']} ({r['batch']}x{r['steps']}x{r['units']}) | {r['candidate']} | {1e3 * r['forward_s']:.2f} | {both} | {frac} |")
    lines += ["", "| backend | shape | mode | ratio | value | target | met |", "|---|---|---|---|---|---|---|"]
    for q in results["ratios"]:
        lines.append(f"| {q['backend']} | {q['shape']} | {q['mode']} | {q['numerator']} / {q['denominator']} | {q['ratio']:.3f} | <= {q['target']} | {'yes' if q['ratio'] <= q['target'] else 'no'} |")
    lines += ["", "| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in extras.items()]
    return "\n".join(lines) + "\n"


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = results["ratios"]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(ratios) + 2), 3.6))
    labels = [f"{q['backend']} {q['shape']}\n{q['numerator']} / {q['denominator'].replace('native: ', '')}\n{q['mode']}" for q in ratios]
    ax.bar(range(len(ratios)), [q["ratio"] for q in ratios], color=["tab:green" if q["ratio"] <= q["target"] else "tab:red" for q in ratios])
    for k, q in enumerate(ratios):
        ax.hlines(q["target"], k - 0.4, k + 0.4, colors="black", linestyles="dashed")
    ax.set_xticks(range(len(ratios)), labels, fontsize=6)
    ax.set_ylabel("time ratio (dashed: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, extras: dict, out) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**results, "extras": extras}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, extras))
    try:
        plot(results, out / "ratios.png")
    except ImportError:
        pass
