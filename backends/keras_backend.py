"""The Keras 3 emitter: a cell for ``keras.layers.RNN`` and a sequence layer, in ``keras.ops`` only.

The generated module imports ``keras`` and ``numpy`` and nothing else at module level (only
``vjp_numpy`` imports the framework Keras runs on, for its autodiff), so the same
source runs on Keras' TensorFlow, JAX and PyTorch backends (Keras fixes its backend
per process, from ``KERAS_BACKEND``). It defines:

- ``Cell``: a ``keras.layers.Layer`` RNN cell, constructed from ``units`` like
  ``keras.layers.LSTMCell``; its variables carry the canonical names (``W_i``,
  ``U_i``, ``b_i``, ...) and the fused matrices are built inside ``call``.
- ``Layer``: a ``keras.layers.RNN`` over that cell (``novolstm.get_layer("keras")``)
  that fuses the weights once per call rather than once per step; with
  ``hoist_input=True`` it also computes every projection of the input once for all
  timesteps (one GEMM) and loops over the step graph only.
- ``run_numpy``: the backend-neutral entry of :func:`novolstm.run`.
- ``vjp_numpy``: the backend-neutral gradient hook (as the NumPy, torch and JAX
  modules have), through the autodiff of the backend Keras runs on.

Keras differentiates the forward graphs itself: no backward pass is generated.

Example:
    >>> import novolstm
    >>> source = novolstm.generate_source("lstm", backend="keras")
    >>> "from keras import ops" in source and "\nimport tensorflow" not in source  # none at module level
    True
"""

from __future__ import annotations

from novolstm.codegen import ARRAY_OPS, LoopPlan, docstring_text, init_source, linear_call, render, units_offset, var
from novolstm.ir import Graph
from novolstm.template import fill

NAME = "keras"
FRAMEWORK = "keras"


OPS = {
    **ARRAY_OPS,
    "linear": linear_call,
    # The exact logistic; each backend's kernel is overflow-free (tf.sigmoid, jax.nn.sigmoid, torch.sigmoid).
    # Not ops.hard_sigmoid: Keras 3's is relu6(x + 3) / 6, Keras 2's was clip(0.2 x + 0.5, 0, 1).
    "sigmoid": lambda n, a: f"ops.sigmoid({a[0]})",
    "tanh": lambda n, a: f"ops.tanh({a[0]})",
    "relu": lambda n, a: f"ops.relu({a[0]})",
    "softmax": lambda n, a: f"_softmax({a[0]})",
    "normalize_units": lambda n, a: f"_normalize_units({a[0]}, {n.attr('eps')!r})",
}


