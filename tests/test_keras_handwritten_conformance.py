"""The conformance kit on a NovoLSTM written directly as a Keras 3 layer, outside novolstm."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from novolstm import conformance


class HandWrittenNovoLSTMCell(keras.layers.Layer):
    """The original Keras code's shape of cell: weights w_*, u_*, b_* and a LayerNormalization."""

    def __init__(self, params, layer_norm, **kwargs):
        super().__init__(**kwargs)
        self.p = {k: ops.convert_to_tensor(v) for k, v in params.items()}
        self.layer_norm = layer_norm

    def call(self, x, h, c):
        gate = lambda n: ops.matmul(x, self.p[f"W_{n}"]) + ops.matmul(h, self.p[f"U_{n}"]) + self.p[f"b_{n}"]  # noqa: E731
        i = self.layer_norm(ops.sigmoid(gate("i"))) * ops.softmax(gate("s"), axis=-1)
        f, g, o = ops.sigmoid(gate("f")), ops.tanh(gate("g")), ops.sigmoid(gate("o"))
        c_new = f * c + i * g
        return o * ops.tanh(c_new), c_new


def as_implementation(epsilon):
    def fn(params, x, state, mask):
        dtype = str(x.dtype)
        norm = keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype)
        norm.build((None, params["U_i"].shape[0]))
        norm.set_weights([params["gamma_i"], params["beta_i"]])
        cell = HandWrittenNovoLSTMCell(params, norm, dtype=dtype)
        h, c = (ops.convert_to_tensor(s) for s in state)
        outputs = []
        for t in range(x.shape[1]):
            with warnings.catch_warnings():
                # Keras warns that a softmax over one unit is always 1 (the one_unit case), and
                # this suite turns warnings into errors; a user's layer would run through it.
                warnings.filterwarnings("ignore", category=UserWarning, module="keras")
                h_new, c_new = cell(ops.convert_to_tensor(x[:, t]), h, c)
            m = ops.convert_to_tensor(mask[:, t, None])
            h, c = ops.where(m, h_new, h), ops.where(m, c_new, c)
            outputs.append(ops.where(m, h_new, ops.zeros_like(h_new)))
        return np.stack([ops.convert_to_numpy(o) for o in outputs], 1), (
            ops.convert_to_numpy(h),
            ops.convert_to_numpy(c),
        )

    return fn


def test_a_hand_written_keras_novolstm_with_keras_defaults_conforms():
    # keras.layers.LayerNormalization's default epsilon is 1e-3, as the original code used.
    report = conformance.check(as_implementation(1e-3), "novolstm", dtype="float32")
    assert report.passed, report.format()


def test_a_hand_written_keras_novolstm_with_another_epsilon_is_caught():
    report = conformance.check(as_implementation(1e-5), "novolstm", dtype="float32")
    assert not report.passed
    assert any("LayerNorm epsilon 1e-05" in d for r in report.results for d in r.diagnosis), report.format()
