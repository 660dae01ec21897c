"""novolstm on a CUDA GPU in one command: the equivalence tests, then the benchmarks.

1. The equivalence tests (tests/test_device_equivalence.py, run by pytest with NOVOLSTM_DEVICE):
   the torch layer of every built-in spec (the path it picks there, cuDNN for the LSTM and the
   GRU, and its generated loop) on the device against the float64 reference, outputs, final
   states and gradients, float32 and float64, TF32 off; JAX's cells too where JAX has the GPU.
2. The benchmarks: the spec layers against torch.nn.LSTM (cuDNN) and the GRU against torch.nn.GRU,
   forward and forward+backward, interleaved repeats, medians and ratios, TF32 off as in the tests.

Everything lands under --out: environment.json, equivalence.txt (pytest's report) and
equivalence.xml (JUnit), bench.json and bench.md. It takes about five minutes on a GPU
(--budget-s bounds it). ``--device cpu`` runs every step on the CPU: a dry run of the script.

    python benchmarks/gpu.py [--out gpu-results] [--device cuda] [--specs lstm gru ...]
                             [--shapes typical throughput] [--repeats 5] [--budget-s 300]

Exit codes: 0 the tests passed and the benchmarks ran; 1 an equivalence test failed;
2 bad arguments; 3 no CUDA device (one line says so and what would have run; nothing ran);
4 the time budget ran out before the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "test_device_equivalence.py"
NO_DEVICE = 3
BUDGET_SPENT = 4
#: name -> (batch, steps, units); inputs equal units
SHAPES = {"smoke": (2, 5, 8), "latency": (1, 1000, 64), "typical": (32, 100, 128), "throughput": (128, 200, 512)}


def _parser() -> argparse.ArgumentParser:
    import novolstm

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="exit codes: 0 passed, 1 an equivalence test failed, 2 bad arguments, 3 no CUDA device, "
        "4 time budget spent before the benchmarks",
    )
    parser.add_argument("--out", default="gpu-results", help="folder for the results (default: gpu-results)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run (default: cuda)")
    parser.add_argument(
        "--specs", nargs="+", default=novolstm.list_specs(), choices=novolstm.list_specs(), metavar="SPEC"
    )
    parser.add_argument("--shapes", nargs="+", default=["typical", "throughput"], choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per candidate (default: 5)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget in seconds (default: 300)")
    parser.add_argument(
        "--jax", choices=["auto", "on", "off"], default="auto", help="JAX's tests: auto runs them where JAX has the GPU"
    )
    return parser


def _plan(args, cuda: bool = True) -> str:
    return (
        f"the equivalence tests ({TESTS.relative_to(REPO)}: torch layers and their generated loops, "
        f"{len(args.specs)} specs, float32 and float64, TF32 off, against the float64 reference) and the "
        f"benchmarks (shapes {', '.join(args.shapes)}: spec layers against torch.nn.LSTM"
        + (" on cuDNN)" if cuda else ")")
    )


def _jax_backend(env: dict) -> str | None:
    """JAX's default backend ("gpu", "cpu"), asked in a subprocess so this one never holds GPU memory."""
    run = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True, text=True, env=env
    )
    return run.stdout.strip() if run.returncode == 0 else None


def _environment(torch, device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def _run_tests(args, env: dict, timeout: float, out: Path) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", str(TESTS)]
    command += [f"--junitxml={out / 'equivalence.xml'}"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=out)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        (out / "equivalence.txt").write_text(partial + f"\n(stopped after {timeout:.0f} s)\n")
        print(f"gpu.py: the equivalence tests ran past {timeout:.0f} s and were stopped", file=sys.stderr)
        return BUDGET_SPENT
    (out / "equivalence.txt").write_text(run.stdout + run.stderr)
    summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"equivalence tests: {summary.strip('= ')}")
    return 0 if run.returncode == 0 else 1


def _candidates(torch, device, specs, batch: int, steps: int, units: int, dtype):
    """name -> module; every spec layer, the LSTM's and GRU's generated loops, and torch's own."""
    from novolstm.api import get_layer
    from novolstm.convert.torch import from_torch

    torch.manual_seed(0)
    native = torch.nn.LSTM(units, units, device=device, dtype=dtype)
    modules = {"native: torch.nn.LSTM (cuDNN)" if device.type == "cuda" else "native: torch.nn.LSTM": native}
    for spec in dict.fromkeys(["lstm", *specs]):
        layer = get_layer("torch", spec=spec)(units, units, device=device, dtype=dtype)
        if spec == "lstm":  # the same function as the native baseline
            layer.load_canonical(from_torch(native.state_dict(), cell="lstm"))
        modules[f"{spec} spec"] = layer
        if spec in ("lstm", "gru"):  # the fused kernel's like-for-like: the generated loop
            loop = get_layer("torch", spec=spec)(units, units, device=device, dtype=dtype, fused=False, compiled=False)
            loop.load_state_dict(layer.state_dict())
            modules[f"{spec} spec, generated loop"] = loop
    if "gru" in specs:
        modules["native: torch.nn.GRU"] = torch.nn.GRU(units, units, device=device, dtype=dtype)
    return modules


