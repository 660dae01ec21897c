"""The NumPy runtime: what every generated NumPy module holds besides its spec's own code.

Generated modules inline this file (see ``novolstm.codegen.inline_runtime``): the block
of stand-ins below is replaced by the spec's constants, ``init_params`` and the generated
``fuse``, ``forward`` and ``backward``; everything else is this code, verbatim.
"""

import math
import sys
import warnings
import zlib  # noqa: F401 - read by the initializers that generated modules inline here

import numpy as np

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
#: The spec as canonical TOML: novolstm.backends.cpp builds the compiled step loop from it.
SPEC_TOML = ""


def init_params(input_size, units, seed=0, dtype="float64"):
    """Canonical parameters (NumPy arrays), drawn as novolstm.init_params draws them."""
    return init_from_table(PARAM_TABLE, input_size, units, seed, dtype)


def fuse(params):
    raise NotImplementedError("generated per spec")


def forward(params, x, state=None, mask=None, keep_tape=False, compiled=None):
    raise NotImplementedError("generated per spec")


def backward(params, tape, g_outputs=None, g_state=None):
    raise NotImplementedError("generated per spec")


# --- end of spec block


def _sigmoid(z):
    # The exact logistic, overflow-free for any finite z: tanh saturates where exp(-z) overflows.
    return 0.5 * np.tanh(0.5 * z) + 0.5


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # max-subtracted, so exp cannot overflow
    return e / e.sum(axis=-1, keepdims=True)


def _normalize_units(z, eps):
    # LayerNorm without its affine part: population variance of the centred values (two
    # passes, never E[z^2] - E[z]^2), epsilon inside the square root.
    c = z - z.mean(axis=-1, keepdims=True)
    return c * (1.0 / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps))


def _normalize_units_grad(g, y, z, eps):
    # The VJP of _normalize_units at z, whose output was y: (g - mean g - y mean(g y)) / std.
    # The standard deviation is recomputed from z (one reduction) rather than kept per step.
    c = z - z.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps)
    return inv_std * (g - g.mean(axis=-1, keepdims=True) - y * (g * y).mean(axis=-1, keepdims=True))


# The domain rule (docs/numerics.md): IEEE 754 results (log 0 = -inf, log of a negative and
# sqrt of a negative = nan, z / 0 = +-inf, 0 / 0 = nan), never an exception or a warning.
def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _exp(z):
    with np.errstate(over="ignore", under="ignore"):
        return np.exp(z)


def _log(z):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(z)


def _sqrt(z):
    with np.errstate(invalid="ignore"):
        return np.sqrt(z)


def _softplus(z):
    # log(1 + exp(z)) as max(z, 0) + log1p(exp(-|z|)): exp never overflows, and no threshold
    # switches to z (torch's does beyond 20, off by up to 2e-9).
    with np.errstate(under="ignore"):
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


_erf = np.frompyfunc(math.erf, 1, 1)  # NumPy has no erf; math.erf is correctly rounded to an ulp or so


def _gelu(z):
    # The exact GELU, z * Phi(z) with the standard normal's cdf (not the tanh approximation).
    return (0.5 * z * (1.0 + _erf(z * (1.0 / math.sqrt(2.0))).astype(z.dtype))).astype(z.dtype)


def _gelu_grad(g, z):
    phi = np.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    cdf = 0.5 * (1.0 + _erf(z * (1.0 / math.sqrt(2.0))).astype(z.dtype))
    return (g * (cdf + z * phi)).astype(z.dtype)


def _linear(a, w, b=None):
    # One GEMM over every leading axis (batch, or time and batch).
    out = a.reshape(-1, a.shape[-1]) @ w
    if b is not None:
        out += b
    return out.reshape(a.shape[:-1] + (w.shape[-1],))


# ---------------------------------------------------------------- the compiled step loop

#: Where compiled=None runs the compiled step loop: sequences of at least COMPILED_MIN_STEPS steps
#: whose batch * units**2 (a step's product, per block of units) is at most COMPILED_MAX_WORK.
#: Shorter sequences cost the loop little per call, and the compiled path a build (about a
#: second, once per spec). Larger steps run the loop, whose product a multi-threaded BLAS splits
#: over the cores where the compiled loop runs on one (at one BLAS thread both measured at par at
#: batch 128, 512 units; docs/numpy.md).
COMPILED_MIN_STEPS = 32
COMPILED_MAX_WORK = 2**22
_COMPILED_WARNED: list[str] = []


