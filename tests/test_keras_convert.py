"""novolstm.convert.keras: Keras layouts <-> canonical parameters.

Round trips are exact; converted weights from real keras.layers.LSTM / GRU layers
make the lstm and gru specs compute what those layers compute (checked with the
float64 oracle and with the generated Keras layer); the original NovoLSTM Keras
code, rebuilt here from its description (DESIGN.md section 2), ports to the
novolstm_reference spec.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import novolstm
from novolstm.convert import keras as convert
from novolstm.testing import assert_close, computes_in, random_params, tolerance

B, T, I, H = 3, 6, 4, 5


def tol(dtype, steps=1, kind="outputs"):
    # novolstm.testing.PRECISION_LIMITS: Keras on JAX and torch holds float64 to float32's tolerance.
    return tolerance(computes_in("keras", dtype, keras.backend.backend()), steps=steps, kind=kind)


F64 = tol("float64", steps=T)


def np_(x):
    return ops.convert_to_numpy(x)


def randomize(layer, rng):
    """Distinct random weights (a gate-order bug cannot hide behind constant ones)."""
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(w.dtype) for w in layer.get_weights()])


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "spec, to_keras, from_keras",
    [
        ("lstm", convert.lstm_from_canonical, convert.lstm_to_canonical),
        ("keras2_lstm", convert.keras2_lstm_from_canonical, convert.keras2_lstm_to_canonical),
        ("gru", convert.gru_from_canonical, convert.gru_to_canonical),
        ("novolstm_reference", convert.novolstm_original_from_canonical, convert.novolstm_original_to_canonical),
    ],
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_canonical_to_keras_and_back_is_exact(spec, to_keras, from_keras, dtype, rng):
    params = {k: v.astype(dtype) for k, v in random_params(novolstm.load_spec(spec), I, H, rng).items()}
    back = from_keras(to_keras(params))
    assert sorted(back) == sorted(params)
    for name in params:
        assert back[name].dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(back[name], params[name], err_msg=name)


def test_keras_lstm_to_canonical_and_back_is_exact(rng):
    weights = [rng.normal(size=(I, 4 * H)), rng.normal(size=(H, 4 * H)), rng.normal(size=4 * H)]
    for a, b in zip(convert.lstm_from_canonical(convert.lstm_to_canonical(weights)), weights):
        np.testing.assert_array_equal(a, b)
    by_name = dict(zip(["kernel", "recurrent_kernel", "bias"], weights))
    np.testing.assert_array_equal(convert.lstm_to_canonical(by_name)["U_g"], weights[1][:, 2 * H : 3 * H])


def test_keras_gru_round_trip_moves_only_the_mergeable_biases(rng):
    weights = [rng.normal(size=(I, 3 * H)), rng.normal(size=(H, 3 * H)), rng.normal(size=(2, 3 * H))]
    kernel, recurrent, bias = convert.gru_from_canonical(convert.gru_to_canonical(weights))
    np.testing.assert_array_equal(kernel, weights[0])
    np.testing.assert_array_equal(recurrent, weights[1])
    np.testing.assert_array_equal(bias[1, 2 * H :], weights[2][1, 2 * H :])  # b_hn: gated by r, kept apart
    np.testing.assert_array_equal(bias[0, 2 * H :], weights[2][0, 2 * H :])
    np.testing.assert_array_equal(bias[1, : 2 * H], 0.0)
    np.testing.assert_allclose(bias[0, : 2 * H], weights[2][:, : 2 * H].sum(0), rtol=0, atol=0)


def test_original_novolstm_names_with_paths_and_suffixes(rng):
    params = random_params(novolstm.load_spec("novolstm_reference"), I, H, rng)
    original = convert.novolstm_original_from_canonical(params)
    keras2_style = [
        (f"novo_lstm/{k}:0" if k not in ("gamma", "beta") else f"layer_normalization/{k}:0", v)
        for k, v in original.items()
    ]
    back = convert.novolstm_original_to_canonical(keras2_style)
    for name in params:
        np.testing.assert_array_equal(back[name], params[name])


def test_conversions_refuse_what_they_cannot_represent(rng):
    lstm = random_params(novolstm.load_spec("lstm"), I, H, rng)
    peephole = random_params(novolstm.load_spec("peephole_lstm"), I, H, rng)
    with pytest.raises(convert.ConversionError, match=r"unexpected \['p_f', 'p_i', 'p_o'\]"):
        convert.lstm_from_canonical(peephole)  # Keras' LSTM has no peepholes: never drop them
    with pytest.raises(convert.ConversionError, match=r"U_f must have shape \(5, 5\)"):
        convert.lstm_from_canonical({**lstm, "U_f": np.zeros((5, 4))})
    with pytest.raises(convert.ConversionError, match="reset_after=False"):
        convert.gru_to_canonical([np.zeros((I, 3 * H)), np.zeros((H, 3 * H)), np.zeros(3 * H)])
    with pytest.raises(convert.ConversionError, match=r"expected kernel \(input, 4\*units\)"):
        convert.lstm_to_canonical([np.zeros((I, 3 * H)), np.zeros((H, 3 * H)), np.zeros(3 * H)])
    with pytest.raises(convert.ConversionError, match=r"bias must have shape \(20,\)"):
        convert.lstm_to_canonical([np.zeros((I, 4 * H)), np.zeros((H, 4 * H)), np.zeros(4 * H + 1)])
    with pytest.raises(convert.ConversionError, match="get_weights"):
        convert.lstm_to_canonical([np.zeros((I, 4 * H))])
    with pytest.raises(convert.ConversionError, match="unexpected weight 'moving_mean'"):
        convert.novolstm_original_to_canonical({"moving_mean": np.zeros(H)})
    original = convert.novolstm_original_from_canonical(
        random_params(novolstm.load_spec("novolstm_reference"), I, H, rng)
    )
    with pytest.raises(convert.ConversionError, match=r"missing \['u_c'\]"):
        convert.novolstm_original_to_canonical({k: v for k, v in original.items() if k != "u_c"})
    with pytest.raises(convert.ConversionError, match="given twice"):
        convert.novolstm_original_to_canonical([*original.items(), ("other/w_i:0", original["w_i"])])


# ---------------------------------------------------------------- against real Keras layers


@pytest.mark.parametrize("use_bias", [True, False])
def test_lstm_spec_with_weights_from_keras_lstm_matches_it(use_bias, rng):
    x = rng.normal(size=(B, T, I))
    state = [rng.normal(size=(B, H)) for _ in range(2)]
    native = keras.layers.LSTM(H, use_bias=use_bias, return_sequences=True, return_state=True, dtype="float64")
    native.build((B, T, I))
    randomize(native, rng)
    y, h, c = (np_(a) for a in native(x, initial_state=state))
    params = convert.lstm_to_canonical(native.get_weights())
    ref_y, (ref_h, ref_c) = novolstm.reference.run("lstm", params, x, tuple(state))
    assert_close(y, ref_y, F64, "keras LSTM vs lstm spec (reference)")
    assert_close(h, ref_h, F64, "h")
    assert_close(c, ref_c, F64, "c")
    ours_y, _ = novolstm.run("lstm", params, x, tuple(state), backend="keras")
    assert_close(ours_y, y, F64, "keras LSTM vs the generated keras lstm")
    # and back: canonical -> a fresh LSTMCell inside keras.layers.RNN computes the same
    cell = keras.layers.LSTMCell(H, use_bias=True, dtype="float64")
    rnn = keras.layers.RNN(cell, return_sequences=True, dtype="float64")
    rnn.build((B, T, I))
    cell.set_weights(convert.lstm_from_canonical(params))
    assert_close(np_(rnn(x, initial_state=state)), ref_y, F64, "LSTMCell with converted weights")


def test_lstm_float32_port_into_the_generated_layer(rng):
    x = rng.normal(size=(B, T, I)).astype("float32")
    native = keras.layers.LSTM(H, return_sequences=True)
    native.build((B, T, I))
    randomize(native, rng)
    layer = novolstm.get_layer("keras", "lstm")(H, return_sequences=True)
    layer.build((B, T, I))
    layer.cell.load_params(convert.lstm_to_canonical(native.get_weights()))
    assert_close(np_(layer(x)), np_(native(x)).astype("float64"), tol("float32", steps=T), "float32 port")


def test_gru_spec_with_weights_from_keras_gru_matches_it(rng):
    x = rng.normal(size=(B, T, I))
    h0 = rng.normal(size=(B, H))
    native = keras.layers.GRU(H, reset_after=True, return_sequences=True, return_state=True, dtype="float64")
    native.build((B, T, I))
    randomize(native, rng)
    y, h = (np_(a) for a in native(x, initial_state=[h0]))
    params = convert.gru_to_canonical(native.get_weights())
    ref_y, (ref_h,) = novolstm.reference.run("gru", params, x, (h0,))
    assert_close(y, ref_y, F64, "keras GRU vs gru spec (reference)")
    assert_close(h, ref_h, F64, "h")
    ours_y, _ = novolstm.run("gru", params, x, (h0,), backend="keras")
    assert_close(ours_y, y, F64, "keras GRU vs the generated keras gru")
    fresh = keras.layers.GRU(H, reset_after=True, return_sequences=True, dtype="float64")
    fresh.build((B, T, I))
    fresh.set_weights(convert.gru_from_canonical(params))
    assert_close(np_(fresh(x, initial_state=[h0])), ref_y, F64, "GRU with weights converted back")


class OriginalNovoLSTM(keras.layers.Layer):
    """The original NovoLSTM Keras cell as DESIGN.md section 2 describes it (not generated code).

    i = LayerNormalization(sigmoid(x w_i + h u_i + b_i) * softmax(x w_i_prime + b_i_prime)),
    with Keras' LayerNormalization defaults; f, c, o as the standard LSTM; state [h, c].
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = [units, units]
        self.output_size = units
        self.layer_norm = keras.layers.LayerNormalization(dtype=self.dtype_policy)

    def build(self, input_shape):
        d = input_shape[-1]
        for gate in ("i", "f", "c", "o"):
            setattr(self, f"w_{gate}", self.add_weight(shape=(d, self.units), name=f"w_{gate}"))
            setattr(self, f"u_{gate}", self.add_weight(shape=(self.units, self.units), name=f"u_{gate}"))
            setattr(self, f"b_{gate}", self.add_weight(shape=(self.units,), name=f"b_{gate}", initializer="zeros"))
        self.w_i_prime = self.add_weight(shape=(d, self.units), name="w_i_prime")
        self.b_i_prime = self.add_weight(shape=(self.units,), name="b_i_prime", initializer="zeros")
        self.layer_norm.build((None, self.units))

    def call(self, inputs, states):
        h, c = states
        gate = lambda g: (
            ops.matmul(inputs, getattr(self, f"w_{g}"))
            + ops.matmul(h, getattr(self, f"u_{g}"))
            + getattr(self, f"b_{g}")
        )  # noqa: E731
        i = self.layer_norm(ops.sigmoid(gate("i")) * ops.softmax(ops.matmul(inputs, self.w_i_prime) + self.b_i_prime))
        f, o = ops.sigmoid(gate("f")), ops.sigmoid(gate("o"))
        c = f * c + i * ops.tanh(gate("c"))
        h = o * ops.tanh(c)
        return h, [h, c]