TEMPLATE = '''\
"""$header

$description

Keras 3, written in keras.ops only: runs on Keras' TensorFlow, JAX and PyTorch
backends. State: $state_doc. Variables carry the canonical names of novolstm.
"""

import zlib

import keras
import numpy as np
from keras import ops

SPEC_NAME = $spec_name
SPEC_HASH = $spec_hash
STATE_NAMES = $state_names
PARAM_TABLE = $param_table
#: widths, in units, of the prologue values the step reads at each timestep
HOISTED_WIDTHS = $hoisted_widths


$init_source


def _linear(a, w, b=None):
    # One GEMM over every leading axis (batch, or batch and time).
    out = ops.matmul(a, w)
    return out if b is None else out + b


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


def fuse(params):
    """The fused matrices, concatenated from canonical parameters (name -> tensor)."""
    return {
        $fusion
    }


def prologue(params, fused, v_$input, H):
    """Every value of the step that does not depend on the state, for x with any leading axes.

    Called on x (batch, time, input) it computes the input projection of every
    timestep as one GEMM; called on x (batch, input) it is the first half of a step.
    """
    $load_prologue
    $prologue
    return ($hoisted_vars)


def step(params, fused, hoisted, state, H):
    """One timestep: the values :func:`prologue` gave for this timestep, and the state -> (output, new state)."""
    $load_step
    $unpack_hoisted = hoisted
    $unpack_state = state
    $step
    # In the dtype of the state: Keras on JAX computes ops.tanh in float32 for float64 inputs
    # (keras-team/keras#23225), and a next state that is exactly a tanh broke the scan's carry.
    dtype = $first_state.dtype
    return ops.cast($output, dtype), ($next_state)


def _check_params(params, input_size, units):
    expected = {name: tuple({"input": input_size, "units": units}[d] for d in dims) for name, (dims, _, _) in PARAM_TABLE.items()}
    if set(params) != set(expected):
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        raise ValueError(f"params for {SPEC_NAME!r}: missing {missing}, unexpected {extra}; expected {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(
                f"params[{name!r}]: expected shape {shape} (input={input_size}, units={units}), got {tuple(np.shape(params[name]))}"
            )


def _constant(value):
    def initializer(shape, dtype=None):
        return ops.convert_to_tensor(np.asarray(value, dtype=keras.backend.standardize_dtype(dtype)))

    return initializer


@keras.saving.register_keras_serializable(package="novolstm", name=SPEC_NAME + ".Cell")
class Cell(keras.layers.Layer):
    """$title as a Keras RNN cell, generated by novolstm: use it in keras.layers.RNN.

    Args:
        units: size of the state and of the output.
        seed: the initial weights are ``novolstm.init_params(spec, input_size, units,
            seed)``; ``None`` draws a seed from NumPy's global generator (which
            ``keras.utils.set_random_seed`` seeds), as Keras' unseeded initializers do.
        **kwargs: as keras.layers.Layer (``dtype="float64"``, ``name``, ...).

    With ``keras.layers.RNN(cell, return_sequences=True)`` and a mask, pass
    ``zero_output_for_mask=True`` to get zeros on masked steps (novolstm's rule);
    :class:`Layer` does it by itself.

    Example:
        >>> rnn = keras.layers.RNN(Cell(4, seed=0), return_sequences=True, return_state=True)
        >>> outputs, *state = rnn(np.ones((2, 5, 3), "float32"))
        >>> tuple(outputs.shape), len(state) == len(STATE_NAMES)
        ((2, 5, 4), True)
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES

    def __init__(self, units, seed=None, **kwargs):
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
            setattr(self, name, self.add_weight(shape=value.shape, name=name, initializer=_constant(value)))

    def tensors(self):
        """The canonical parameters as tensors (name -> tensor), in the compute dtype."""
        return {name: getattr(self, name).value for name in PARAM_TABLE}

    def call(self, inputs, states, training=None):
        states = self.check_state(inputs, states)
        params = self.tensors()
        fused = fuse(params)
        output, new_state = step(params, fused, prologue(params, fused, inputs, self.units), states, self.units)
        return output, list(new_state)

    def check_state(self, inputs, states):
        """The states as a tuple, after checking the sizes the graph cannot check itself."""
        if inputs.shape[-1] is not None and inputs.shape[-1] != self.input_size:
            raise ValueError(f"{SPEC_NAME} Cell: built for input_size {self.input_size}, got inputs of shape {tuple(inputs.shape)}")
        states = tuple(states) if isinstance(states, (list, tuple)) else (states,)
        if len(states) != len(STATE_NAMES):
            raise ValueError(f"{SPEC_NAME} Cell: expected {len(STATE_NAMES)} states {STATE_NAMES}, got {len(states)}")
        for name, s in zip(STATE_NAMES, states):
            if len(s.shape) != 2 or s.shape[-1] not in (None, self.units):
                raise ValueError(f"{SPEC_NAME} Cell: state {name!r} must have shape (batch, {self.units}), got {tuple(s.shape)}")
        return states

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype) for _ in STATE_NAMES]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "seed": self.seed, "spec_hash": SPEC_HASH}

    def load_params(self, params):
        """Set the variables from canonical parameters (name -> array); builds the cell if needed.

        Values are cast to the variables' dtype: lossless for a float64 cell.
        """
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict of canonical names to arrays, got {type(params).__name__}")
        input_size = self.input_size
        if input_size is None and $input_param in params:  # unbuilt: the input size comes from the weights
            input_size = int(np.shape(params[$input_param])[PARAM_TABLE[$input_param][0].index("input")])
        _check_params(params, input_size, self.units)
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
        """As :meth:`load_params`."""
        return self.load_params(params)

    def export_canonical(self):
        """As :meth:`export_params`."""
        return self.export_params()

    @classmethod
    def from_params(cls, params, **kwargs):
        """A built cell holding ``params`` (canonical names); ``units`` comes from their shapes."""
        units = int(np.shape(params[$units_param])[-1])
        return cls(units, **kwargs).load_params(params)


class _Step:
    """What keras.layers.RNN loops over inside :class:`Layer`.

    Its input at each timestep is x_t, or with ``hoisted`` the prologue's values
    (computed for all timesteps before the loop) side by side; then, for a masked
    call, the mask as one more column. The fused matrices come built once per call.
    It applies novolstm's masking rule itself: a masked step keeps the state and
    outputs zeros, and one more state carries the last real output.
    """

    def __init__(self, units, input_size, params, fused, hoisted, masked):
        H = units
        self.units, self.params, self.fused, self.hoisted, self.masked = H, params, fused, hoisted, masked
        self.state_size = [H] * len(STATE_NAMES) + ([H] if masked else [])
        self.output_size = H
        ends = [H * sum(HOISTED_WIDTHS[: k + 1]) for k in range(len(HOISTED_WIDTHS))] if hoisted else [input_size]
        self.cuts = ends if masked else ends[:-1]

    def call(self, inputs, states):
        pieces = ops.split(inputs, self.cuts, axis=-1) if self.cuts else [inputs]
        real = pieces.pop() > 0.5 if self.masked else None  # (batch, 1): the mask column, 1.0 on real steps
        values = tuple(pieces) if self.hoisted else prologue(self.params, self.fused, pieces[0], self.units)
        states = tuple(states)
        state = states[:-1] if self.masked else states
        output, new_state = step(self.params, self.fused, values, state, self.units)
        if not self.masked:
            return output, list(new_state)
        new_state = [ops.where(real, new, old) for new, old in zip(new_state, state)]
        return ops.where(real, output, ops.zeros_like(output)), new_state + [ops.where(real, output, states[-1])]

    __call__ = call


@keras.saving.register_keras_serializable(package="novolstm", name=SPEC_NAME + ".Layer")
class Layer(keras.layers.RNN):
    """$title over whole sequences, as keras.layers.LSTM is to keras.layers.LSTMCell.

    A keras.layers.RNN of :class:`Cell` (``layer.cell``: variables, load_params,
    export_params) that builds the fused matrices once per call rather than once
    per step. Masked steps keep the state and output zeros; with
    ``return_sequences=False`` the output is that of each sequence's last real
    step, as in Keras.

    Args:
        units, seed: as :class:`Cell`.
        hoist_input: compute the state-independent part of the step (above all the
            input projection) for all timesteps as one GEMM before the loop, rather
            than inside each step. Measured slower on CPU with every Keras backend
            (the (batch, time, k * units) intermediate costs more memory traffic than
            the per-step matmuls it replaces), so off by default.
        return_sequences, return_state, go_backwards, stateful, unroll: as keras.layers.RNN.

    Example:
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
        **kwargs,
    ):
        cell = Cell(
            units,
            seed=seed,
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
            raise ValueError(f"{SPEC_NAME} Layer: built for input_size {cell.input_size}, got inputs of shape {tuple(sequences.shape)}")
        cell.check_state(sequences[:, 0], initial_state)
        return _loop(
            cell.tensors(),
            sequences,
            initial_state,
            mask,
            hoist_input=self.hoist_input,
            training=training,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
            stateful=self.stateful,
            unroll=self.unroll,
        )

    def get_config(self):
        config = super().get_config()
        del config["cell"], config["zero_output_for_mask"]
        return {**config, "units": self.cell.units, "seed": self.cell.seed, "hoist_input": self.hoist_input, "spec_hash": SPEC_HASH}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _loop(params, sequences, initial_state, mask, hoist_input=False, training=False, **rnn_options):
    """``(last_output, outputs, final_state)`` of the cell with ``params`` (canonical name -> tensor)
    over ``sequences`` (batch, time, input): a function of tensors only, so Keras' backend can
    differentiate it with respect to the parameters as well as the inputs and initial state.
    ``rnn_options``: return_sequences, go_backwards, stateful, unroll, as keras.layers.RNN."""
    units = int(params[$units_param].shape[-1])
    fused = fuse(params)  # once per call, not once per step
    columns = prologue(params, fused, sequences, units) if hoist_input else (sequences,)
    initial_state = list(initial_state)
    if mask is not None:
        # The mask travels as one more input column and the step applies the rule itself:
        # Keras' backends mask differently (JAX's unrolled loop repeats the previous output).
        columns += (ops.expand_dims(ops.cast(mask, columns[0].dtype), -1),)
        initial_state.append(ops.zeros_like(initial_state[0]))  # the last real output
    inputs = columns[0] if len(columns) == 1 else ops.concatenate(columns, axis=-1)
    # keras.layers.RNN's own loop over the step: the backend's rnn (tf.while_loop, lax.scan, ...).
    input_size = int(params[$input_param].shape[PARAM_TABLE[$input_param][0].index("input")])
    loop = keras.layers.RNN(_Step(units, input_size, params, fused, hoisted=hoist_input, masked=mask is not None), **rnn_options)
    last_output, outputs, states = loop.inner_loop(inputs, initial_state, None, training)
    if mask is not None:
        last_output, states = states[-1], states[:-1]
    return last_output, outputs, list(states)


def run_numpy(params, x, state=None, mask=None):
    """The backend-neutral entry of novolstm.run: NumPy arrays in and out, in x's dtype."""
    x = np.asarray(x)
    dtype = x.dtype.name
    units = int(np.shape(params[$units_param])[-1])
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
                flatten(outputs), flat, output_gradients=flatten(cotangents), unconnected_gradients=tf.UnconnectedGradients.ZERO
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
            grads = torch.autograd.grad(flatten(outputs), flat, flatten(cotangents), retain_graph=True, allow_unused=True)
            # A tensor the outputs do not depend on (a fully masked batch) has gradient zero.
            return pack(primals, [torch.zeros_like(t) if g is None else g for t, g in zip(flat, grads)])

        return pack(outputs, [t.detach() for t in flatten(outputs)]), pullback
    raise NotImplementedError(f"gradients on Keras' {backend!r} backend: expected tensorflow, jax or torch")


def vjp_numpy(params, x, state=None, mask=None):
    """Backend-neutral gradients through Keras' backend autodiff: ``(outputs, final_state, vjp)``
    with ``vjp(g_outputs, g_state) -> (g_x, g_state0, g_params)``, NumPy arrays in and out, in x's dtype.

    The same loop as :class:`Layer` (and :func:`run_numpy`), as a function of tensors, differentiated
    with respect to the inputs, the initial state and every canonical parameter."""
    x = np.asarray(x)
    dtype = x.dtype.name
    units = int(np.shape(params[$units_param])[-1])
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
'''


