"""The Keras cell and layer as Keras users meet them: construction, initial weights,
canonical parameters, wrappers (Bidirectional, stacked cells, masking layers),
stateful use, the design document's example, a seed-002-shaped model that trains,
compiled paths and clear errors. Values are always checked against the float64 oracle.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import novolstm
from novolstm.testing import assert_close, computes_in, random_params, tolerance

B, T, I, H = 3, 6, 4, 5


def tol(dtype, steps=1, kind="outputs"):
    # novolstm.testing.PRECISION_LIMITS: Keras on JAX and torch holds float64 to float32's tolerance.
    return tolerance(computes_in("keras", dtype, keras.backend.backend()), steps=steps, kind=kind)


F64 = tol("float64", steps=T)


def np_(x):
    return keras.ops.convert_to_numpy(x)


def params_for(name, rng, input_size=I, units=H):
    return random_params(novolstm.load_spec(name), input_size, units, rng)


# ---------------------------------------------------------------- construction and weights


@pytest.mark.parametrize("name", novolstm.list_specs())
def test_variables_carry_canonical_names_and_the_seeded_initial_draws(name):
    spec = novolstm.load_spec(name)
    Cell = novolstm.get_cell("keras", name)
    cell = Cell(H, seed=3)
    cell.build((None, I))
    assert [v.name for v in cell.weights] == list(spec.param_names)
    assert all(v.trainable for v in cell.weights)
    expected = novolstm.init_params(spec, I, H, seed=3, dtype="float32")
    exported = cell.export_params()
    for n in spec.param_names:
        assert exported[n].dtype == np.float32
        np.testing.assert_array_equal(exported[n], expected[n], err_msg=n)
    assert (cell.state_size, cell.output_size) == ([H] * len(spec.state_names), H)


def test_unseeded_cells_follow_keras_set_random_seed():
    Cell = novolstm.get_cell("keras", "novolstm")

    def draw():
        cell = Cell(H)
        cell.build((None, I))
        return cell.export_params()["W_i"]

    keras.utils.set_random_seed(7)
    a, b = draw(), draw()
    keras.utils.set_random_seed(7)
    c = draw()
    assert not np.array_equal(a, b), "two unseeded cells must not start equal (Bidirectional relies on it)"
    np.testing.assert_array_equal(a, c)


def test_canonical_params_load_and_export_without_loss(rng):
    params = params_for("novolstm", rng)
    Cell = novolstm.get_cell("keras", "novolstm")
    cell64 = Cell.from_params(params, dtype="float64")
    assert cell64.units == H and cell64.input_size == I
    for n, v in cell64.export_params().items():
        assert v.dtype == np.float64
        np.testing.assert_array_equal(v, params[n], err_msg=n)
    # float32: export -> load -> export is exact
    cell32 = Cell.from_params(params)
    once = cell32.export_params()
    twice = Cell(H).load_params(once).export_params()
    for n in once:
        np.testing.assert_array_equal(twice[n], once[n], err_msg=n)
    # a trained Layer exports the same dict as its cell
    layer = novolstm.get_layer("keras", "novolstm")(H, dtype="float64")
    layer.cell.load_params(params)
    np.testing.assert_array_equal(layer.cell.export_params()["U_s"], params["U_s"])


def test_load_params_errors_name_the_problem(rng):
    params = params_for("lstm", rng)
    Cell = novolstm.get_cell("keras", "lstm")
    with pytest.raises(ValueError, match=r"params\['U_f'\]: expected shape \(5, 5\)"):
        Cell(H).load_params({**params, "U_f": np.zeros((5, 4))})
    with pytest.raises(ValueError, match=r"missing \['b_o'\]"):
        Cell(H).load_params({k: v for k, v in params.items() if k != "b_o"})
    with pytest.raises(ValueError, match=r"unexpected \['W_s'\]"):
        Cell(H).load_params({**params, "W_s": params["W_i"]})
    with pytest.raises(ValueError, match=r"params\['W_i'\]: expected shape \(4, 6\)"):
        Cell(6).load_params(params)  # units 6, weights for 5
    built = Cell(H)
    built.build((None, 7))
    with pytest.raises(ValueError, match=r"expected shape \(7, 5\)"):
        built.load_params(params)  # built for input 7, weights for input 4
    with pytest.raises(TypeError, match="dict"):
        Cell(H).load_params(list(params.values()))
    with pytest.raises(ValueError, match="not built"):
        Cell(H).export_params()


def test_construction_and_call_errors(rng):
    Cell = novolstm.get_cell("keras", "lstm")
    Layer = novolstm.get_layer("keras", "lstm")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="units"):
            Cell(bad)
    x = rng.normal(size=(B, T, I)).astype("float32")
    with pytest.raises(ValueError, match="ndim=3"):
        Layer(H)(x[:, 0])  # rank 2 into a sequence layer
    with pytest.raises(ValueError, match=r"expected inputs of shape \(batch, input_size\)"):
        Cell(H).build((None, T, I))
    layer = Layer(H)
    layer(x)
    with pytest.raises(ValueError, match="built for input_size 4"):
        layer(rng.normal(size=(B, T, I + 2)).astype("float32"))
    with pytest.raises(ValueError, match="expected 2 states"):
        Layer(H)(x, initial_state=[np.zeros((B, H), "float32")])
    with pytest.raises(ValueError, match=r"state 'c' must have shape \(batch, 5\)"):
        Layer(H)(x, initial_state=[np.zeros((B, H), "float32"), np.zeros((B, H + 1), "float32")])
    cell = Cell(H)
    cell.build((None, I))
    with pytest.raises(ValueError, match="built for input_size 4"):
        cell(x[:, 0, :3], [np.zeros((B, H), "float32")] * 2)


# ---------------------------------------------------------------- wrappers and options


@pytest.mark.parametrize("entry", ["Layer", "RNN(Cell)"])
def test_bidirectional_matches_the_reference_both_ways(entry, rng):
    name = "novolstm"
    p_fwd, p_bwd = params_for(name, rng), params_for(name, rng)
    x = rng.normal(size=(B, T, I))
    if entry == "Layer":
        inner = novolstm.get_layer("keras", name)(H, return_sequences=True, dtype="float64")
    else:
        inner = keras.layers.RNN(
            novolstm.get_cell("keras", name)(H, dtype="float64"), return_sequences=True, dtype="float64"
        )
    bi = keras.layers.Bidirectional(inner, merge_mode="concat", dtype="float64")
    bi.build((None, T, I))
    bi.forward_layer.cell.load_params(p_fwd)
    bi.backward_layer.cell.load_params(p_bwd)
    y = np_(bi(x))
    fwd, _ = novolstm.reference.run(name, p_fwd, x)
    bwd, _ = novolstm.reference.run(name, p_bwd, x[:, ::-1])
    assert_close(y, np.concatenate([fwd, bwd[:, ::-1]], axis=-1), F64, "Bidirectional outputs")


def test_stacked_cells_match_the_reference_chain(rng):
    p1, p2 = params_for("novolstm", rng, I, H), params_for("gru", rng, H, 3)
    x = rng.normal(size=(B, T, I))
    cells = [
        novolstm.get_cell("keras", "novolstm")(H, dtype="float64").load_params(p1),
        novolstm.get_cell("keras", "gru")(3, dtype="float64").load_params(p2),
    ]
    # A list of cells becomes StackedRNNCells, a layer of its own whose default float32 policy
    # would cast the float64 inputs: give it the dtype explicitly.
    stacked = keras.layers.StackedRNNCells(cells, dtype="float64")
    rnn = keras.layers.RNN(stacked, return_sequences=True, return_state=True, dtype="float64")
    y, *states = rnn(x)
    mid, (h1, c1) = novolstm.reference.run("novolstm", p1, x)
    out, (h2,) = novolstm.reference.run("gru", p2, mid)
    assert_close(np_(y), out, F64, "stacked outputs")
    (got_h1, got_c1), (got_h2,) = states  # one list of states per cell
    for a, b in zip([np_(s) for s in (got_h1, got_c1, got_h2)], [h1, c1, h2]):
        assert_close(a, b, F64, "stacked states")


@pytest.mark.parametrize("entry", ["Layer", "RNN(Cell)"])
def test_masking_layers_feed_the_mask(entry, rng):
    """keras.layers.Masking and Embedding(mask_zero=True) give the mask novolstm's rule applies."""
    name = "novolstm"
    params = params_for(name, rng)
    x = rng.normal(size=(B, T, I))
    x[0, 4:] = 0.0
    x[2, 1] = 0.0
    mask = (x != 0).any(-1)
    ref_y, _ = novolstm.reference.run(name, params, x, mask=mask)
    if entry == "Layer":
        rnn = novolstm.get_layer("keras", name)(H, return_sequences=True, dtype="float64")
    else:
        cell = novolstm.get_cell("keras", name)(H, dtype="float64")
        rnn = keras.layers.RNN(cell, return_sequences=True, zero_output_for_mask=True, dtype="float64")
    model = keras.Sequential([keras.Input((T, I), dtype="float64"), keras.layers.Masking(0.0, dtype="float64"), rnn])
    rnn.cell.load_params(params)
    y = np_(model(x))
    assert_close(y, ref_y, F64, "masked outputs")
    assert (y[~mask] == 0).all()

    # Embedding(mask_zero=True): token 0 is padding.
    tokens = rng.integers(1, 9, size=(B, T))
    tokens[1, 3:] = 0
    emb = keras.layers.Embedding(9, I, mask_zero=True, dtype="float64")
    seq = keras.Sequential(
        [
            keras.Input((T,), dtype="int32"),
            emb,
            novolstm.get_layer("keras", name)(H, return_sequences=True, dtype="float64"),
        ]
    )
    seq.layers[-1].cell.load_params(params)
    vectors = np_(emb(tokens))
    ref_y, _ = novolstm.reference.run(name, params, vectors, mask=tokens != 0)
    assert_close(np_(seq(tokens)), ref_y, F64, "outputs after Embedding(mask_zero=True)")


