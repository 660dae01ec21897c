"""numpy speed: the generated NumPy cells against a per-example NumPy LSTM cell (column vectors, one np.dot per gate).

The candidates live in novolstm/bench/numpy_adapter.py and the measuring in novolstm.bench.harness
(interleaved repeats after warm-up, medians, ratios side by side with their targets); this
script runs the harness for this backend only, as `novolstm bench --backends numpy` does.
Not a test: the machines here are shared and noisy, so only ratios measured in one run mean anything.

    python benchmarks/bench_numpy.py [--shapes typical latency] [--repeats 7] [--dtype float32 bfloat16] [--out DIR]
"""

import sys

from novolstm.bench.harness import main

if __name__ == "__main__":
    sys.exit(main("numpy", sys.argv[1:], description=__doc__.split("\n")[0]))
