"""NumPy backend against a per-example NumPy LSTM cell written as in the seed text on LSTMs
(shared/seeds/001: column vectors, np.vstack of [x; h], one np.dot per gate, one example
at a time). Forward only, float32, batch 32, 100 steps, 128 inputs and units.

    python benchmarks/bench_numpy.py [--batch 32 --steps 100 --size 128 --repeats 7]
"""

from __future__ import annotations

import argparse

import numpy as np

import novolstm
from novolstm.bench.numpy_adapter import PerExampleLSTMCell
from novolstm.bench.timing import compare, ratio_table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    dtype = np.float32
    x = rng.normal(size=(args.batch, args.steps, args.size)).astype(dtype)
    params = novolstm.init_params("lstm", args.size, args.size, seed=0, dtype=dtype)
    novo = novolstm.init_params("novolstm", args.size, args.size, seed=0, dtype=dtype)
    textbook = PerExampleLSTMCell(params, dtype)
    lstm = novolstm.load_generated("lstm", "numpy")
    novolstm_cell = novolstm.load_generated("novolstm", "numpy")
    np.testing.assert_allclose(textbook.sequence(x[:2, :5]), lstm.forward(params, x[:2, :5])[0], atol=1e-5)
    times = compare(
        {
            "per-example numpy cell (seed 001)": lambda: textbook.sequence(x),
            "generated numpy, lstm spec": lambda: lstm.forward(params, x),
            "generated numpy, novolstm spec": lambda: novolstm_cell.forward(novo, x),
            "generated numpy, lstm spec + tape": lambda: lstm.forward(params, x, keep_tape=True),
        },
        repeats=args.repeats,
    )
    print(f"forward, float32, batch {args.batch}, {args.steps} steps, {args.size} inputs and units")
    print(
        ratio_table(
            times,
            [
                ("generated numpy, lstm spec", "per-example numpy cell (seed 001)", 0.2),
                ("generated numpy, novolstm spec", "generated numpy, lstm spec", 1.3),
            ],
        )
    )


if __name__ == "__main__":
    main()
