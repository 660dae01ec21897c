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
    """Median time of generating a cell's module from its spec and compiling it to bytecode.

    Nothing is cached or registered: novolstm.api's caches, and the named classes they hold
    (which Keras' serialization registry and pickle look up), stay as they are.
    """
    from novolstm.backends import emitter
    from novolstm.codegen import plan
    from novolstm.spec_loader import load_spec

    loaded = load_spec(spec)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        compile(emitter(backend).generate(plan(loaded)), f"<novolstm {backend} {spec}>", "exec")
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
    return {
        d: notes.get(d, f"{backend} has no {d} candidates")
        for d in dtypes
        if d not in getattr(ad, "DTYPES", ("float32",))
    }


def run(backends, shapes, repeats: int = 7, dtypes=("float32",), quiet: bool = False) -> dict:
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    no_rss = memory.unavailable_reason()
    results: dict = {
        "dtypes": list(dtypes),
        "repeats": repeats,
        "rows": [],
        "ratios": [],
        "skipped": [],
        "peak_rss_note": no_rss or "peak RSS over the resident set before the call (Linux VmHWM)",
    }
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
    forward = compare(
        {c.name: c.forward for c in live} | {"plain matmul": ad.matmul(batch, steps, units, dtype)}, repeats
    )
    bar(2)
    both = compare({c.name: c.forward_backward for c in live if c.forward_backward}, repeats)
    bar(3)
    flops = 2 * batch * steps * (2 * units) * (4 * units)  # the LSTM forward's matmuls
    matmul_rate = flops / forward.pop("plain matmul")
    for c in cands:
        row = {
            "backend": backend,
            "shape": shape_name,
            "dtype": dtype,
            "candidate": c.name,
            "cell": cell_of(c.name),
            "path": path_of(c),
            "batch": batch,
            "steps": steps,
            "units": units,
            "forward_s": forward.get(c.name),
            "forward_backward_s": both.get(c.name),
        }
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
            results["ratios"].append(
                {
                    "backend": backend,
                    "shape": shape_name,
                    "dtype": dtype,
                    "mode": mode,
                    "numerator": num,
                    "denominator": den_name,
                    "ratio": times[num] / times[den_name],
                    "target": goal,
                }
            )
    bar(5)


def cell_of(name: str) -> str:
    """The cell a candidate runs: ``"novolstm"`` for ``"novolstm spec, generated loop"``; a
    native or context candidate is its own."""
    return name.split(" spec", 1)[0] if " spec" in name else name


def path_of(c) -> str:
    """How a candidate runs: what its adapter says (``path``), else how it is compiled (``jit``:
    "C++ kernel", "torch.compile", "jax.jit", "tf.function"), else the generated loop; a native
    or context candidate says so first.

    Examples:
        >>> from novolstm.bench import Candidate
        >>> path_of(Candidate("lstm spec", None, None)), path_of(Candidate("gru spec", None, None, jit="C++ kernel"))
        ('generated loop', 'C++ kernel')
        >>> path_of(Candidate("native: flax OptimizedLSTMCell (nn.RNN)", None, None, jit="jax.jit"))
        'native, jax.jit'
    """
    own = c.path or c.jit
    for kind in ("native", "context"):
        if c.name.startswith(kind):
            return f"{kind}, {own}" if own else kind
    return own or "generated loop"


