"""Every built-in spec's torch C++ kernel against torch.nn.LSTM, beside its FLOP ratio.

Issue #17's target for a spec other than NovoLSTM: its compiled path / the native LSTM at most
1.25 times its FLOP ratio, where the FLOP ratio is the spec's matmul FLOPs per step over the
LSTM's (each 2-D parameter is one matrix product per example and step; vectors such as biases,
peepholes and LayerNorm gains are elementwise and left out, as they are for the LSTM).

Each spec's layer is forced onto the kernel (``compiled=True``, and ``fused=False``: a spec that
computes exactly the LSTM or the GRU would otherwise run torch's own fused ``_VF`` kernel, not the
spec's; the first call builds the kernel or loads it from the disk cache, outside the timing) and timed interleaved with ``nn.LSTM``:
forward, and forward+backward (the gradient of ``sum(outputs)`` with respect to the
parameters). Not a test: only ratios measured in one run mean anything on a shared machine.

    python benchmarks/bench_compiled_specs.py [--specs lstm gru ...] [--batch 32] [--steps 100]
        [--units 128] [--repeats 11] [--threads N]
"""

from __future__ import annotations

import argparse

import torch

import novolstm
from novolstm import get_layer, init_params
from novolstm.bench.timing import compare


def matmul_flops(spec: str, inputs: int, units: int) -> int:
    """Multiply-adds of one example's step in the spec's matrix products."""
    params = init_params(spec, inputs, units)
    return sum(p.shape[0] * p.shape[1] for p in params.values() if p.ndim == 2)


def _modes(module, x):
    def forward():
        with torch.no_grad():
            module(x)

    def forward_backward():
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return forward, forward_backward


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", nargs="+", default=novolstm.list_specs())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(args.steps, args.batch, args.units, generator=torch.Generator().manual_seed(0))
    native = torch.nn.LSTM(args.units, args.units)
    lstm_flops = matmul_flops("lstm", args.units, args.units)
    print(
        f"batch {args.batch}, {args.steps} steps, {args.units} inputs and units, float32, "
        f"{torch.get_num_threads()} thread(s), medians of {args.repeats} interleaved repeats"
    )
    print("| spec | FLOP ratio | target (1.25 x) | forward / nn.LSTM | forward+backward / nn.LSTM | met |")
    print("|---|---|---|---|---|---|")
    native_fwd, native_fb = _modes(native, x)
    for spec in args.specs:
        layer = get_layer("torch", spec=spec)(args.units, args.units, compiled=True, fused=False)
        fwd, fb = _modes(layer, x)
        fwd(), fb()  # builds or loads the kernel
        t = compare(
            {"spec fwd": fwd, "native fwd": native_fwd, "spec fb": fb, "native fb": native_fb}, repeats=args.repeats
        )
        flop_ratio = matmul_flops(spec, args.units, args.units) / lstm_flops
        target = 1.25 * flop_ratio
        r_fwd, r_fb = t["spec fwd"] / t["native fwd"], t["spec fb"] / t["native fb"]
        met = "yes" if max(r_fwd, r_fb) <= target else "no"
        print(f"| {spec} | {flop_ratio:.2f} | {target:.2f} | {r_fwd:.2f} | {r_fb:.2f} | {met} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
