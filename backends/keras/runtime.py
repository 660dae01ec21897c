"""The Keras 3 runtime: what every generated Keras module holds besides its spec's own code.

Generated modules inline this file (see ``novolstm.codegen.inline_runtime``): the block
of stand-ins below is replaced by the spec's constants, ``init_params`` and the generated
``fuse``, ``prologue`` and ``step``; everything else is this code, verbatim.
"""

import zlib  # noqa: F401 - read by the initializers that generated modules inline here

import keras
import numpy as np
from keras import ops

# The mixin keras.layers.RNN recognises (isinstance) to draw one dropout mask per call before
# its loop and reset it after, as for keras.layers.LSTMCell; Keras exports it nowhere public.
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

# --- spec: generated modules replace this block with the spec's constants and functions
from novolstm.init import init_from_table

SPEC_NAME = "stand-in"
SPEC_HASH = ""
#: The spec's class_name: the name of the layer class (the cell's adds "Cell").
CLASS_NAME = "StandIn"
STATE_NAMES: tuple[str, ...] = ("h",)
PARAM_NAMES: tuple[str, ...] = ()
PARAM_TABLE: dict = {}
INPUT_PARAM = "W"
UNITS_PARAM = "W"
BIAS_NAMES: tuple[str, ...] = ()
#: widths, in units, of the prologue values the step reads at each timestep
HOISTED_WIDTHS: tuple[int, ...] = ()
#: Where the spec is a linear recurrence (novolstm.scan.linear_recurrence), the index in STATE_NAMES
#: of the state its output is, so that Layer may run keras.ops.associative_scan; else None.
LINEAR_SCAN: int | None = None


def init_params(input_size, units, seed=0, dtype="float64"):
    """Canonical parameters (NumPy arrays), drawn as novolstm.init_params draws them."""
    return init_from_table(PARAM_TABLE, input_size, units, seed, dtype)


def fuse(params):
    raise NotImplementedError("generated per spec")


def prologue(params, fused, x, H, masks=None):
    raise NotImplementedError("generated per spec")


def step(params, fused, hoisted, state, H, masks=None):
    raise NotImplementedError("generated per spec")


# --- end of spec block


def _linear(a, w, b=None, masks=None):
    # One GEMM over every leading axis (batch, or batch and time); with dropout masks (one per
    # weight block of w), one GEMM per block on the operand times its own mask.
    if masks is None:
        out = ops.matmul(a, w)
    else:
        blocks = ops.split(w, len(masks), axis=-1) if len(masks) > 1 else [w]
        out = ops.concatenate([ops.matmul(a * m, wb) for m, wb in zip(masks, blocks)], axis=-1)
    return out if b is None else out + b


def _masks(masks, names):
    # The masks of the weights ``names`` (a fused matrix's blocks), or None without dropout.
    return None if masks is None else [masks[name] for name in names]


def _normalize_units(z, eps):
    # LayerNorm without its affine part: population variance of the centred values (two
    # passes, never E[z^2] - E[z]^2), epsilon inside the square root.
    c = z - ops.mean(z, axis=-1, keepdims=True)
    return c * ops.rsqrt(ops.mean(c * c, axis=-1, keepdims=True) + eps)


def _softmax(z):
    # Over the units axis. Every backend's kernel subtracts the row maximum (tf.nn.softmax,
    # jax.nn.softmax, torch.softmax), and one fused op has a cheap gradient in a while loop.
    if z.shape[-1] == 1:
        return ops.ones_like(z)  # exactly softmax of one unit (gradient 0), which ops.softmax warns about
    return ops.softmax(z, axis=-1)


def _softplus(z):
    # max(z, 0) + log1p(exp(-|z|)): exp never overflows, and no threshold switches to z.
    return ops.relu(z) + ops.log1p(ops.exp(-ops.abs(z)))


def _gelu(z):
    # The exact GELU, z (1 + erf(z / sqrt 2)) / 2: ops.gelu(approximate=False) on TensorFlow
    # was 4.8e-9 off in float64 (a float32 constant), far beyond the float64 tolerance.
    return 0.5 * z * (1.0 + ops.erf(z * 0.7071067811865476))


def _check_params(params, input_size, units):
    expected = {
        name: tuple({"input": input_size, "units": units}[d] for d in dims)
        for name, (dims, _, _) in PARAM_TABLE.items()
    }
    if set(params) != set(expected):
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        raise ValueError(
            f"params for {SPEC_NAME!r}: missing {missing}, unexpected {extra}; expected {sorted(expected)}"
        )
    for name, shape in expected.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(
                f"params[{name!r}]: expected shape {shape} (input={input_size}, units={units}), got {tuple(np.shape(params[name]))}"
            )


def _constant(value):
    def initializer(shape, dtype=None):
        return ops.convert_to_tensor(np.asarray(value, dtype=keras.backend.standardize_dtype(dtype)))

    return initializer