def _render(graph) -> list[str]:
    """:func:`codegen.render`, except that the slices of one value become one ``ops.split``.

    A split's gradient is one concatenation; separate slices would each scatter into
    a zero tensor of the full width and then be summed, which costs a third of the
    backward pass of an LSTM step on TensorFlow.
    """
    groups: dict[str, list] = {}
    for n in graph.nodes:
        if n.op == "slice":
            groups.setdefault(n.args[0], []).append(n)
    splits = {}
    for source, members in groups.items():
        spans = sorted((m.attr("start"), m.attr("stop")) for m in members)
        if len(members) < 2 or any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            continue  # one slice, or overlapping ones: plain slicing
        cuts = sorted({p for span in spans for p in span} - {0, graph[source].width})
        pieces = list(zip([0] + cuts, cuts + [graph[source].width]))
        names = {(m.attr("start"), m.attr("stop")): var(m.name) for m in members}
        targets = ", ".join(names.get(piece, "_") for piece in pieces)
        line = f"{targets} = ops.split({var(source)}, [{', '.join(units_offset(c) for c in cuts)}], axis=-1)"
        splits[members[0].name] = line
        splits.update({m.name: None for m in members[1:]})
    lines = []
    for n in graph.nodes:
        if n.name in splits:
            if splits[n.name]:
                lines.append(splits[n.name])
        else:
            lines.extend(render(Graph([n], {}), OPS))
    return lines