def test_original_novolstm_keras_weights_port_to_novolstm_reference(rng):
    x = rng.normal(size=(B, T, I))
    original = keras.layers.RNN(
        OriginalNovoLSTM(H, dtype="float64"), return_sequences=True, return_state=True, dtype="float64"
    )
    original.build((B, T, I))
    randomize(original, rng)
    y, h, c = (np_(a) for a in original(x))
    params = convert.novolstm_original_to_canonical([(v.path, v.numpy()) for v in original.weights])
    ref_y, (ref_h, ref_c) = novolstm.reference.run("novolstm_reference", params, x)
    assert_close(y, ref_y, F64, "original code vs novolstm_reference (reference)")
    assert_close(c, ref_c, F64, "c")
    ours_y, (ours_h, _) = novolstm.run("novolstm_reference", params, x, backend="keras")
    assert_close(ours_y, y, F64, "original code vs the generated keras novolstm_reference")
    # the design document's form is a different cell: the port must target novolstm_reference
    other = {**{k: v for k, v in params.items()}, "U_s": np.zeros((H, H))}
    design_y, _ = novolstm.reference.run("novolstm", other, x)
    assert np.abs(design_y - y).max() > 1e-3


# ---------------------------------------------------------------- weight files users bring


def _legacy_weights(model, path):
    """What Keras 2's model.save_weights('w.h5') wrote: Keras 3 still carries that writer."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _run_reference(cell, layers, x):
    """A canonical stack through the float64 reference, both directions concatenated."""
    outputs = x
    count = len({k.split("_")[0] for k in layers})
    for k in range(count):
        forward, _ = novolstm.reference.run(cell, layers[f"l{k}"], outputs)
        if f"l{k}_reverse" in layers:
            backward, _ = novolstm.reference.run(cell, layers[f"l{k}_reverse"], outputs[:, ::-1])
            forward = np.concatenate([forward, backward[:, ::-1]], axis=-1)
        outputs = forward
    return outputs


@pytest.mark.parametrize("how", ["save_weights_h5", "model_save_h5"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_keras2_legacy_h5_files_convert(tmp_path, rng, how, kind):
    from novolstm.cli import main
    from novolstm.convert import files

    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[kind]
    model = keras.Sequential(
        [
            keras.Input((None, I)),
            keras.layers.Bidirectional(layer(H, return_sequences=True)),
            layer(H, return_sequences=True),
        ]
    )
    for sub in model.layers:
        randomize(sub, rng)
    path = tmp_path / "legacy.h5"
    if how == "save_weights_h5":
        _legacy_weights(model, path)
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns that .h5 is a legacy format: that is the point here
            model.save(path)
    with pytest.raises(files.ConversionError, match="some layers are bidirectional and some are not"):
        files.read(path, "keras", kind)
    plain = keras.Sequential([keras.Input((None, I)), layer(H, return_sequences=True), layer(H, return_sequences=True)])
    for sub in plain.layers:
        randomize(sub, rng)
    _legacy_weights(plain, path)
    assert (
        main(
            [
                "convert",
                str(path),
                "-o",
                str(tmp_path / "c.safetensors"),
                "--from",
                "keras",
                "--to",
                "canonical",
                "--spec",
                kind,
            ]
        )
        == 0
    )
    layers = files.read(tmp_path / "c.safetensors", "canonical", kind)
    x = rng.normal(size=(B, T, I))
    assert_close(
        np_(plain(x.astype("float32"))),
        _run_reference(kind, layers, x),
        tol("float32", 2 * T),
        "Keras 2 .h5 via canonical",
    )


@pytest.mark.parametrize("merge_mode", ["sum", "ave", "mul", "concat"])
def test_bidirectional_merge_modes_other_than_concat_are_refused(tmp_path, rng, merge_mode):
    from novolstm.convert import files

    model = keras.Sequential(
        [
            keras.Input((None, I)),
            keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True), merge_mode=merge_mode),
            keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True), merge_mode=merge_mode),
        ]
    )
    for sub in model.layers:
        randomize(sub, rng)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    if merge_mode == "concat":
        layers = files.read(tmp_path / "m.keras", "keras", "lstm")
        x = rng.normal(size=(B, T, I))
        assert_close(
            np_(model(x.astype("float32"))), _run_reference("lstm", layers, x), tol("float32", 2 * T), "concat"
        )
        return
    with pytest.raises(files.ConversionError, match=f"merge_mode='{merge_mode}'"):
        files.read(tmp_path / "m.keras", "keras", "lstm")
    # the weights alone cannot name the merge, but the second layer's input size shows it was no concat
    with pytest.raises(files.ConversionError, match=f"layer 1 takes inputs of size {H}, but layer 0 outputs {2 * H}"):
        files.read(tmp_path / "m.weights.h5", "keras", "lstm")


def test_the_original_novolstm_codes_weight_file_through_the_cli(tmp_path, rng):
    """The original NovoLSTM Keras code's model, saved as that code's Keras 2 era did (save_weights to .h5),
    converts on the command line to novolstm_reference weights that compute what it computes."""
    from novolstm.cli import main
    from novolstm.convert import files

    model = keras.Sequential([keras.Input((None, I)), keras.layers.RNN(OriginalNovoLSTM(H), return_sequences=True)])
    randomize(model.layers[0], rng)
    _legacy_weights(model, tmp_path / "original.h5")
    args = [
        "convert",
        str(tmp_path / "original.h5"),
        "-o",
        str(tmp_path / "c.safetensors"),
        "--from",
        "keras",
        "--to",
        "canonical",
        "--spec",
        "novolstm_reference",
    ]
    assert main(args) == 0
    params = files.read(tmp_path / "c.safetensors", "canonical", "novolstm_reference")["l0"]
    x = rng.normal(size=(B, T, I))
    ref, _ = novolstm.reference.run("novolstm_reference", params, x)
    assert_close(np_(model(x.astype("float32"))), ref, tol("float32", T), "original code vs novolstm_reference")
    # a Keras 3 weights file records variables by position only: refused, saying where names are kept
    model.save_weights(tmp_path / "original.weights.h5")
    assert main(args[:1] + [str(tmp_path / "original.weights.h5")] + args[2:]) == 2