#: What each parameter is to Keras' kernel_/recurrent_/bias_ arguments: input projections are
#: kernels, units-by-units ones recurrent kernels, projection biases biases; any other parameter
#: (LayerNorm gains, peephole weights) keeps the spec's initializer and takes no regularizer.
ROLES = {
    name: "bias" if name in BIAS_NAMES else {("input", "units"): "kernel", ("units", "units"): "recurrent"}.get(dims)
    for name, (dims, _, _) in PARAM_TABLE.items()
}
#: The weights each dropout mask belongs to, in the spec's order (LSTMCell's gate order i, f, c, o
#: for the LSTM spec): the k-th input mask multiplies x where it enters the k-th kernel, the k-th
#: recurrent mask the state where it enters the k-th recurrent kernel.
KERNEL_NAMES = tuple(name for name, role in ROLES.items() if role == "kernel")
RECURRENT_NAMES = tuple(name for name, role in ROLES.items() if role == "recurrent")
#: The keras.layers.LSTMCell arguments Cell takes, with their defaults (see Cell).
NATIVE_ARGUMENTS = {
    "dropout": 0.0,
    "recurrent_dropout": 0.0,
    "use_bias": True,
    **{
        f"{role}_{kind}": None
        for kind in ("initializer", "regularizer", "constraint")
        for role in ("kernel", "recurrent", "bias")
    },
}
_GETTERS = {"initializer": keras.initializers, "regularizer": keras.regularizers, "constraint": keras.constraints}


