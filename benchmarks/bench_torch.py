"""Generated PyTorch layers against torch.nn.LSTM: float32, batch 32, 100 steps, 128 inputs
and units; forward (under torch.no_grad) and forward+backward (the parameters train; the
input, like data, needs no gradient; loss = output.sum()).

Interleaved repeats after warm-up, medians (novolstm.bench.timing.compare), ratios side by
side. Targets: lstm spec / nn.LSTM <= 1.0; novolstm / lstm spec <= 1.3. Not a test: the
machines here are shared and noisy, so only ratios measured in one run mean anything.

    python benchmarks/bench_torch.py [--batch 32 --steps 100 --size 128 --repeats 15 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import novolstm
from novolstm.bench.timing import compare, ratio_table


class WithoutOneDNN(torch.nn.Module):
    """nn.LSTM on ATen's op-by-op path (oneDNN's fused LSTM kernel off): context, not a target."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x):
        torch._C._set_mkldnn_enabled(False)
        try:
            return self.lstm(x)
        finally:
            torch._C._set_mkldnn_enabled(True)


def forward(module, x):
    def run():
        with torch.no_grad():
            module(x)

    return run


def forward_backward(module, x):
    def run():
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        out.sum().backward()

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 1 keeps a shared machine comparable")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.size
    modules = {
        "torch.nn.LSTM": torch.nn.LSTM(size, size),
        "generated torch, lstm spec": novolstm.get_layer("torch", spec="lstm")(size, size),
        "generated torch, novolstm spec": novolstm.get_layer("torch", spec="novolstm")(size, size),
    }
    modules["torch.nn.LSTM, oneDNN off (context)"] = WithoutOneDNN(modules["torch.nn.LSTM"])
    # The compiled C++ kernel (novolstm.backends.cpp; the specs' layers run it by default) beside
    # the generated loop, and the GRU's fused kernel beside nn.GRU.
    Layer = lambda spec, **kw: novolstm.get_layer("torch", spec=spec)(size, size, **kw)  # noqa: E731
    modules["generated torch, novolstm spec, loop"] = Layer("novolstm", compiled=False)
    modules["generated torch, lstm spec, compiled"] = Layer("lstm", fused=False, compiled=True)
    modules["generated torch, lstm spec, loop"] = Layer("lstm", fused=False, compiled=False)
    modules["torch.nn.GRU"] = torch.nn.GRU(size, size)
    modules["generated torch, gru spec"] = Layer("gru")
    modules["generated torch, gru spec, compiled"] = Layer("gru", fused=False, compiled=True)
    modules["generated torch, gru spec, loop"] = Layer("gru", fused=False, compiled=False)
    x = torch.randn(args.steps, args.batch, size)
    with torch.no_grad():  # same function: the lstm spec with nn.LSTM's weights gives nn.LSTM's outputs
        from novolstm.convert.torch import from_torch

        modules["generated torch, lstm spec"].load_canonical(from_torch(modules["torch.nn.LSTM"].state_dict(), cell="lstm"))
        want, _ = modules["torch.nn.LSTM"](x[:5])
        got, _ = modules["generated torch, lstm spec"](x[:5])
        assert torch.allclose(got, want, atol=1e-5), "lstm spec and nn.LSTM disagree"
    builds = {}
    for name, module in modules.items():  # the compiled kernels build (or load from the cache) on their first call
        if "compiled" in name or name == "generated torch, novolstm spec":
            start = time.perf_counter()
            module(x[:2])
            builds[name] = time.perf_counter() - start
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); float32, batch {args.batch}, "
          f"{args.steps} steps, {size} inputs and units; medians of {args.repeats} interleaved repeats")
    pairs = [
        ("generated torch, lstm spec", "torch.nn.LSTM", 1.0),
        ("generated torch, novolstm spec", "generated torch, lstm spec", 1.3),
        ("generated torch, lstm spec", "torch.nn.LSTM, oneDNN off (context)", None),
        ("generated torch, novolstm spec", "torch.nn.LSTM", 1.3),
        ("generated torch, novolstm spec, loop", "torch.nn.LSTM", None),
        ("generated torch, lstm spec, compiled", "torch.nn.LSTM", 1.25),
        ("generated torch, lstm spec, loop", "torch.nn.LSTM", None),
        ("generated torch, gru spec", "torch.nn.GRU", 1.05),
        ("generated torch, gru spec, compiled", "torch.nn.GRU", None),
        ("generated torch, gru spec, loop", "torch.nn.GRU", None),
    ]
    print("first call (C++ build, or load from NOVOLSTM_CACHE_DIR): " + ", ".join(f"{n} {t:.1f} s" for n, t in builds.items()))
    for label, make in (("forward", forward), ("forward+backward", forward_backward)):
        times = compare({name: make(m, x) for name, m in modules.items()}, repeats=args.repeats, warmup=args.warmup)
        print(f"\n{label}")
        print(ratio_table(times, pairs))


if __name__ == "__main__":
    main()
