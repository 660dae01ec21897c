"""Run the benchmarks: ratios side by side, GFLOP/s against a plain matmul, import and codegen
time, peak memory, compile time of the jitted candidates, per shape and dtype; written as
JSON, a markdown table and a plot."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from novolstm.bench import SHAPES, adapter, memory
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
        api.clear_caches()
        start = time.perf_counter()
        api.get_cell(backend, spec)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _first_call_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _first_calls(cands, quiet: bool) -> tuple[list, dict]:
    """Call every candidate once (the compile, for jitted ones): (runnable candidates,
    name -> {"forward": s, "forward+backward": s} first-call seconds). A candidate marked
    ``may_fail`` that raises is replaced by a skipped one naming the error."""
    runnable, first = [], {}
    for c in cands:
        if c.skipped:
            runnable.append(c)
            continue
        try:
            first[c.name] = {"forward": _first_call_seconds(c.forward)}
            if c.forward_backward:
                first[c.name]["forward+backward"] = _first_call_seconds(c.forward_backward)
        except Exception as exc:  # noqa: BLE001 - a may_fail candidate's error is the finding we report
            if not c.may_fail:
                raise
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
            if not quiet:
                print(f"novolstm bench: {c.name} skipped: {reason}", file=sys.stderr)
            runnable.append(dataclasses.replace(c, forward=None, forward_backward=None, skipped=reason))
            first.pop(c.name, None)
            continue
        runnable.append(c)
    return runnable, first


def skipped_dtypes(ad, backend: str, dtypes) -> dict[str, str]:
    """dtype -> why this backend does not run it (the adapter's DTYPE_NOTES, or a plain line)."""
    notes = getattr(ad, "DTYPE_NOTES", {})
    return {d: notes.get(d, f"{backend} has no {d} candidates") for d in dtypes if d not in getattr(ad, "DTYPES", ("float32",))}


def run(backends, shapes, repeats: int = 7, dtypes=("float32",), quiet: bool = False) -> dict:
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    no_rss = memory.unavailable_reason()
    results: dict = {"dtypes": list(dtypes), "repeats": repeats, "rows": [], "ratios": [], "skipped": [],
                     "peak_rss_note": no_rss or "peak RSS over the resident set before the call (Linux VmHWM)"}
    if no_rss and not quiet:
        print(f"novolstm bench: peak memory column left empty: {no_rss}", file=sys.stderr)
    for backend in backends:
        ad = adapter(backend)
        skipped = skipped_dtypes(ad, backend, dtypes)
        for dtype, reason in skipped.items():
            results["skipped"].append({"backend": backend, "dtype": dtype, "reason": reason})
            if not quiet:
                print(f"novolstm bench: {backend} {dtype} skipped: {reason}", file=sys.stderr)
        for dtype in (d for d in dtypes if d not in skipped):
            for shape_name in shapes:
                _measure(results, ad, backend, shape_name, dtype, repeats, quiet)
    return results


def _measure(results: dict, ad, backend: str, shape_name: str, dtype: str, repeats: int, quiet: bool) -> None:
    batch, steps, units = SHAPES[shape_name]
    bar = progress_bar(f"{backend} {shape_name} {dtype}", 5, quiet)
    bar(0)
    cands, first = _first_calls(list(ad.candidates(batch, steps, units, dtype)), quiet)
    live = [c for c in cands if not c.skipped]
    bar(1)
    forward = compare({c.name: c.forward for c in live} | {"plain matmul": ad.matmul(batch, steps, units, dtype)}, repeats)
    bar(2)
    both = compare({c.name: c.forward_backward for c in live if c.forward_backward}, repeats)
    bar(3)
    flops = 2 * batch * steps * (2 * units) * (4 * units)  # the LSTM forward's matmuls
    matmul_rate = flops / forward.pop("plain matmul")
    for c in cands:
        row = {"backend": backend, "shape": shape_name, "dtype": dtype, "candidate": c.name, "batch": batch,
               "steps": steps, "units": units, "forward_s": forward.get(c.name), "forward_backward_s": both.get(c.name)}
        if c.skipped:
            row["skipped"] = c.skipped
            results["rows"].append(row)
            continue
        if c.name == "lstm spec" or c.name.startswith("native"):
            row["gflops_fraction_of_matmul"] = (flops / forward[c.name]) / matmul_rate
        if c.jit:
            row["jit"] = c.jit
            row["compile_forward_s"] = max(0.0, first[c.name]["forward"] - forward[c.name])
            if c.name in both:
                row["compile_forward_backward_s"] = max(0.0, first[c.name]["forward+backward"] - both[c.name])
        if c.forward_backward:
            row["peak_rss_bytes_forward_backward"] = memory.peak_rss_bytes(c.forward_backward)
        if c.framework_peak_bytes:
            row["framework_peak_bytes_forward_backward"] = c.framework_peak_bytes()
        results["rows"].append(row)
    bar(4)
    names = {c.name for c in live}
    native = next((c.name for c in live if c.name.startswith("native")), None)
    for (num, den, mode), goal in getattr(ad, "TARGETS", TARGETS).items():
        den_name = native if den == "native" else den
        times = forward if mode == "forward" else both
        if den_name in names and num in names and num in times and den_name in times:
            results["ratios"].append({"backend": backend, "shape": shape_name, "dtype": dtype, "mode": mode, "numerator": num,
                                      "denominator": den_name, "ratio": times[num] / times[den_name], "target": goal})
    bar(5)


def _ms(seconds) -> str:
    return "" if seconds is None else f"{1e3 * seconds:.2f}"


def _mb(nbytes) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:.2f}"