@keras.saving.register_keras_serializable(package="novolstm", name=CLASS_NAME + "Cell")
class Cell(keras.layers.Layer, DropoutRNNCell):
    """The spec's cell (``SPEC_NAME``) as a Keras RNN cell, generated by novolstm: use it in keras.layers.RNN.

    Args:
        units: size of the state and of the output.
        seed: the initial weights are ``novolstm.init_params(spec, input_size, units,
            seed)``; ``None`` draws a seed from NumPy's global generator (which
            ``keras.utils.set_random_seed`` seeds), as Keras' unseeded initializers do. Also
            the seed of the dropout masks, as in keras.layers.LSTMCell.
        dropout: as keras.layers.LSTMCell: the fraction of the inputs dropped in training, one
            mask per call shared by every gate and timestep.
        recurrent_dropout: as keras.layers.LSTMCell: the fraction of each state dropped in training
            where it enters a recurrent projection (never where it is used elementwise). A
            nonzero rate switches both dropouts to one mask per weight (per gate), as
            LSTMCell's ``implementation=1`` does; masks are drawn once per call.
        use_bias: False holds the projection biases (BIAS_NAMES) at zero, not trained.
        kernel_initializer, recurrent_initializer, bias_initializer: None draws the spec's
            initializers; a Keras initializer replaces them for the input projections, the
            recurrent ones and the projection biases (ROLES).
        kernel_regularizer, recurrent_regularizer, bias_regularizer, kernel_constraint,
            recurrent_constraint, bias_constraint: as keras.layers.LSTMCell, by the same roles.
        **kwargs: as keras.layers.Layer (``dtype="float64"``, ``name``, ``activity_regularizer``, ...).

    With ``keras.layers.RNN(cell, return_sequences=True)`` and a mask, pass
    ``zero_output_for_mask=True`` to get zeros on masked steps (novolstm's rule);
    ``Layer`` does it by itself.

    Examples:
        >>> rnn = keras.layers.RNN(Cell(4, seed=0), return_sequences=True, return_state=True)
        >>> outputs, *state = rnn(np.ones((2, 5, 3), "float32"))
        >>> tuple(outputs.shape), len(state) == len(STATE_NAMES)
        ((2, 5, 4), True)
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES
    #: The spec's TOML text, which get_config carries when set (novolstm sets it for specs
    #: that are not built in, so that a saved model regenerates the cell from it).
    spec_text = None

    def __init__(self, units, seed=None, **kwargs):
        native = {key: kwargs.pop(key, default) for key, default in NATIVE_ARGUMENTS.items()}
        kwargs.pop("spec", None)  # the spec's text: read by whatever regenerated this class from it
        spec_hash = kwargs.pop("spec_hash", SPEC_HASH)
        if spec_hash != SPEC_HASH:
            raise ValueError(
                f"this {SPEC_NAME!r} cell was saved from a spec with sha256 {spec_hash}, "
                f"but the generated code is for sha256 {SPEC_HASH}: load it with the spec it was saved with"
            )
        super().__init__(**kwargs)
        if isinstance(units, bool) or int(units) != units or units < 1:
            raise ValueError(f"units: expected a positive integer, got {units!r}")
        self.units = int(units)
        self.seed = None if seed is None else int(seed)
        self.dropout = float(native["dropout"])
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1], got {native['dropout']!r}")
        self.recurrent_dropout = float(native["recurrent_dropout"])
        if not 0.0 <= self.recurrent_dropout <= 1.0:
            raise ValueError(f"recurrent_dropout: expected a rate in [0, 1], got {native['recurrent_dropout']!r}")
        if self.recurrent_dropout > 0:  # LSTMCell's implementation=1: a mask per gate, for both
            self.dropout_mask_count = max(len(KERNEL_NAMES), len(RECURRENT_NAMES), 1)
        if self.dropout > 0 or self.recurrent_dropout > 0:  # a variable: created only when it is used
            self.seed_generator = keras.random.SeedGenerator(seed=self.seed)
        self.use_bias = bool(native["use_bias"])
        for key, value in native.items():
            kind = key.rsplit("_", 1)[-1]
            if kind in _GETTERS:
                setattr(self, key, _GETTERS[kind].get(value))
        self.input_size = None
        self.state_size = [self.units] * len(STATE_NAMES)
        self.output_size = self.units

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"{SPEC_NAME} Cell: expected inputs of shape (batch, input_size) with a known input_size, got {input_shape}"
            )
        self.input_size = int(input_shape[-1])
        seed = self.seed if self.seed is not None else int(np.random.randint(0, 2**31 - 1))
        initial = init_params(self.input_size, self.units, seed, "float64")
        for name, value in initial.items():
            # One variable per canonical tensor, under its canonical name.
            role, fixed = ROLES[name], ROLES[name] == "bias" and not self.use_bias
            initializer = (role and getattr(self, f"{role}_initializer")) or _constant(value)
            variable = self.add_weight(
                shape=value.shape,
                name=name,
                initializer="zeros" if fixed else initializer,
                regularizer=None if (fixed or not role) else getattr(self, f"{role}_regularizer"),
                constraint=None if (fixed or not role) else getattr(self, f"{role}_constraint"),
                trainable=not fixed,
            )
            setattr(self, name, variable)

    def tensors(self):
        """The canonical parameters as tensors (name -> tensor), in the compute dtype."""
        return {name: getattr(self, name).value for name in PARAM_TABLE}

    def call(self, inputs, states, training=None):
        states = self.check_state(inputs, states)
        input_masks, recurrent_masks = self._weight_masks(inputs, states[0], training)
        if input_masks is None and training and 0.0 < self.dropout < 1.0:
            inputs = inputs * self.get_dropout_mask(inputs)
        params = self.tensors()
        fused = fuse(params)
        hoisted = prologue(params, fused, inputs, self.units, input_masks)
        output, new_state = step(params, fused, hoisted, states, self.units, recurrent_masks)
        return output, list(new_state)

    def _weight_masks(self, inputs, state, training):
        """``(input masks, recurrent masks)``, each None or a dict of weight name -> mask: with a
        nonzero recurrent_dropout in training, one mask per weight, as LSTMCell's
        ``implementation=1`` (the input's stay None when dropout is 0). Without, both are None
        and a nonzero dropout is one mask on the inputs, as LSTMCell's default."""
        if not (training and 0.0 < self.recurrent_dropout < 1.0):
            return None, None
        input_masks = None
        if 0.0 < self.dropout < 1.0:
            input_masks = dict(zip(KERNEL_NAMES, self.get_dropout_mask(inputs)))
        return input_masks, dict(zip(RECURRENT_NAMES, self.get_recurrent_dropout_mask(state)))

    def check_state(self, inputs, states):
        """The states as a tuple, after checking the sizes the graph cannot check itself."""
        if inputs.shape[-1] is not None and inputs.shape[-1] != self.input_size:
            raise ValueError(
                f"{SPEC_NAME} Cell: built for input_size {self.input_size}, got inputs of shape {tuple(inputs.shape)}"
            )
        states = tuple(states) if isinstance(states, (list, tuple)) else (states,)
        if len(states) != len(STATE_NAMES):
            raise ValueError(f"{SPEC_NAME} Cell: expected {len(STATE_NAMES)} states {STATE_NAMES}, got {len(states)}")
        for name, s in zip(STATE_NAMES, states):
            if len(s.shape) != 2 or s.shape[-1] not in (None, self.units):
                raise ValueError(
                    f"{SPEC_NAME} Cell: state {name!r} must have shape (batch, {self.units}), got {tuple(s.shape)}"
                )
        return states

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype) for _ in STATE_NAMES]

    def get_config(self):
        config = {**super().get_config(), "units": self.units, "seed": self.seed, **self.native_config()}
        config["spec_hash"] = SPEC_HASH
        return config if self.spec_text is None else {**config, "spec": self.spec_text}

    def native_config(self):
        """The keras.layers.LSTMCell arguments (NATIVE_ARGUMENTS) that differ from their defaults, serialized."""
        config = {}
        for key, default in NATIVE_ARGUMENTS.items():
            value = getattr(self, key)
            kind = key.rsplit("_", 1)[-1]
            if value != default:
                config[key] = _GETTERS[kind].serialize(value) if kind in _GETTERS else value
        return config

    def load_params(self, params):
        """Set the variables from canonical parameters (name -> array); builds the cell if needed.

        Values are cast to the variables' dtype: lossless for a float64 cell.
        """
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict of canonical names to arrays, got {type(params).__name__}")
        input_size = self.input_size
        if input_size is None and INPUT_PARAM in params:  # unbuilt: the input size comes from the weights
            input_size = int(np.shape(params[INPUT_PARAM])[PARAM_TABLE[INPUT_PARAM][0].index("input")])
        _check_params(params, input_size, self.units)
        if not self.use_bias and any(np.any(np.asarray(params[name])) for name in BIAS_NAMES):
            raise ValueError(f"{SPEC_NAME} Cell: use_bias=False, so the biases {list(BIAS_NAMES)} must be zero")
        if not self.built:
            self.build((None, input_size))
            self.built = True
        for name in PARAM_TABLE:
            variable = getattr(self, name)
            variable.assign(np.asarray(params[name], dtype=keras.backend.standardize_dtype(variable.dtype)))
        return self

    def export_params(self):
        """The canonical parameters as NumPy arrays (name -> array), in the variables' dtype."""
        if not self.built:
            raise ValueError(f"{SPEC_NAME} Cell: not built yet, so it has no weights; call it or load_params first")
        return {name: np.array(ops.convert_to_numpy(ops.copy(getattr(self, name)))) for name in PARAM_TABLE}

    # The names every backend's cells and layers share (novolstm.save_module, novolstm.load_into).
    def load_canonical(self, params):
        """As ``load_params``."""
        return self.load_params(params)

    def export_canonical(self):
        """As ``export_params``."""
        return self.export_params()

    @classmethod
    def from_params(cls, params, **kwargs):
        """A built cell holding ``params`` (canonical names); ``units`` comes from their shapes."""
        units = int(np.shape(params[UNITS_PARAM])[-1])
        return cls(units, **kwargs).load_params(params)