@pytest.mark.parametrize("entry", ["Layer", "RNN(Cell)"])
def test_stateful_carries_the_state_between_calls(entry, rng):
    name = "lstm"
    params = params_for(name, rng)
    x = rng.normal(size=(B, T, I))
    if entry == "Layer":
        rnn = novolstm.get_layer("keras", name)(
            H, stateful=True, return_sequences=True, return_state=True, dtype="float64"
        )
    else:
        cell = novolstm.get_cell("keras", name)(H, dtype="float64")
        rnn = keras.layers.RNN(cell, stateful=True, return_sequences=True, return_state=True, dtype="float64")
    rnn.build((B, T, I))
    rnn.cell.load_params(params)
    first, *_ = rnn(x[:, :2])
    second, h, c = rnn(x[:, 2:])
    ref_y, (ref_h, ref_c) = novolstm.reference.run(name, params, x)
    assert_close(np.concatenate([np_(first), np_(second)], axis=1), ref_y, F64, "outputs over two calls")
    assert_close(np_(h), ref_h, F64, "h")
    assert_close(np_(c), ref_c, F64, "c")
    rnn.reset_state()
    again, *_ = rnn(x[:, :2])
    assert_close(np_(again), ref_y[:, :2], F64, "after reset_state")


def test_variable_length_inputs_and_functional_models(rng):
    params = params_for("gru", rng)
    Layer = novolstm.get_layer("keras", "gru")
    inputs = keras.Input((None, I), dtype="float64")
    y, h = Layer(H, return_sequences=True, return_state=True, dtype="float64")(inputs)
    model = keras.Model(inputs, [y, h])
    model.layers[-1].cell.load_params(params)
    for steps in (1, 4, 9):
        x = rng.normal(size=(2, steps, I))
        ref_y, (ref_h,) = novolstm.reference.run("gru", params, x)
        got_y, got_h = model(x)
        assert_close(np_(got_y), ref_y, F64, f"outputs, {steps} steps")
        assert_close(np_(got_h), ref_h, F64, f"h, {steps} steps")


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_compiled_predict_equals_eager(jit_compile, rng):
    """model.predict runs the backend's compiled path (tf.function; with jit_compile, XLA)."""
    if keras.backend.backend() == "torch" and jit_compile:
        pytest.skip("torch.compile of a Keras model is not the path this backend supports")
    name = "novolstm"
    params = params_for(name, rng)
    x = rng.normal(size=(8, T, I)).astype("float32")
    model = keras.Sequential([keras.Input((T, I)), novolstm.get_layer("keras", name)(H, return_sequences=True)])
    model.layers[-1].cell.load_params(params)
    model.compile(jit_compile=jit_compile)
    compiled = model.predict(x, verbose=0, batch_size=8)
    ref_y, _ = novolstm.reference.run(name, params, x.astype("float64"))
    assert_close(compiled, ref_y, tol("float32", steps=T), "compiled outputs vs reference")
    assert_close(compiled, np_(model(x)), tol("float32", steps=T), "compiled vs eager")