def _timed(torch, device, module, x):
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def forward():
        with torch.no_grad():
            module(x)
        sync()

    def forward_backward():
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        out.sum().backward()
        sync()

    return forward, forward_backward


def _bench(torch, device, args) -> dict:
    from novolstm.bench.timing import compare

    rows = []
    for shape in args.shapes:
        batch, steps, units = SHAPES[shape]
        x = torch.randn(steps, batch, units, device=device)
        modules = _candidates(torch, device, args.specs, batch, steps, units, torch.float32)
        calls = {name: _timed(torch, device, m, x) for name, m in modules.items()}
        first = {}
        for name, (fwd, both) in calls.items():  # first calls: builds, autotuning, caches
            start = time.perf_counter()
            fwd()
            both()
            first[name] = time.perf_counter() - start
        forward = compare({n: c[0] for n, c in calls.items()}, args.repeats)
        both = compare({n: c[1] for n, c in calls.items()}, args.repeats)
        lstm = next(n for n in modules if n.startswith("native: torch.nn.LSTM"))
        for name in modules:
            base = "native: torch.nn.GRU" if "gru" in name.lower() else lstm
            rows.append(
                {
                    "shape": shape,
                    "batch": batch,
                    "steps": steps,
                    "units": units,
                    "candidate": name,
                    "forward_s": forward[name],
                    "forward_backward_s": both[name],
                    "baseline": base,
                    "forward_ratio": forward[name] / forward[base],
                    "forward_backward_ratio": both[name] / both[base],
                    "first_call_s": first[name],
                }
            )
    return {"dtype": "float32", "repeats": args.repeats, "tf32": False, "rows": rows}


def _markdown(results: dict, env: dict) -> str:
    lines = [
        f"Float32, TF32 off, medians of {results['repeats']} interleaved repeats on {env.get('gpu', env['device'])}.",
        "",
        "| shape | candidate | forward ms | forward+backward ms | forward ratio | forward+backward ratio "
        "| baseline | first call s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['shape']} ({r['batch']}x{r['steps']}x{r['units']}) | {r['candidate']} | {1e3 * r['forward_s']:.2f} "
            f"| {1e3 * r['forward_backward_s']:.2f} | {r['forward_ratio']:.2f} | {r['forward_backward_ratio']:.2f} "
            f"| {r['baseline']} | {r['first_call_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = _parser().parse_args(argv)
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        print(f"gpu.py: --device {args.device!r}: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu.py: no CUDA device was found (torch {torch.__version__}: torch.cuda.is_available() is False); "
            f"nothing ran; on a CUDA machine this runs {_plan(args)}",
            file=sys.stderr,
        )
        return NO_DEVICE
    if device.type not in ("cuda", "cpu"):
        print(f"gpu.py: --device {args.device!r}: expected cuda, cuda:N or cpu", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, NOVOLSTM_DEVICE=args.device, NOVOLSTM_DEVICE_SPECS=",".join(args.specs))
    env |= {"HYPOTHESIS_PROFILE": "ci", "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_ENABLE_X64": "1"}
    backends = ["numpy", "torch"]
    jax_on = args.jax == "on" or (
        args.jax == "auto" and _jax_backend(env) == ("gpu" if device.type == "cuda" else "cpu")
    )
    if jax_on:
        backends.append("jax")
    env["NOVOLSTM_BACKENDS"] = ",".join(backends)
    info = _environment(torch, device) | {"backends tested": backends}
    (out / "environment.json").write_text(json.dumps(info, indent=1) + "\n")
    print(
        f"gpu.py: {info}; running {_plan(args, device.type == 'cuda')}"
        + (", and JAX's" if jax_on else ", not JAX's (no JAX on it)")
    )
    # The benchmarks' share of the budget: about a minute at the default shapes.
    reserve = min(90.0, args.budget_s / 3)
    tests = _run_tests(args, env, args.budget_s - reserve - (time.perf_counter() - start), out)
    if tests == BUDGET_SPENT:
        return BUDGET_SPENT
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = _bench(torch, device, args)
    (out / "bench.json").write_text(json.dumps(results | {"environment": info}, indent=1) + "\n")
    table = _markdown(results, info)
    (out / "bench.md").write_text(table)
    print(table)
    spent = time.perf_counter() - start
    print(f"gpu.py: done in {spent:.0f} s; results in {out}" + ("" if tests == 0 else "; EQUIVALENCE TESTS FAILED"))
    return tests


if __name__ == "__main__":
    sys.exit(main())