class _Step:
    """What keras.layers.RNN loops over inside ``Layer``.

    Its input at each timestep is x_t, or with ``hoisted`` the prologue's values
    (computed for all timesteps before the loop) side by side; then, for a masked
    call, the mask as one more column. The fused matrices come built once per call.
    It applies novolstm's masking rule itself: a masked step keeps the state and
    outputs zeros, and one more state carries the last real output.
    """

    def __init__(self, units, input_size, params, fused, hoisted, masked, masks=(None, None)):
        H = units
        self.units, self.params, self.fused, self.hoisted, self.masked = H, params, fused, hoisted, masked
        self.input_masks, self.recurrent_masks = masks
        self.state_size = [H] * len(STATE_NAMES) + ([H] if masked else [])
        self.output_size = H
        ends = [H * sum(HOISTED_WIDTHS[: k + 1]) for k in range(len(HOISTED_WIDTHS))] if hoisted else [input_size]
        self.cuts = ends if masked else ends[:-1]

    def call(self, inputs, states):
        pieces = ops.split(inputs, self.cuts, axis=-1) if self.cuts else [inputs]
        real = pieces.pop() > 0.5 if self.masked else None  # (batch, 1): the mask column, 1.0 on real steps
        if self.hoisted:
            values = tuple(pieces)
        else:
            values = prologue(self.params, self.fused, pieces[0], self.units, self.input_masks)
        states = tuple(states)
        state = states[:-1] if self.masked else states
        output, new_state = step(self.params, self.fused, values, state, self.units, self.recurrent_masks)
        if not self.masked:
            return output, list(new_state)
        new_state = [ops.where(real, new, old) for new, old in zip(new_state, state)]
        return ops.where(real, output, ops.zeros_like(output)), new_state + [ops.where(real, output, states[-1])]

    __call__ = call


