"""NumPy backend against a per-example NumPy LSTM cell written as in the seed text on LSTMs
(shared/seeds/001: column vectors, np.vstack of [x; h], one np.dot per gate, one example
at a time). Forward only, float32, batch 32, 100 steps, 128 inputs and units.

    python benchmarks/bench_numpy.py [--batch 32 --steps 100 --size 128 --repeats 7]
"""

from __future__ import annotations

import argparse

import numpy as np

import novolstm
from novolstm.bench.timing import compare, ratio_table


class PerExampleLSTMCell:
    """The textbook cell: weights (H, I + H) per gate, one example as a column vector."""

    def __init__(self, params, dtype):
        cat = lambda g: np.concatenate([params[f"W_{g}"], params[f"U_{g}"]], axis=0).T.astype(dtype)  # noqa: E731
        self.Wf, self.Wi, self.Wo, self.Wc = cat("f"), cat("i"), cat("o"), cat("g")
        col = lambda g: params[f"b_{g}"].astype(dtype)[:, None]  # noqa: E731
        self.bf, self.bi, self.bo, self.bc = col("f"), col("i"), col("o"), col("g")

    @staticmethod
    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    def forward(self, x, prev_h, prev_c):
        mixed = np.vstack((x, prev_h))
        f = self.sigmoid(np.dot(self.Wf, mixed) + self.bf)
        i = self.sigmoid(np.dot(self.Wi, mixed) + self.bi)
        o = self.sigmoid(np.dot(self.Wo, mixed) + self.bo)
        c_tilde = np.tanh(np.dot(self.Wc, mixed) + self.bc)
        c = f * prev_c + i * c_tilde
        h = o * np.tanh(c)
        return h, c

    def sequence(self, xs):
        outputs = np.empty((xs.shape[0], xs.shape[1], self.Wf.shape[0]), xs.dtype)
        for b in range(xs.shape[0]):
            h = np.zeros((self.Wf.shape[0], 1), xs.dtype)
            c = np.zeros_like(h)
            for t in range(xs.shape[1]):
                h, c = self.forward(xs[b, t][:, None], h, c)
                outputs[b, t] = h[:, 0]
        return outputs


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