# ---------------------------------------------------------------- the seeds' models


DESIGN_DOC_EXAMPLE = """
import tensorflow as tf

vocabulary_size = 10000  # size of your vocabulary
embedding_dim = 100      # size of word embeddings
sequence_length = 50     # length of input sequences

# Define the model
model = tf.keras.models.Sequential([
    tf.keras.layers.Embedding(input_dim=vocabulary_size, output_dim=embedding_dim, input_length=sequence_length),
    tf.keras.layers.RNN(NovoLSTM(units=128)),
    tf.keras.layers.Dense(units=3, activation='softmax')
])
"""


def test_design_document_example_runs_unchanged(rng):
    """shared/seeds/000 "Example Usage", verbatim, after one line.

    It uses tf.keras, which is Keras 3 since TensorFlow 2.16: Keras 3's Embedding
    accepts ``input_length`` only to warn that it is deprecated, so the example runs
    with that warning and an unbuilt model (built on first call).
    """
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the example imports tensorflow (tf.keras); the keras.* form below runs on every backend")
    namespace = {"NovoLSTM": novolstm.get_cell(backend="keras")}
    with pytest.warns(UserWarning, match="input_length"):
        exec(DESIGN_DOC_EXAMPLE, namespace)
    model = namespace["model"]
    probs = model.predict(rng.integers(0, 10000, size=(4, 50)), verbose=0)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert model.layers[1].cell.units == 128 and model.layers[1].cell.spec_name == "novolstm"