def _compile(row) -> str:
    if "jit" not in row:
        return ""
    both = row.get("compile_forward_backward_s")
    return f"{row['compile_forward_s']:.2f} / {'' if both is None else f'{both:.2f}'} ({row['jit']})"


def markdown(results: dict, extras: dict) -> str:
    """Per backend, shape and dtype: times, GFLOP/s fraction, peak memory and compile time;
    then the ratios against their targets, what was skipped and why, and the extras."""
    dtypes = results.get("dtypes", [results.get("dtype", "float32")])
    lines = [f"Medians of {results['repeats']} interleaved repeats, {', '.join(dtypes)}, one run on one machine.", "",
             "| backend | shape | dtype | candidate | forward ms | forward+backward ms | GFLOP/s vs matmul "
             "| peak RSS MB (fwd+bwd) | framework peak MB | compile s (fwd / fwd+bwd) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        shape = f"{r['shape']} ({r['batch']}x{r['steps']}x{r['units']})"
        if r.get("skipped"):
            lines.append(f"| {r['backend']} | {shape} | {r.get('dtype', '')} | {r['candidate']} | skipped: {r['skipped'].replace('|', '/')} | | | | | |")
            continue
        both = _ms(r["forward_backward_s"]) or "n/a"
        frac = f"{r['gflops_fraction_of_matmul']:.2f}" if "gflops_fraction_of_matmul" in r else ""
        lines.append(f"| {r['backend']} | {shape} | {r.get('dtype', '')} | {r['candidate']} | {_ms(r['forward_s'])} | {both} | {frac} "
                     f"| {_mb(r.get('peak_rss_bytes_forward_backward'))} | {_mb(r.get('framework_peak_bytes_forward_backward'))} | {_compile(r)} |")
    lines += ["", "| backend | shape | dtype | mode | ratio | value | target | met |", "|---|---|---|---|---|---|---|---|"]
    for q in results["ratios"]:
        lines.append(f"| {q['backend']} | {q['shape']} | {q.get('dtype', '')} | {q['mode']} | {q['numerator']} / {q['denominator']} "
                     f"| {q['ratio']:.3f} | <= {q['target']} | {'yes' if q['ratio'] <= q['target'] else 'no'} |")
    notes = [f"{s['backend']} {s['dtype']}: {s['reason']}" for s in results.get("skipped", [])]
    if "peak_rss_note" in results and not results["peak_rss_note"].startswith("peak RSS over"):
        notes.append(f"peak RSS: {results['peak_rss_note']}")
    if notes:
        lines += ["", "Not measured: " + "; ".join(notes) + "."]
    lines += ["", "| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in extras.items()]
    return "\n".join(lines) + "\n"


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = results["ratios"]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(ratios) + 2), 3.6))
    labels = [f"{q['backend']} {q['shape']} {q.get('dtype', '')}\n{q['numerator']} / {q['denominator'].replace('native: ', '')}\n{q['mode']}" for q in ratios]
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