def _graph_reads(graph, plan):
    """Load lines for the fused matrices and vector parameters a graph reads."""
    names = {n.name for n in graph.nodes if n.op == "linear"}
    lines = []
    for L in plan.linears:
        if L.name in names:
            lines.append(f'w_{L.name} = fused["w_{L.name}"]')
            if L.has_bias:
                lines.append(f'b_{L.name} = fused["b_{L.name}"]')
    lines += [f'{var(n.name)} = params["{n.name}"]' for n in graph.nodes if n.op == "param"]
    return lines


def generate(plan: LoopPlan) -> str:
    spec, program = plan.spec, plan.program
    step = program.step
    states = spec.state_names
    input_param = next(p.name for p in spec.params if "input" in p.shape)
    units_param = spec.params[0].name
    table = {p.name: (p.shape, p.init.name, dict(p.init.args)) for p in spec.params}
    widths = tuple(program.step[h].width for h in program.hoisted)
    if not all(isinstance(w, int) for w in widths):
        raise NotImplementedError(f"hoisted values must be whole blocks of units, got widths {widths}")
    return fill(
        TEMPLATE,
        header=plan.header(NAME),
        description=docstring_text(spec.description),
        title=f"The {spec.name!r} cell",
        state_doc=", ".join(states),
        spec_name=repr(spec.name),
        spec_hash=repr(spec.hash),
        state_names=repr(states),
        param_table=repr(table),
        hoisted_widths=repr(widths),
        init_source=init_source(),
        fusion=plan.fusion_entries(
            lambda xs: f"ops.concatenate([{', '.join(xs)}], axis=-1)", lambda ref: f"ops.zeros(({ref}.shape[-1],), {ref}.dtype)"
        ),
        input=spec.input,
        input_param=repr(input_param),
        units_param=repr(units_param),
        load_prologue=_graph_reads(program.prologue, plan) or ["pass"],
        prologue=_render(program.prologue),
        hoisted_vars="".join(f"{var(h)}, " for h in program.hoisted).rstrip(" "),
        load_step=_graph_reads(step, plan),
        unpack_hoisted="".join(f"{var(h)}, " for h in program.hoisted).rstrip(" ") or "()",
        unpack_state=", ".join(var(s) for s in states) + ",",
        step=_render(step),
        first_state=var(states[0]),
        output=var(step.outputs["output"]),
        next_state="".join(f"ops.cast({var(step.outputs[f'state:{s}'])}, dtype), " for s in states).rstrip(" "),
    )