@keras.saving.register_keras_serializable(package="novolstm", name=CLASS_NAME)
class Layer(keras.layers.RNN):
    """The spec's cell over whole sequences, as keras.layers.LSTM is to keras.layers.LSTMCell.

    A keras.layers.RNN of ``Cell`` (``layer.cell``: variables, load_params,
    export_params) that builds the fused matrices once per call rather than once
    per step. Masked steps keep the state and output zeros; with
    ``return_sequences=False`` the output is that of each sequence's last real
    step, as in Keras.

    Args:
        units, seed: as ``Cell``.
        hoist_input: compute the state-independent part of the step (above all the
            input projection) for all timesteps as one GEMM before the loop, rather
            than inside each step. Measured slower on CPU with every Keras backend
            (the (batch, time, k * units) intermediate costs more memory traffic than
            the per-step matmuls it replaces), so off by default. (The XLA loop under a
            gradient tape hoists whatever this says: there it measured faster.)
        jit_compile: on TensorFlow, True runs the loop as one XLA computation (as
            ``tf.function(jit_compile=True)``) and, where a gradient tape records the
            call, its gradient as another (the loop recomputed and differentiated inside
            XLA), for a compile per input shape (seconds); False runs TensorFlow's while
            loop. None (auto, the default) chooses per call where each measured faster
            (see _xla_wins): XLA without a tape, and under a tape only for small
            steps, where TensorFlow's per-op cost outweighs XLA's recomputed forward.
            Training with dropout keeps TensorFlow's loop. Keras' JAX backend compiles
            with XLA anyway and its torch backend has no XLA: there the option does nothing.
        return_sequences, return_state, go_backwards, stateful, unroll: as keras.layers.RNN.
        scan: True runs a linear recurrence (LINEAR_SCAN) as keras.ops.associative_scan
            (see _scan; not with dropout or unroll); None (auto) and False run the loop, which
            measured faster on the CPU (docs/scan.md).

    Examples:
        >>> layer = Layer(4, seed=0, return_sequences=True)
        >>> tuple(layer(np.ones((2, 5, 3), "float32")).shape)
        (2, 5, 4)
    """

    def __init__(
        self,
        units,
        seed=None,
        hoist_input=False,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        jit_compile=None,
        scan=None,
        **kwargs,
    ):
        kwargs.pop("spec", None)  # as in Cell
        if scan not in (None, True, False):
            raise ValueError(f"scan: expected None (auto), True or False, got {scan!r}")
        if scan and LINEAR_SCAN is None:
            raise ValueError(
                f"scan=True: spec {SPEC_NAME!r} is not a linear recurrence (novolstm.scan.linear_recurrence)"
            )
        native = {key: kwargs.pop(key) for key in NATIVE_ARGUMENTS if key in kwargs}
        cell = Cell(
            units,
            seed=seed,
            **native,
            spec_hash=kwargs.pop("spec_hash", SPEC_HASH),
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name="cell",
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            **kwargs,
        )
        self.hoist_input = bool(hoist_input)
        if jit_compile not in (None, True, False):
            raise ValueError(f"jit_compile: expected None (auto), True or False, got {jit_compile!r}")
        self.jit_compile = None if jit_compile is None else bool(jit_compile)
        self.scan = scan
        self.input_spec = keras.layers.InputSpec(ndim=3)

    @property
    def units(self):
        return self.cell.units

    def load_canonical(self, params):
        """Set the cell's variables from canonical parameters (see Cell.load_params); returns the layer."""
        self.cell.load_params(params)
        return self

    def export_canonical(self):
        """The cell's canonical parameters as NumPy arrays."""
        return self.cell.export_params()

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        cell = self.cell
        if sequences.shape[-1] is not None and sequences.shape[-1] != cell.input_size:
            raise ValueError(
                f"{SPEC_NAME} Layer: built for input_size {cell.input_size}, got inputs of shape {tuple(sequences.shape)}"
            )
        cell.check_state(sequences[:, 0], initial_state)
        # One set of masks for every timestep, as keras.layers.LSTM.
        masks = cell._weight_masks(sequences[:, 0, :], initial_state[0], training)
        if masks[0] is None and training and 0.0 < cell.dropout < 1.0:
            sequences = sequences * ops.expand_dims(cell.get_dropout_mask(sequences[:, 0, :]), 1)
        # Auto (scan=None) keeps the loop: on the CPU it measured faster (docs/scan.md), and
        # Keras does not say portably where a call will run.
        if LINEAR_SCAN is not None and self.scan and masks == (None, None) and not self.unroll:
            return _scan(cell.tensors(), sequences, initial_state, mask, go_backwards=self.go_backwards)
        if self.scan:
            raise ValueError(
                "scan=True, but the parallel scan cannot run this call: it runs without dropout and unroll"
            )
        options = dict(
            hoist_input=self.hoist_input,
            training=training,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
            stateful=self.stateful,
            unroll=self.unroll,
            masks=masks,
        )
        if self.jit_compile is False:
            return _loop(cell.tensors(), sequences, initial_state, mask, **options)
        return _compiled_loop(cell.tensors(), sequences, initial_state, mask, auto=self.jit_compile is None, **options)

    def get_config(self):
        config = super().get_config()
        del config["cell"], config["zero_output_for_mask"]
        return {
            **config,
            "units": self.cell.units,
            "seed": self.cell.seed,
            "hoist_input": self.hoist_input,
            "jit_compile": self.jit_compile,
            "scan": self.scan,
            **self.cell.native_config(),
            "spec_hash": SPEC_HASH,
            **({} if self.cell.spec_text is None else {"spec": self.cell.spec_text}),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _loop(params, sequences, initial_state, mask, hoist_input=False, training=False, masks=(None, None), **rnn_options):
    """``(last_output, outputs, final_state)`` of the cell with ``params`` (canonical name -> tensor)
    over ``sequences`` (batch, time, input): a function of tensors only, so Keras' backend can
    differentiate it with respect to the parameters as well as the inputs and initial state.
    ``masks``: the input and recurrent dropout masks per weight (see Cell._weight_masks).
    ``rnn_options``: return_sequences, go_backwards, stateful, unroll, as keras.layers.RNN."""
    units = int(params[UNITS_PARAM].shape[-1])
    fused = fuse(params)  # once per call, not once per step
    input_masks, recurrent_masks = masks
    if hoist_input:
        over_time = None if input_masks is None else {k: ops.expand_dims(m, 1) for k, m in input_masks.items()}
        columns = prologue(params, fused, sequences, units, over_time)
    else:
        columns = (sequences,)
    initial_state = list(initial_state)
    if mask is not None:
        # The mask travels as one more input column and the step applies the rule itself:
        # Keras' backends mask differently (JAX's unrolled loop repeats the previous output).
        columns += (ops.expand_dims(ops.cast(mask, columns[0].dtype), -1),)
        initial_state.append(ops.zeros_like(initial_state[0]))  # the last real output
    inputs = columns[0] if len(columns) == 1 else ops.concatenate(columns, axis=-1)
    # keras.layers.RNN's own loop over the step: the backend's rnn (tf.while_loop, lax.scan, ...).
    input_size = int(params[INPUT_PARAM].shape[PARAM_TABLE[INPUT_PARAM][0].index("input")])
    loop = keras.layers.RNN(
        _Step(units, input_size, params, fused, hoist_input, mask is not None, masks), **rnn_options
    )
    last_output, outputs, states = loop.inner_loop(inputs, initial_state, None, training)
    if mask is not None:
        last_output, states = states[-1], states[:-1]
    return last_output, outputs, list(states)


#: The auto rule's bound (jit_compile=None, _xla_wins) on a step, in batch x units x
#: (input_size + units), a step's multiply-adds per projection: at or below it the XLA loop and
#: its gradient, above it TensorFlow's (but see _XLA_FORWARD_MIN_BATCH). Under a tape XLA pays a second forward
#: (its gradient recomputes the loop inside XLA: TensorFlow cannot differentiate an XLA loop
#: from outside) and saves TensorFlow's per-op cost per step; the first grows with the step's
#: GEMMs, the second does not. Measured (NovoLSTM, float32, 50 steps, input_size = units,
#: one thread, CPU time, interleaved medians of 5; docs/keras.md): XLA / TensorFlow forward
#: and backward 0.38 at 8 x 64 x 128 (6.6e4), 0.77 at 32 x 128 x 256 (1.0e6), 0.89 and 1.11
#: at 4.2e6 (128 x 128 x 256, 32 x 256 x 512), 1.01 and 1.36 at 1.7e7, 1.17 at 6.7e7; the
#: published benchmark (two threads, idle): 0.84 at 32 x 128 x 256, 1.80 at 128 x 512 x 1024.
_XLA_MAX_WORK = 4_000_000
#: Without a tape, the batch from which the auto rule runs XLA's loop above _XLA_MAX_WORK:
#: there XLA's forward measured 0.81 of TensorFlow's at 128 x 256 x 512 and 1.06 at 128 x 512 x
#: 1024 (one thread; 0.82 at that throughput shape in the published benchmark, two threads),
#: but 1.19 and 1.38 at 32 x 512 x 1024 and 8 x 512 x 1024.
_XLA_FORWARD_MIN_BATCH = 128
#: The batch the auto rule assumes where the call's batch is not known (a model traced for
#: any batch size): Keras' default batch_size.
_UNKNOWN_BATCH = 32


def _xla_wins(batch, units, input_size, dtype, taped):
    """Whether the auto rule (Layer's ``jit_compile=None``) runs the XLA loop on TensorFlow.

    In float32 and float64: XLA where the step is small (_XLA_MAX_WORK), and without a
    tape also from a batch of _XLA_FORWARD_MIN_BATCH (XLA's forward measured 1.2 to 6.5
    times faster at the benchmark's latency, typical and throughput shapes, but 1.2 and 1.4
    times slower at 32 x 512 and 8 x 512, where each step's GEMM has few rows). In bfloat16 and
    float16, which XLA on the CPU computes without fast kernels: TensorFlow's loop under a
    tape (XLA's gradient measured 1.2 to 4.6 times slower at all three shapes), and without
    one XLA only where the step is small (XLA 1.3 and 1.9 times faster at the latency and
    typical shapes, 1.7 times slower at the throughput shape).

    Args:
        batch: the call's batch size, or None where unknown (counted as _UNKNOWN_BATCH).
        units: the layer's units.
        input_size: the size of each timestep's input.
        dtype: the compute dtype's name ("float32", "bfloat16", ...).
        taped: whether a gradient tape may record the call.

    Returns:
        True for the XLA loop, False for TensorFlow's.
    """
    batch = _UNKNOWN_BATCH if batch is None else int(batch)
    small = batch * units * (input_size + units) <= _XLA_MAX_WORK
    if dtype in ("float32", "float64"):
        return small or (not taped and batch >= _XLA_FORWARD_MIN_BATCH)
    return small and not taped


def _compiled_loop(params, sequences, initial_state, mask, auto=False, **options):
    """``_loop`` as XLA computations on TensorFlow (see Layer's ``jit_compile``); ``_loop`` itself
    on Keras' other backends, for training with dropout, and with ``auto`` where _xla_wins
    chooses TensorFlow's loop for this call.

    The forward is one XLA computation. Its gradient, where a tape records the call, is a second
    one that recomputes the forward under a tape inside XLA and runs its backward there:
    TensorFlow cannot differentiate an XLA loop from outside it, and that recompute measured
    cheaper than TensorFlow's own while loop and its gradient (about 6 times at the latency shape).
    """
    masks = options.pop("masks", (None, None))
    if (
        keras.backend.backend() != "tensorflow"
        or masks != (None, None)
        or not all(isinstance(v, (bool, type(None))) for v in options.values())
    ):
        # Another backend, dropout masks (training), or a symbolic training flag: the plain loop.
        return _loop(params, sequences, initial_state, mask, masks=masks, **options)
    import tensorflow as tf
    from tensorflow.python.eager import record  # TensorFlow's own test of "may a tape record this"

    taped = record.could_possibly_record()
    if auto:
        dtype, units = keras.backend.standardize_dtype(sequences.dtype), int(params[UNITS_PARAM].shape[-1])
        if not _xla_wins(sequences.shape[0], units, sequences.shape[-1], dtype, taped):
            return _loop(params, sequences, initial_state, mask, **options)
    if taped:
        # Under a tape the XLA loop hoists the input projection whatever hoist_input says: one
        # GEMM over every timestep before the loop, and in the gradient one for the inputs' and
        # one for the kernels' gradients after it, rather than two per step. Forward+backward
        # CPU time, NovoLSTM float32, 50 steps, one thread: 0.63 at 8 x 256, 0.76 at 32 x 512,
        # 0.88 at 32 x 128, 1.02 at 128 x 512 of the XLA loop's without.
        options = {**options, "hoist_input": True}

    names, count, masked = tuple(params), len(initial_state), mask is not None
    key = (names, count, masked, tuple(sorted(options.items())))
    if key not in _XLA_LOOPS:
        _XLA_LOOPS[key] = _xla_pair(names, count, masked, options)
    forward, backward = _XLA_LOOPS[key]

    # A graph traced with no tape recording that is differentiated later (a tf.function called
    # under a tape after its first trace) takes its gradient outside XLA: TensorFlow refuses an
    # XLA gradient there ("TensorList crossing the XLA/TF boundary").
    backward = backward if taped else tf.function(backward.python_function)

    @tf.custom_gradient
    def run(*flat):
        def gradient(*upstream):
            grads = iter(backward(list(flat), list(upstream)))
            return [next(grads) if t.dtype.is_floating else None for t in flat]  # None: the bool mask

        with record.stop_recording():  # the gradient is ``gradient``: no tape may look inside XLA
            return forward(*flat), gradient

    flat = [params[name] for name in names] + [sequences] + list(initial_state) + ([mask] if masked else [])
    last, outputs, *final = run(*flat)
    return last, outputs, list(final)


#: (parameter names, state count, masked, loop options) -> the XLA forward and backward
_XLA_LOOPS: dict = {}


def _xla_pair(names, count, masked, options):
    """The loop over flat tensors (parameters in ``names`` order, sequences, states, the mask if
    ``masked``) and its vector-Jacobian product, each as a tf.function(jit_compile=True)."""
    import tensorflow as tf

    def plain(*flat):
        p, seq, state = dict(zip(names, flat[: len(names)])), flat[len(names)], list(flat[len(names) + 1 :][:count])
        last, outputs, final = _loop(p, seq, state, flat[-1] if masked else None, **options)
        return [last, outputs, *final]

    def vjp(flat, upstream):
        floating = [t for t in flat if t.dtype.is_floating]
        with tf.GradientTape() as tape:
            tape.watch(floating)
            again = plain(*flat)
        return tape.gradient(again, floating, output_gradients=upstream, unconnected_gradients="zero")

    return (
        tf.function(plain, jit_compile=True, autograph=False),
        tf.function(vjp, jit_compile=True, autograph=False),
    )


def _compose(earlier, later):
    """Two affine steps h -> a * h + b as one: the associative operation of the scan."""
    (a1, b1), (a2, b2) = earlier, later
    return a2 * a1, a2 * b1 + b2


def _scan(params, sequences, initial_state, mask, go_backwards=False):
    """``(last_output, outputs, final_state)`` of a linear recurrence (LINEAR_SCAN) by keras.ops.associative_scan.

    Every next state is a * state + b with a and b free of any state: the step evaluated for
    every timestep at once from a zero and from a unit state gives b and a + b. A masked step
    is the identity pair (1, 0) and outputs zero; the last output is that of the last real
    step (zero where there is none), as ``_loop`` gives it; go_backwards walks the time
    axis backwards and returns the outputs in that order, as keras.layers.RNN does.
    """
    units = int(params[UNITS_PARAM].shape[-1])
    fused = fuse(params)
    if go_backwards:
        sequences = ops.flip(sequences, axis=1)
        mask = None if mask is None else ops.flip(mask, axis=1)
    hoisted = prologue(params, fused, sequences, units)  # (batch, time, ...): every timestep at once
    zero = ops.zeros_like(sequences[..., :1])  # (batch, time, 1), dynamic shapes allowed
    zeros = [zero + ops.zeros_like(ops.expand_dims(s, 1)) for s in initial_state]
    b = step(params, fused, hoisted, zeros, units)[1]
    ab = step(params, fused, hoisted, [z + 1.0 for z in zeros], units)[1]
    real = None if mask is None else ops.expand_dims(ops.cast(mask, "bool"), -1)
    hs = []
    for bk, abk, h0 in zip(b, ab, initial_state):
        ak = abk - bk
        if real is not None:
            ak, bk = ops.where(real, ak, ops.ones_like(ak)), ops.where(real, bk, ops.zeros_like(bk))
        # The initial state enters through the first pair.
        bk = ops.concatenate([ops.expand_dims(ak[:, 0] * h0 + bk[:, 0], 1), bk[:, 1:]], axis=1)
        hs.append(ops.associative_scan(_compose, (ak, bk), axis=1)[1])
    outputs = hs[LINEAR_SCAN or 0]
    last = outputs[:, -1]
    if real is not None:
        outputs = ops.where(real, outputs, ops.zeros_like(outputs))
        last = ops.where(ops.any(real, axis=1), last, ops.zeros_like(last))
    return last, outputs, [h[:, -1] for h in hs]


def run_numpy(params, x, state=None, mask=None):
    """The backend-neutral entry of novolstm.run: NumPy arrays in and out, in x's dtype."""
    x = np.asarray(x)
    dtype = x.dtype.name
    units = int(np.shape(params[UNITS_PARAM])[-1])
    layer = Layer(units, return_sequences=True, return_state=True, dtype=dtype)
    layer.cell.load_params(params)
    kwargs = {}
    if state is not None:
        kwargs["initial_state"] = [ops.convert_to_tensor(np.asarray(s, dtype)) for s in state]
    if mask is not None:
        kwargs["mask"] = ops.convert_to_tensor(np.asarray(mask, bool))
    outputs, *final = layer(ops.convert_to_tensor(x), **kwargs)
    return ops.convert_to_numpy(outputs), tuple(ops.convert_to_numpy(s) for s in final)


def _with_pullback(function, primals):
    """``(function(*primals), pullback)``, where ``pullback(cotangents)`` gives the gradient of
    ``sum(outputs * cotangents)`` with respect to every tensor in ``primals`` (same structure).

    Keras 3 has no backend-neutral gradient API, so this asks the autodiff of the backend
    Keras runs on (``keras.backend.backend()``, fixed per process by KERAS_BACKEND). It
    imports that framework, which Keras has already imported; the cell itself stays in keras.ops.
    """
    flatten, pack = keras.tree.flatten, keras.tree.pack_sequence_as
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        flat = flatten(primals)
        with tf.GradientTape(persistent=True) as tape:  # persistent: the pullback may be called again
            tape.watch(flat)
            outputs = function(*primals)

        def pullback(cotangents):
            grads = tape.gradient(
                flatten(outputs),
                flat,
                output_gradients=flatten(cotangents),
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            return pack(primals, grads)

        return outputs, pullback
    if backend == "jax":
        import jax

        outputs, jax_pullback = jax.vjp(function, *primals)
        return outputs, lambda cotangents: jax_pullback(cotangents)
    if backend == "torch":
        import torch

        flat = [t.detach().requires_grad_(True) for t in flatten(primals)]
        with torch.enable_grad():
            outputs = function(*pack(primals, flat))

        def pullback(cotangents):
            grads = torch.autograd.grad(
                flatten(outputs), flat, flatten(cotangents), retain_graph=True, allow_unused=True
            )
            # A tensor the outputs do not depend on (a fully masked batch) has gradient zero.
            return pack(primals, [torch.zeros_like(t) if g is None else g for t, g in zip(flat, grads)])

        return pack(outputs, [t.detach() for t in flatten(outputs)]), pullback
    raise NotImplementedError(f"gradients on Keras' {backend!r} backend: expected tensorflow, jax or torch")


def vjp_numpy(params, x, state=None, mask=None):
    """Backend-neutral gradients through Keras' backend autodiff: ``(outputs, final_state, vjp)``
    with ``vjp(g_outputs, g_state) -> (g_x, g_state0, g_params)``, NumPy arrays in and out, in x's dtype.

    The same loop as ``Layer`` (and ``run_numpy``), as a function of tensors, differentiated
    with respect to the inputs, the initial state and every canonical parameter."""
    x = np.asarray(x)
    dtype = x.dtype.name
    units = int(np.shape(params[UNITS_PARAM])[-1])
    _check_params(params, x.shape[-1], units)
    tensor = lambda a: ops.convert_to_tensor(np.asarray(a, dtype))  # noqa: E731
    state = tuple(np.zeros((x.shape[0], units), dtype) for _ in STATE_NAMES) if state is None else tuple(state)
    mask_tensor = None if mask is None else ops.convert_to_tensor(np.asarray(mask, bool))

    def sequence(params, x, state):
        _, outputs, final = _loop(params, x, state, mask_tensor, return_sequences=True)
        return outputs, tuple(final)

    primals = ({name: tensor(params[name]) for name in PARAM_TABLE}, tensor(x), tuple(tensor(s) for s in state))
    (outputs, final), pullback = _with_pullback(sequence, primals)
    to_numpy = lambda t: np.asarray(ops.convert_to_numpy(t), dtype)  # noqa: E731

    def vjp(g_outputs=None, g_state=None):
        # Cotangents in the dtype of the values they weigh (Keras may compute below x's dtype).
        like = lambda g, t: ops.zeros_like(t) if g is None else ops.cast(tensor(g), t.dtype)  # noqa: E731
        g_final = (None,) * len(final) if g_state is None else tuple(g_state)
        cotangents = (like(g_outputs, outputs), tuple(like(g, t) for g, t in zip(g_final, final)))
        g_params, g_x, g_state0 = pullback(cotangents)
        return to_numpy(g_x), tuple(to_numpy(g) for g in g_state0), {k: to_numpy(v) for k, v in g_params.items()}

    return to_numpy(outputs), tuple(to_numpy(s) for s in final), vjp


# The spec's own names for the classes (summaries, serialization): CLASS_NAME for the layer,
# as keras.layers.LSTM, and CLASS_NAME + "Cell" for the cell, as keras.layers.LSTMCell.
for _cls, _name in ((Layer, CLASS_NAME), (Cell, CLASS_NAME + "Cell")):
    _cls.__name__ = _cls.__qualname__ = _name
    globals()[_name] = _cls