def test_design_document_example_in_keras_3_spelling(rng):
    NovoLSTM = novolstm.get_cell(backend="keras")
    model = keras.models.Sequential(
        [
            keras.layers.Embedding(input_dim=10000, output_dim=100),
            keras.layers.RNN(NovoLSTM(units=128)),
            keras.layers.Dense(units=3, activation="softmax"),
        ]
    )
    probs = model.predict(rng.integers(0, 10000, size=(4, 50)), verbose=0)
    assert probs.shape == (4, 3)


@pytest.mark.parametrize("entry", ["RNN(Cell)", "Layer"])
def test_seed_002_shaped_model_learns_a_synthetic_task(entry):
    """Embedding -> RNN(cell) -> Dense(sigmoid), binary cross-entropy, Adam (shared/seeds/002)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    words, steps, n = 30, 12, 384
    x = rng.integers(2, words, size=(n, steps))
    lengths = rng.integers(4, steps + 1, size=n)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0  # zero padding, masked
    y = (x == 2).any(axis=1) | (x == 3).any(axis=1)  # is a marker word anywhere in the sequence?
    rnn = (
        keras.layers.RNN(novolstm.get_cell("keras")(16, seed=0))
        if entry == "RNN(Cell)"
        else novolstm.get_layer("keras")(16, seed=0)
    )
    model = keras.Sequential(
        [
            keras.Input((steps,), dtype="int32"),
            keras.layers.Embedding(words, 8, mask_zero=True),
            rnn,
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.Adam(0.02), metrics=["accuracy"])
    history = model.fit(x, y.astype("float32"), epochs=6, batch_size=64, verbose=0)
    loss = history.history["loss"]
    assert loss[-1] < 0.6 * loss[0], f"the loss must fall: {loss}"
    assert history.history["accuracy"][-1] > 0.8


@pytest.mark.parametrize("name", novolstm.list_specs())
def test_generated_source_imports_only_keras_and_numpy(name):
    import ast

    source = novolstm.generate_source(name, backend="keras")
    assert "Generated, do not edit" in source and novolstm.load_spec(name).hash in source
    tree = ast.parse(source)
    # Keras 3 has no backend-neutral gradient API nor XLA switch: _with_pullback (behind vjp_numpy)
    # and the XLA loop of Layer(jit_compile=True) (_compiled_loop, _xla_pair) alone ask which
    # backend Keras runs on and import that framework. Everything else is keras.ops.
    seams = {"_with_pullback", "_compiled_loop", "_xla_pair"}
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in seams]
    assert {n.name for n in found} == seams
    for node in found:
        tree.body.remove(node)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"keras", "numpy", "zlib"}, imported
    # The cell's code (not its comments) names no framework, never asks Keras which backend
    # runs, and uses no framework LayerNorm.
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"tf", "tensorflow", "jax", "jnp", "torch"}, names
    assert not attributes & {"LayerNormalization", "layer_normalization", "hard_sigmoid"}, attributes
    assert "backend.backend(" not in ast.unparse(tree) and "config.backend(" not in ast.unparse(tree)


def test_save_module_and_load_into_keras_layer_and_cell(tmp_path):
    Layer = novolstm.get_layer("keras", spec="novolstm")
    x = np.random.default_rng(7).normal(size=(2, 5, 3)).astype("float32")
    layer = Layer(4, seed=1, return_sequences=True)
    y = keras.ops.convert_to_numpy(layer(x))
    path = tmp_path / "layer.safetensors"
    novolstm.save_module(layer, path)
    other = novolstm.load_into(Layer(4, seed=2, return_sequences=True), path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(other(x)), y)
    cell = novolstm.load_into(novolstm.get_cell("keras", spec="novolstm")(4), path)  # a cell takes a layer's file
    for name, value in layer.export_canonical().items():
        np.testing.assert_array_equal(cell.export_canonical()[name], value)