def paths_table(results: dict) -> list[str]:
    """Markdown lines: each cell's paths side by side (its generated loop, its compiled or fused
    paths, and the native kernels), each time also as a multiple of the cell's generated loop
    and of its native baseline (the adapter's target denominator, else the first native), with
    the compile time of compiled paths."""
    lines = [
        "| backend | shape | dtype | cell | path | forward ms | x loop | x native "
        "| forward+backward ms | x loop | x native | compile s (fwd / fwd+bwd) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}  # (backend, shape, dtype) -> rows
    for r in results["rows"]:
        if not r.get("skipped") and "path" in r:
            groups.setdefault((r["backend"], r["shape"], r.get("dtype", "")), []).append(r)
    # a cell's own native: its targets' denominator (gru spec -> native: torch.nn.GRU)
    own = {q["numerator"]: q["denominator"] for q in results["ratios"] if q["denominator"].startswith("native")}

    def line(r, cell, loop=None, native=None) -> str:
        times = "".join(
            f"| {_ms(r[key])} | {_times(r[key], loop and loop[key])} | {_times(r[key], native and native[key])} "
            for key in ("forward_s", "forward_backward_s")
        )
        return f"| {r['backend']} | {r['shape']} | {r.get('dtype', '')} | {cell} | {r['path']} {times}| {_compile(r)} |"

    for rows in groups.values():
        natives = [r for r in rows if r["candidate"].startswith(("native", "context"))]
        for cell in dict.fromkeys(r["cell"] for r in rows if r not in natives):
            loop = next((r for r in rows if r["cell"] == cell and r["path"] == "generated loop"), None)
            name = own.get(f"{cell} spec", natives[0]["candidate"] if natives else None)
            native = next((r for r in natives if r["candidate"] == name), None)
            lines.extend(line(r, cell, loop, native) for r in rows if r["cell"] == cell)
        lines.extend(line(r, r["candidate"]) for r in natives)
    return lines


def _times(seconds, base) -> str:
    return "" if not seconds or not base else f"{seconds / base:.2f}"


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
    lines = [
        f"Medians of {results['repeats']} interleaved repeats, {', '.join(dtypes)}, one run on one machine.",
        "",
        "| backend | shape | dtype | candidate | forward ms | forward+backward ms | GFLOP/s vs matmul "
        "| peak RSS MB (fwd+bwd) | framework peak MB | compile s (fwd / fwd+bwd) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        shape = f"{r['shape']} ({r['batch']}x{r['steps']}x{r['units']})"
        if r.get("skipped"):
            lines.append(
                f"| {r['backend']} | {shape} | {r.get('dtype', '')} | {r['candidate']} | skipped: {r['skipped'].replace('|', '/')} | | | | | |"
            )
            continue
        both = _ms(r["forward_backward_s"]) or "n/a"
        frac = f"{r['gflops_fraction_of_matmul']:.2f}" if "gflops_fraction_of_matmul" in r else ""
        lines.append(
            f"| {r['backend']} | {shape} | {r.get('dtype', '')} | {r['candidate']} | {_ms(r['forward_s'])} | {both} | {frac} "
            f"| {_mb(r.get('peak_rss_bytes_forward_backward'))} | {_mb(r.get('framework_peak_bytes_forward_backward'))} | {_compile(r)} |"
        )
    if any("path" in r for r in results["rows"]):
        lines += [
            "",
            "Each cell's paths side by side: x loop and x native are times over its generated loop's and its native's.",
        ]
        lines += ["", *paths_table(results)]
    lines += [
        "",
        "| backend | shape | dtype | mode | ratio | value | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in results["ratios"]:
        lines.append(
            f"| {q['backend']} | {q['shape']} | {q.get('dtype', '')} | {q['mode']} | {q['numerator']} / {q['denominator']} "
            f"| {q['ratio']:.3f} | <= {q['target']} | {'yes' if q['ratio'] <= q['target'] else 'no'} |"
        )
    notes = [f"{s['backend']} {s['dtype']}: {s['reason']}" for s in results.get("skipped", [])]
    if "peak_rss_note" in results and not results["peak_rss_note"].startswith("peak RSS over"):
        notes.append(f"peak RSS: {results['peak_rss_note']}")
    if notes:
        lines += ["", "Not measured: " + "; ".join(notes) + "."]
    lines += ["", "| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in extras.items()]
    return "\n".join(lines) + "\n"


def this_machine() -> str:
    """A short description of the machine this process runs on, for plot titles."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{os.cpu_count()}-core {model}"


def _short(name: str) -> str:
    return name.replace("native: ", "").replace(" spec", "")


def _pair_label(numerator: str, denominator: str) -> str:
    label = f"{_short(numerator)} / {_short(denominator)}"
    return label if len(label) <= 26 else f"{_short(numerator)}\n/ {_short(denominator)}"


def plot(results: dict, path, machine: str | None = None):
    """Ratios as horizontal bars: one facet per mode (columns) and dtype (rows), a log axis centred
    on 1, the target marked on every row, a title naming the backend, shape and machine.

    Returns the matplotlib Figure (already written to ``path``).
    """
    import math

    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    ratios = results["ratios"]
    if not ratios:  # every candidate skipped: say so rather than draw empty axes
        fig = Figure(figsize=(7.2, 1.2), dpi=100)
        fig.text(0.5, 0.5, "no ratios measured (see the table for why)", ha="center", va="center", fontsize=10)
        fig.savefig(path)
        return fig
    modes = [m for m in ("forward", "forward+backward") if any(q["mode"] == m for q in ratios)]
    dtypes = list(dict.fromkeys(q.get("dtype", "float32") for q in ratios))
    # One row per numerator / denominator pair, the same rows in every facet, so a pair reads across.
    pairs = list(dict.fromkeys((q["numerator"], q["denominator"]) for q in ratios))
    # Symmetric in log space around 1, wide enough for every ratio and target.
    reach = max([abs(math.log10(v)) for q in ratios for v in (q["ratio"], q["target"]) if v > 0] + [math.log10(1.5)])
    low, high = 10 ** (-1.6 * reach), 10 ** (1.6 * reach)
    powers = [k for k in range(-12, 13) if low <= 2.0**k <= high]
    every = -(-len(powers) // 5)  # at most about five labels, 1 always among them
    ticks = [2.0**k for k in powers if k % every == 0]
    if len(ticks) < 3:  # a narrow range: finer ticks than the powers of two
        ticks = [t for t in (0.5, 0.67, 0.8, 1, 1.25, 1.5, 2) if low <= t <= high]
    # About the docs' page width at 100 dpi, so the text keeps its size there.
    fig = Figure(figsize=(7.2, 0.9 + len(dtypes) * (0.6 + 0.38 * len(pairs))), dpi=100, layout="constrained")
    axes = fig.subplots(len(dtypes), max(1, len(modes)), squeeze=False, sharex=True, sharey=True)
    ys = list(range(len(pairs)))[::-1]
    for (row, dtype), (col, mode) in ((r, c) for r in enumerate(dtypes) for c in enumerate(modes)):
        ax = axes[row][col]
        for y, pair in zip(ys, pairs):
            q = next(
                (
                    q
                    for q in ratios
                    if (q["numerator"], q["denominator"]) == pair
                    and q["mode"] == mode
                    and q.get("dtype", "float32") == dtype
                ),
                None,
            )
            if q is None:
                ax.text(1, y, "  not reported", va="center", ha="left", fontsize=8, color="grey")
                continue
            ax.barh(
                y, q["ratio"] - 1, left=1, height=0.6, color="tab:green" if q["ratio"] <= q["target"] else "tab:red"
            )
            ax.plot([q["target"]] * 2, [y - 0.42, y + 0.42], color="black", linewidth=2)
            # The value sits at the bar's end, beyond the target tick where that is near, so neither hides it.
            right = q["ratio"] >= 1
            near = abs(math.log(q["target"] / q["ratio"])) < math.log(1.25)
            at = (max if right else min)(q["ratio"], q["target"]) if near else q["ratio"]
            ax.annotate(
                f"{q['ratio']:.2f}",
                (at, y),
                xytext=(5 if right else -5, 0),
                textcoords="offset points",
                ha="left" if right else "right",
                va="center",
                fontsize=9,
            )
        ax.axvline(1, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, [f"{t:g}" if t >= 0.1 else f"1/{round(1 / t)}" for t in ticks], fontsize=8)
        ax.set_yticks(ys, [_pair_label(n, d) for n, d in pairs], fontsize=9)
        ax.set_ylim(-0.6, len(pairs) - 0.4)
        ax.set_title(f"{mode}, {dtype}", fontsize=10)
    first = ratios[0] if ratios else {"backend": "?", "shape": "?"}
    dims = next(
        (
            f" ({r['batch']}x{r['steps']}x{r['units']})"
            for r in results.get("rows", [])
            if r.get("shape") == first["shape"]
        ),
        "",
    )
    fig.suptitle(
        f"{first['backend']}, {first['shape']} shape{dims} on {machine or results.get('machine') or this_machine()}\n"
        "bar: time ratio, < 1 faster (green: target met, red: missed); black tick: target",
        fontsize=10,
    )
    fig.supxlabel("time ratio (log scale)", fontsize=9)
    fig.savefig(path)
    return fig


def write(results: dict, extras: dict, out) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**results, "extras": extras}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, extras))
    try:
        plot(results, out / "ratios.png")
    except ImportError:
        pass


def main(backend: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """The benchmark scripts' entry (``benchmarks/bench_<backend>.py``): the harness for one backend.

    Prints the markdown table; with ``--out`` also writes results.json, results.md and the plot
    (as ``novolstm bench --backends <backend>`` does).
    """
    import argparse

    parser = argparse.ArgumentParser(description=description or f"novolstm's {backend} benchmarks")
    parser.add_argument("--shapes", nargs="+", default=["typical"], choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per candidate")
    parser.add_argument("--dtype", nargs="+", default=["float32"], help="float32 and/or bfloat16")
    parser.add_argument("--out", help="folder for results.json, results.md and ratios.png")
    args = parser.parse_args(argv)
    results = run([backend], args.shapes, args.repeats, tuple(args.dtype))
    if args.out:
        write(results, {}, args.out)
    print(markdown(results, {}))
    return 0