def _compiled_forward(dtype, batch, steps, units, compiled):
    """The spec's compiled step loop (novolstm.backends.cpp.numpy_ext) for this call, or None.

    compiled=None runs it on float32 and float64 calls of COMPILED_MIN_STEPS steps or more and
    COMPILED_MAX_WORK or less where novolstm is loaded (a module exported standalone stays
    standalone) and a C++ compiler builds it (once per spec, cached on disk); without a compiler
    it warns once and returns None, and so does a spec the emitter does not compile, silently.
    compiled=True runs it or raises why not; compiled=False never runs it. With keep_tape it
    also writes the tape the generated backward pass reads.
    """
    if compiled not in (None, True, False):
        raise ValueError(f"compiled: expected None (auto), True or False, got {compiled!r}")
    if compiled is False:
        return None
    if compiled is None and (
        steps < COMPILED_MIN_STEPS or batch * units * units > COMPILED_MAX_WORK or "novolstm" not in sys.modules
    ):
        return None
    why = None
    if np.dtype(dtype) not in (np.float32, np.float64):
        why = f"it runs float32 and float64, not {np.dtype(dtype)}"
    else:
        try:
            from novolstm.backends.cpp.numpy_ext import CompiledUnavailable, CompiledUnsupported, compiled_forward
        except ImportError:
            why = "novolstm (which builds it) is not installed"
        else:
            try:
                return compiled_forward(SPEC_TOML)
            except CompiledUnavailable as e:
                why = str(e)
                # A spec whose operations the C++ emitter does not compile runs the loop by design.
                if not compiled and not _COMPILED_WARNED and not isinstance(e, CompiledUnsupported):
                    _COMPILED_WARNED.append(why)
                    warnings.warn(
                        f"novolstm: the compiled step loop is unavailable, running the generated loop: {why}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    if compiled:
        raise RuntimeError(f"compiled=True, but the compiled step loop cannot run this call: {why}")
    return None


def _compiled_backward(tape, g_ys, ms, g_state, *arrays):
    """The backward pass's steps in the compiled kernel that ran the forward (``tape["kernel"]``):
    it writes the per-step gradients into ``arrays``' gradient arrays and returns the initial
    state's gradients; None where no kernel ran the forward or it does not compile these steps
    (the generated loop then runs them)."""
    kernel = tape.get("kernel")
    return None if kernel is None else kernel.backward(tape, g_ys, ms, g_state, *arrays)


def check_inputs(params, x, state, mask):
    """Shapes and dtypes of a call, checked before any arithmetic: never a silent broadcast."""
    input_size, units = params[INPUT_PARAM].shape[0], params[UNITS_PARAM].shape[-1]
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] != input_size:
        raise ValueError(f"x: expected shape (batch, time, {input_size}) with batch, time >= 1, got {x.shape}")
    if x.dtype != params[UNITS_PARAM].dtype:
        raise TypeError(f"x: expected dtype {params[UNITS_PARAM].dtype} (the parameters' dtype), got {x.dtype}")
    if state is not None:
        if len(state) != len(STATE_NAMES):
            raise ValueError(f"state: expected {len(STATE_NAMES)} arrays {STATE_NAMES}, got {len(state)}")
        for name, s in zip(STATE_NAMES, state):
            if np.shape(s) != (x.shape[0], units) or np.asarray(s).dtype != x.dtype:
                raise ValueError(
                    f"state {name}: expected shape ({x.shape[0]}, {units}) and dtype {x.dtype}, "
                    f"got {np.shape(s)} {np.asarray(s).dtype}"
                )
    if mask is not None and (np.shape(mask) != x.shape[:2] or np.asarray(mask).dtype != bool):
        raise ValueError(
            f"mask: expected a bool array of shape {x.shape[:2]}, got {np.shape(mask)} {np.asarray(mask).dtype}"
        )
    return x


