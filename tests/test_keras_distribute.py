"""Training under tf.distribute.MirroredStrategy over two logical CPU devices matches
training on one device. TensorFlow backend only; in a subprocess, because logical
devices must be configured before TensorFlow initializes its devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

TRAINER = """
import json, os
os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np
import novolstm

rng = np.random.default_rng(0)
words, steps, n = 20, 8, 128
x = rng.integers(1, words, size=(n, steps))
x[np.arange(steps)[None, :] >= rng.integers(3, steps + 1, size=n)[:, None]] = 0  # padded, masked
y = (x == 2).any(axis=1).astype("float32")


def build(entry):
    keras.utils.set_random_seed(0)  # same initial weights for both runs
    rnn = (
        keras.layers.RNN(novolstm.get_cell("keras")(12, seed=0))
        if entry == "RNN(Cell)"
        else novolstm.get_layer("keras")(12, seed=0)
    )
    model = keras.Sequential([
        keras.Input((steps,), dtype="int32"),
        keras.layers.Embedding(words, 6, mask_zero=True),
        rnn,
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.SGD(0.5))
    return model


report = {"devices": [d.name for d in tf.config.list_logical_devices("CPU")]}
for entry in ("RNN(Cell)", "Layer"):
    single = build(entry)
    start = [w.copy() for w in single.get_weights()]
    h1 = single.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history["loss"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build(entry)
    same_start = all(np.array_equal(a, b) for a, b in zip(start, mirrored.get_weights()))
    h2 = mirrored.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history["loss"]
    diffs = [float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), mirrored.get_weights())]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(start, single.get_weights()))
    report[entry] = {
        "replicas": strategy.num_replicas_in_sync,
        "same_start": same_start,
        "single_loss": h1,
        "mirrored_loss": h2,
        "max_weight_diff": max(diffs),
        "moved": moved,
        "names": [v.name for v in mirrored.weights],
    }
print(json.dumps(report))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_matches_one_device(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.distribute.MirroredStrategy is TensorFlow's")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRAINER)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["devices"]) == 2, report["devices"]
    for entry in ("RNN(Cell)", "Layer"):
        r = report[entry]
        assert r["replicas"] == 2 and r["same_start"], r
        assert {"W_i", "U_s", "gamma_i"} <= set(r["names"])
        assert r["moved"] > 1e-2, "training must change the weights for the comparison to mean anything"
        # float32; the two runs reduce the batch gradient in different orders
        assert r["max_weight_diff"] < 1e-5, r
        for a, b in zip(r["single_loss"], r["mirrored_loss"]):
            assert abs(a - b) < 1e-5, (r["single_loss"], r["mirrored_loss"])
        assert r["single_loss"][-1] < r["single_loss"][0]
