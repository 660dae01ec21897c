"""Keras candidates: the generated sequence layers against keras.layers.LSTM, on the Keras
backend this process runs (KERAS_BACKEND), each compiled the way that backend compiles:
tf.function on TensorFlow, jax.jit on JAX, eager on torch.
Forward+backward is the gradient of sum(outputs) with respect to the inputs and every weight.
The harness reports the compile time (tf.function's trace and XLA's compile, or jax.jit's
compile) as the first call minus the steady state. Float32 and bfloat16: each layer (native
included) is built with that dtype as its Keras dtype policy, inputs cast to it.

On TensorFlow the generated layers choose per call between their loop as an XLA computation
(under a tape, its gradient as another) and TensorFlow's while loop (``jit_compile=None``,
their default: see the generated module's _xla_wins). Beside NovoLSTM's default: each loop
forced (``jit_compile=True``, XLA's; ``False``, TensorFlow's), and the generated and native
layers with the whole call, forward and backward, under ``tf.function(jit_compile=True)``, as
``model.compile(jit_compile=True)`` runs a train step.
"""

from __future__ import annotations

import numpy as np

from novolstm.api import get_layer
from novolstm.bench import Candidate, harness

CELLS = ("lstm", "novolstm", "novolstm_reference")
DTYPES = ("float32", "bfloat16")

#: the harness's targets, plus issue 17's: NovoLSTM against keras.layers.LSTM (the native
#: layer as Keras runs it by default), and like for like with the whole call in XLA
TARGETS = {
    **harness.TARGETS,
    ("novolstm spec", "native", "forward"): 1.3,
    ("novolstm spec", "native", "forward+backward"): 1.3,
    ("novolstm spec, whole call in XLA", "native: keras.layers.LSTM, whole call in XLA", "forward"): 1.3,
    ("novolstm spec, whole call in XLA", "native: keras.layers.LSTM, whole call in XLA", "forward+backward"): 1.3,
}


def _compile(layer, x, xla: bool = False) -> dict:
    """The Candidate fields: forward and forward_backward callables that return only when
    the work is done, and how they were compiled. ``xla``: on TensorFlow, the whole call
    (and its gradient) under tf.function(jit_compile=True)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=xla)
        def forward():
            return layer(x)

        @tf.function(jit_compile=xla)
        def forward_backward():
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x))
            return tape.gradient(loss, [x] + layer.trainable_variables)

        return dict(
            forward=lambda: forward().numpy(),
            forward_backward=lambda: [g.numpy() for g in forward_backward()],
            jit="tf.function(jit_compile=True)" if xla else "tf.function",
        )
    if backend == "jax":
        import jax

        from novolstm.bench.jax_adapter import compiled_bytes

        trainable = [v.value for v in layer.trainable_variables]
        others = [v.value for v in layer.non_trainable_variables]

        def apply(weights, inputs):
            return layer.stateless_call(weights, others, inputs)[0]

        fwd = jax.jit(apply)
        grad = jax.jit(jax.grad(lambda w, inputs: apply(w, inputs).sum(), argnums=(0, 1)))
        return dict(
            forward=lambda: fwd(trainable, x).block_until_ready(),
            forward_backward=lambda: jax.block_until_ready(grad(trainable, x)),
            jit="jax.jit",
            framework_peak_bytes=lambda: compiled_bytes(grad, trainable, x),
        )
    if backend == "torch":
        import torch

        def forward():
            with torch.no_grad():
                return layer(x)

        def forward_backward():
            inputs = x.detach().requires_grad_(True)
            layer(inputs).sum().backward()
            return inputs.grad

        return dict(forward=forward, forward_backward=forward_backward)
    raise ValueError(f"no benchmark path for Keras backend {backend!r}")


def candidates(batch: int, steps: int, units: int, dtype: str = "float32"):
    import keras

    # Drawn in float32 and cast: NumPy itself has no bfloat16.
    x = keras.ops.cast(np.random.default_rng(0).normal(size=(batch, steps, units)).astype("float32"), dtype)
    tensorflow = keras.backend.backend() == "tensorflow"
    for cell in CELLS:
        layer = get_layer("keras", cell)(units, seed=0, return_sequences=True, dtype=dtype)
        layer(x)  # build
        # On TensorFlow the path names the loop: chosen per call (jit_compile=None, the default), XLA's or TensorFlow's.
        yield Candidate(f"{cell} spec", path="auto loop, tf.function" if tensorflow else None, **_compile(layer, x))
        if tensorflow and cell == "novolstm":
            for jit_compile, name in ((True, "XLA"), (False, "TensorFlow")):
                loop = get_layer("keras", cell)(
                    units, seed=0, return_sequences=True, dtype=dtype, jit_compile=jit_compile
                )
                loop(x)
                yield Candidate(
                    f"{cell} spec, jit_compile={jit_compile} ({name}'s loop)",
                    path=f"{name} loop, tf.function",
                    **_compile(loop, x),
                )
            yield Candidate(f"{cell} spec, whole call in XLA", **_compile(layer, x, xla=True))
    # TensorFlow's QR (behind the orthogonal recurrent initializer) has no bfloat16: the
    # native layer is initialized in float32 and its weights copied into the dtype's layer.
    twin = keras.layers.LSTM(units, return_sequences=True, dtype="float32")
    twin(keras.ops.cast(x, "float32"))
    native = keras.layers.LSTM(units, return_sequences=True, dtype=dtype, recurrent_initializer="zeros")
    native(x)
    native.set_weights(twin.get_weights())
    yield Candidate("native: keras.layers.LSTM", **_compile(native, x))
    if tensorflow:
        yield Candidate("native: keras.layers.LSTM, whole call in XLA", **_compile(native, x, xla=True))


def matmul(batch: int, steps: int, units: int, dtype: str = "float32"):
    """A plain GEMM with the LSTM forward's matmul FLOPs, for the GFLOP/s fraction."""
    import keras

    rng = np.random.default_rng(0)
    a = keras.ops.cast(rng.normal(size=(batch * steps, 2 * units)).astype("float32"), dtype)
    w = keras.ops.cast(rng.normal(size=(2 * units, 4 * units)).astype("float32"), dtype)
    return lambda: keras.ops.convert_to_numpy(keras.ops.matmul(a, w))