class Cell:
    """The spec's cell (``SPEC_NAME``), a trainable NumPy cell generated by novolstm.

    ``compiled``: None runs long sequences' steps compiled where novolstm can build them (see
    ``forward``), True always (or raises why not), False never.

    Examples:
        >>> cell = Cell(input_size=3, units=4, seed=0)
        >>> x = np.ones((2, 5, 3))
        >>> outputs, state = cell.sequence(x)
        >>> outputs.shape
        (2, 5, 4)
        >>> outputs, state, vjp = cell.sequence_with_vjp(x)
        >>> g_x, g_state0, g_params = vjp(np.ones_like(outputs))
        >>> sorted(g_params) == sorted(cell.params)
        True
    """

    spec_name = SPEC_NAME
    spec_hash = SPEC_HASH
    state_names = STATE_NAMES

    def __init__(self, input_size, units, seed=0, dtype="float64", params=None, compiled=None):
        self.input_size, self.units, self.dtype = input_size, units, np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        if compiled not in (None, True, False):
            raise ValueError(f"compiled: expected None (auto), True or False, got {compiled!r}")
        #: The compiled step loop: None where it pays (see _compiled_forward), True always, False never.
        self.compiled = compiled
        self.load_canonical(init_params(input_size, units, seed, self.dtype) if params is None else params)

    def load_canonical(self, params):
        """Set the parameters from canonical ones (names and shapes checked, copied in the cell's dtype).

        Returns:
            The cell.
        """
        sizes = {"input": self.input_size, "units": self.units}
        expected = {name: tuple(sizes[d] for d in dims) for name, (dims, _, _) in PARAM_TABLE.items()}
        if set(params) != set(expected):
            raise ValueError(f"params: expected names {sorted(expected)}, got {sorted(params)}")
        for name, shape in expected.items():
            if np.shape(params[name]) != shape:
                raise ValueError(f"params[{name!r}]: expected shape {shape}, got {np.shape(params[name])}")
        self.params = {name: np.array(params[name], dtype=self.dtype) for name in expected}
        return self

    def export_canonical(self):
        """The parameters under canonical names (copies)."""
        return {name: value.copy() for name, value in self.params.items()}

    def __call__(self, x, state=None):
        """One step, as torch.nn.LSTMCell: x (batch, input) or (input,) -> the new state."""
        x = np.asarray(x, dtype=self.dtype)
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
            state = None if state is None else tuple(np.asarray(s)[None] for s in _as_tuple(state))
        if x.ndim != 2:
            raise ValueError(f"x: expected shape (batch, {self.input_size}) or ({self.input_size},), got {x.shape}")
        state = None if state is None else _as_tuple(state)
        _, new_state, _ = forward(self.params, x[:, None], state, compiled=self.compiled)
        if unbatched:
            new_state = tuple(s[0] for s in new_state)
        return new_state if len(new_state) > 1 else new_state[0]

    def sequence(self, x, state=None, mask=None):
        """Run over x (batch, time, input) -> (outputs (batch, time, units), final state tuple).

        The steps run compiled where the cell's ``compiled`` says so (see ``forward``).
        """
        state = None if state is None else _as_tuple(state)
        outputs, final, _ = forward(self.params, x, state, mask, compiled=self.compiled)
        return outputs, final

    def sequence_with_vjp(self, x, state=None, mask=None):
        """As ``sequence``, plus ``vjp(g_outputs=None, g_state=None) -> (g_x, g_state0, g_params)``.

        The forward steps run compiled where the cell's ``compiled`` says so, writing the tape;
        ``vjp`` is the generated backward pass.
        """
        state = None if state is None else _as_tuple(state)
        outputs, final, tape = forward(self.params, x, state, mask, keep_tape=True, compiled=self.compiled)

        def vjp(g_outputs=None, g_state=None):
            return backward(self.params, tape, g_outputs, None if g_state is None else _as_tuple(g_state))

        return outputs, final, vjp


def _as_tuple(state):
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def run_numpy(params, x, state=None, mask=None):
    """The backend-neutral entry of novolstm.run: NumPy arrays in and out."""
    outputs, final, _ = forward(params, x, state, mask)
    return outputs, final


def vjp_numpy(params, x, state=None, mask=None):
    """Backend-neutral gradients: ``(outputs, final_state, vjp)``.

    ``vjp(g_outputs, g_state) -> (g_x, g_state0, g_params)``, NumPy arrays in and out.
    """
    outputs, final, tape = forward(params, x, state, mask, keep_tape=True)

    def vjp(g_outputs=None, g_state=None):
        return backward(params, tape, g_outputs, g_state)

    return outputs, final, vjp
