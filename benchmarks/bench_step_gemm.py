"""The compiled kernel's per-step recurrent GEMM, each way it can run, against nn.LSTM's forward.

Each candidate runs ``--steps`` sequential float32 GEMMs of (batch, K) @ (K, N), the weight prepared
once before the timed loop (as the compiled sequence kernel does once per call), timed inside C++
so that no Python overhead is counted:

- ``onednn``: torch's ``mkldnn::_linear_pointwise`` on a weight packed by
  ``mkldnn::_reorder_linear_weight`` (the oneDNN inner product inductor uses on CPU; the
  compiled kernel's path before the packed kernel).
- ``mm``: ``at::mm`` (BLAS).
- ``packed``: the runtime header's ``PackedGemm`` (weight packed into column panels, a
  register-blocked AVX-512 kernel); only where the build has AVX-512.

``nn.LSTM`` is its whole forward (batch, T = steps, inputs K, ``--units`` units) at the
same thread count. The shape defaults to the typical one: batch 32, K 128, N 640 (NovoLSTM's
five projections of 128 units). Interleaved repeats, medians; GF/s counts 2 batch K N per GEMM.
Not a test: ratios measured side by side in one run, on a shared machine.

    python benchmarks/bench_step_gemm.py [--batch 32] [--k 128] [--n 640] [--steps 100]
        [--threads 1 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

from novolstm.backends.cpp import torch_ext

RUNTIME = Path(torch_ext.__file__).with_name("runtime.h")

SOURCE = r"""
#include <chrono>
namespace rt = novolstm_rt;

// Seconds for `steps` sequential GEMMs a @ w (+ bias) by `mode`; out gets the last result.
double run(at::Tensor a, at::Tensor w, at::Tensor bias, int64_t steps, int64_t mode, at::Tensor out) {
  const int64_t rows = a.size(0);
  at::Tensor packed;
  if (mode == 0) {
    torch::jit::Stack stack{c10::IValue(w.t().contiguous()), c10::IValue(rows)};
    rt::onednn_reorder_op()->callBoxed(&stack);
    packed = stack[0].toTensor();
  }
#if defined(__AVX512F__)
  const rt::PackedGemm gemm(w, nullptr);
#else
  TORCH_CHECK(mode != 2, "the packed kernel needs AVX-512");
#endif
  at::Tensor r;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < steps; ++s) {
    if (mode == 0) {
      r = rt::onednn_linear(a, packed, bias);
    } else if (mode == 1) {
      r = at::addmm(bias, a, w);
    } else {
#if defined(__AVX512F__)
      gemm(a.data_ptr<float>(), a.stride(0), rows, bias.data_ptr<float>(), 0, out.data_ptr<float>(), out.stride(0));
#endif
    }
  }
  const auto stop = std::chrono::steady_clock::now();
  if (mode != 2) out.copy_(r);
  return std::chrono::duration<double>(stop - start).count();
}

bool has_avx512() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}
"""


def build():
    """The benchmark's extension: the runtime header and the timing loop above."""
    return cpp_extension.load_inline(
        name="novolstm_bench_step_gemm",
        cpp_sources=[RUNTIME.read_text() + SOURCE],
        functions=["run", "has_avx512"],
        extra_cflags=[*torch_ext.CFLAGS, *torch_ext._cpu_flags()],
        extra_ldflags=list(torch_ext.LDFLAGS),
        verbose=False,
    )


def main(argv=None):
    """Run the benchmark and print one table per thread count."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--n", type=int, default=640)
    p.add_argument("--units", type=int, default=128, help="nn.LSTM's units (its inputs are K)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    ext = build()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(args.batch, args.k, generator=gen)
    w = torch.randn(args.k, args.n, generator=gen) / args.k**0.5
    bias = torch.randn(args.n, generator=gen)
    exact = (a.double() @ w.double() + bias.double()).float()
    modes = {"onednn": 0, "mm": 1}
    if ext.has_avx512():
        modes["packed"] = 2
    for name, mode in modes.items():
        out = torch.empty(args.batch, args.n)
        ext.run(a, w, bias, 1, mode, out)
        print(f"{name}: max |error| vs float64 {float((out - exact).abs().max()):.2e}")
    lstm = torch.nn.LSTM(args.k, args.units, batch_first=True)
    x = torch.randn(args.batch, args.steps, args.k, generator=gen)
    gflop = 2 * args.batch * args.k * args.n * args.steps / 1e9
    print(f"\n{args.steps} GEMMs of {args.batch}x{args.k} @ {args.k}x{args.n} float32; median ms of {args.repeats}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        out = torch.empty(args.batch, args.n)
        times: dict[str, list[float]] = {name: [] for name in [*modes, "nn.LSTM"]}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, mode in modes.items():
                times[name].append(ext.run(a, w, bias, args.steps, mode, out))
            with torch.no_grad():
                start = time.perf_counter()
                lstm(x)
                times["nn.LSTM"].append(time.perf_counter() - start)
        med = {name: statistics.median(t[1:]) for name, t in times.items()}
        print(f"\nthreads {threads}")
        print(f"{'path':<8} {'ms':>7} {'GF/s':>6} {'/onednn':>8} {'/nn.LSTM fwd':>13}")
        for name, t in med.items():
            rate = f"{gflop / t:6.0f}" if name != "nn.LSTM" else f"{'':6}"
            print(f"{name:<8} {t * 1e3:7.3f} {rate} {t / med['onednn']:8.2f} {t / med['nn.LSTM']:13.2f}")


if __name__ == "__main__":
    main()
