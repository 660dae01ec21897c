"""Random specs against the interpreter: the NumPy backend on specs drawn by Hypothesis, and
every spec the fuzzer ever failed on, as a regression test on every requested backend.

The interpreter (:mod:`novolstm.interpret`) evaluates a spec's own expressions with no IR
and no passes, so it is an oracle for any spec. The other backends' property tests live in
their own files (tests/test_<backend>_fuzz_specs.py) and run in their tox envs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, note, settings, target
from hypothesis import strategies as st

import novolstm
from novolstm.spec_loader import parse_spec
from novolstm.testing import (
    OPERATION_FORMS,
    UNARY_FUNCTIONS,
    Case,
    check_against_interpreter,
    check_gradients_against_interpreter,
    check_gradients_close,
    spec_cases,
    spec_texts,
)


def examples(ci_count: int) -> int:
    """``ci_count`` examples under the ci profile (30), in proportion under the others."""
    return max(1, round(ci_count * settings.default.max_examples / 30))


def numpy_run(spec):
    module = novolstm.load_generated(spec, "numpy")
    return lambda params, x, state, mask: module.run_numpy(params, x, state, mask)


# ---------------------------------------------------------------- NumPy on random specs


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=examples(40))
@given(spec_case=spec_cases())
def test_numpy_matches_the_interpreter_on_random_specs(dtype, spec_case):
    text, case = spec_case
    note(text)
    spec = novolstm.loads_spec(text)
    target(check_against_interpreter(spec, numpy_run(spec), case, dtype), label=f"max deviation {dtype}")


@settings(max_examples=examples(15))
@given(spec_case=spec_cases(max_batch=2, max_units=4, max_extra_steps=4), seed=st.integers(0, 2**32 - 1))
def test_numpy_gradients_match_finite_differences_of_the_interpreter(spec_case, seed):
    text, case = spec_case
    note(text)
    spec = novolstm.loads_spec(text)
    vjp_numpy = novolstm.load_generated(spec, "numpy").vjp_numpy
    grads = check_gradients_against_interpreter(spec, vjp_numpy, case, seed)
    target(check_gradients_close(spec, vjp_numpy, case, grads, seed), label="max gradient deviation float32")


# ---------------------------------------------------------------- the strategy itself


def _form_regex(form: str):
    # An OPERATION_FORMS entry with its operands {a} and {b} as any text.
    return re.compile(".*?".join(re.escape(piece) for piece in re.split(r"\{[ab]\}", form)))


def test_random_specs_use_the_whole_language():
    """Over a fixed run of draws, the strategy produces every construct it promises."""
    features = {
        "one state": lambda s, t: len(s.state_names) == 1,
        "four states": lambda s, t: len(s.state_names) == 4,
        "intermediate equation": lambda s, t: len(s.equations) > len(s.state_names) + (s.output == "y"),
        "parameter-only equation": lambda s, t: re.search(r'^\w+ = "[^"x@]*"$', t, re.MULTILINE) is not None,
        "literal equation": lambda s, t: re.search(r'^\w+ = "[0-9.]+"$', t, re.MULTILINE) is not None,
        "separate output": lambda s, t: s.output == "y",
        **{fn: (lambda s, t, fn=fn: f"{fn}(" in t) for fn in ("sigmoid", "tanh", "relu", "softmax", "layer_norm")},
        "nested call": lambda s, t: re.search(
            r"(sigmoid|tanh|relu|softmax|layer_norm)\((sigmoid|tanh|relu|softmax|layer_norm)\(", t
        ),
        "layer_norm over layer_norm": lambda s, t: "layer_norm(layer_norm(" in t,
        "softmax of a product": lambda s, t: re.search(r"softmax\(\([^()]*\) \* ", t) is not None,
        "product of projections": lambda s, t: re.search(r"\(\w+ @ \w+\) \* \(\w+ @ \w+", t) is not None,
        "projection of a compound value": lambda s, t: ") @ U" in t,
        "1 - b": lambda s, t: re.search(r"\b1 - b\d", t) is not None,
        "-b": lambda s, t: re.search(r"-b\d", t) is not None,
        "b1 * b2": lambda s, t: re.search(r"b\d+ \* b\d", t) is not None,
        "2 * b": lambda s, t: "2 * b" in t,
        "sum of three biases": lambda s, t: re.search(r"b\d+ \+ b\d+ \+ b\d", t) is not None,
        "(2 * 3)": lambda s, t: "(2 * 3)" in t,
        "(1 - 1)": lambda s, t: "(1 - 1)" in t,
        "unary minus of a compound value": lambda s, t: "-(" in t,
        "state used elementwise": lambda s, t: re.search(r"\* [hcmq]\b|\b[hcmq] \*|\+ [hcmq]\b", t) is not None,
        "shared parameter": lambda s, t: any(
            len(re.findall(rf"\b{p}\b", t.split("[equations]")[1])) > 1 for p in s.param_names
        ),
        **{
            f"operation {form}": (lambda s, t, form=form: _form_regex(form).search(t) is not None)
            for form in OPERATION_FORMS
        },
        **{f"function {fn}": (lambda s, t, fn=fn: f"{fn}(" in t) for fn in UNARY_FUNCTIONS},
        "equations out of order": lambda s, t: (
            [n for n, _ in s.equations] != re.findall(r"^(\w+) = ", t.split("[equations]")[1], re.MULTILINE)
        ),
    }
    seen: set[str] = set()

    @settings(max_examples=500, derandomize=True, database=None)
    @given(spec_texts())
    def draw(text):
        spec = novolstm.loads_spec(text)  # every drawn spec loads
        seen.update(name for name, has in features.items() if has(spec, text))

    draw()
    assert sorted(set(features) - seen) == []


# ---------------------------------------------------------------- regressions, on every backend


def spec_from(equations: dict, state: dict, output: str, epsilon: float | None = None):
    """A spec whose parameters are the names its equations read: ``W*`` (input, units),
    ``U*`` (units, units), the rest (units)."""
    names = set(re.findall(r"\b[A-Za-z]\w*\b", " ".join(equations.values()))) - set(equations) - set(state) - {"x"}
    names -= {"sigmoid", "tanh", "relu", "softmax", "layer_norm"}
    shape = lambda n: ["input", "units"] if n[0] == "W" else ["units", "units"] if n[0] == "U" else ["units"]
    data = {
        "spec_version": 1,
        "name": "regression",
        "description": "A spec the fuzzer failed on.",
        "input": "x",
        "output": output,
        "state": state,
        "params": {n: {"shape": shape(n), "init": "zeros"} for n in sorted(names)},
        "equations": equations,
    }
    if epsilon is not None:
        data["numerics"] = {"layer_norm_epsilon": epsilon}
    return parse_spec(data, source="<regression>")


def lstm_with(**equations):
    data = novolstm.load_spec("lstm").to_dict()
    data["equations"].update(equations)
    return parse_spec(data, source="<regression>")


#: Every spec the fuzzer (or a user) found a backend wrong on: name -> spec.
REGRESSIONS = {
    # Parameter-only terms were hoisted as per-timestep sequences and indexed by time along
    # the units axis: wrong numbers for T < units, IndexError beyond (JAX: ValueError in lax.scan).
    "damped lstm: o * tanh(c_next) * (1 - b_o)": lambda: lstm_with(h_next="o * tanh(c_next) * (1 - b_o)"),
    "lstm with + b_i + b_f, + -b_f, + b_g * 2, + (b_o - b_i)": lambda: lstm_with(
        i="sigmoid(x @ W_i + h @ U_i + b_i + b_f)",
        f="sigmoid(x @ W_f + h @ U_f + -b_f)",
        g="tanh(x @ W_g + h @ U_g + b_g * 2)",
        o="sigmoid(x @ W_o + h @ U_o + (b_o - b_i))",
    ),
    # ... and, where a parameter-only equation joined a GEMM's sum, torch's float32 (oneDNN)
    # path accumulated the GEMM into that vector: RuntimeError.
    "parameter-only equation and factors": lambda: spec_from(
        {"d": "b1 - b2", "h_next": "tanh(x @ W0 + h @ U0 + d + (x @ W1) * (b1 + b2 + b3)) * (1 - b3)"},
        {"h": "h_next"},
        "h_next",
    ),
    # The backward pass marked the adjoint of a parameter-only value (-g, g * b) as batched:
    # torch summed it over the units axis too, giving a parameter gradient of shape ().
    "adjoint of parameter-only factors": lambda: spec_from(
        {"h_next": "tanh(x @ W0)", "c_next": "tanh(h + (x @ W2)) * (1 - b1) * (b2 * -b3)"},
        {"h": "h_next", "c": "c_next"},
        "h_next",
    ),
    # Literal-only subterms raised IRError (a width-0 node), and so did literal terms spread
    # over a sum ((2 * 3) + ((2 * 3) + h)): now folded when lowering.
    "(2 * 3), (1 - 1) and literal equations": lambda: spec_from(
        {
            "k": "0.5",
            "z": "(1 - 1)",
            "h_next": "tanh(x @ W0 + (2 * 3) * (h @ U0) * k + (1 - 1) + z - (2 * 3))",
            "y": "((2 * 3)) + (((2 * 3)) + h) + 1",
        },
        {"h": "h_next"},
        "y",
    ),
    # NumPy and torch wrote the output after advancing the state: an output that is a
    # state's previous value got the new one.
    "output is the previous state": lambda: spec_from(
        {"y": "h", "h_next": "tanh(x @ W0 + c @ U0)", "c_next": "tanh(c * h_next)"}, {"h": "h_next", "c": "c_next"}, "y"
    ),
    # The prologue's backward read the operand of a projection of a hoisted value (f @ U1)
    # that nothing had kept: NameError in every gradient.
    "projection of a hoisted value": lambda: spec_from(
        {"f": "layer_norm(x @ W0, g1, be1)", "h_next": "tanh((f @ U1) * 2 + h @ U0)"}, {"h": "h_next"}, "h_next", 1e-3
    ),
    # Keras on JAX computes ops.tanh in float32 for float64 inputs: a next state that is exactly
    # a tanh changed the scan carry's dtype (TypeError).
    "next state exactly a tanh": lambda: spec_from({"h_next": "tanh((x @ W0) + (x @ W1))"}, {"h": "h_next"}, "h_next"),
}


def regression_case(spec, batch: int, steps: int, units: int, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    params = {n: rng.normal(scale=0.5, size=s) for n, s in spec.parameter_shapes(3, units).items()}
    x = rng.normal(size=(batch, steps, 3))
    state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names)
    mask = rng.random((batch, steps)) < 0.7
    return Case(params, x, state, mask)


#: (batch, steps, units): one row, a sequence shorter than units; several rows, a longer one.
#: Few, because every shape and dtype compiles anew on JAX.
REGRESSION_SHAPES = [(1, 3, 5), (3, 7, 2)]
#: For gradients (forward already covers both lengths): two rows, shorter than units.
REGRESSION_GRADIENT_SHAPES = [(2, 3, 4)]


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_regression_specs_match_the_interpreter(name, dtype, backend, computes_in):
    spec = REGRESSIONS[name]()

    def run(params, x, state, mask):
        return novolstm.run(spec, params, x, state, backend=backend, mask=mask)

    for k, (batch, steps, units) in enumerate(REGRESSION_SHAPES):
        check_against_interpreter(spec, run, regression_case(spec, batch, steps, units, k), dtype, computes_in(dtype))


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression_specs_gradients(name, backend, computes_in):
    spec = REGRESSIONS[name]()
    module = novolstm.load_generated(spec, backend)
    if not hasattr(module, "vjp_numpy"):
        assert backend == "onnx"  # onnxruntime is an inference runtime: only it has no gradients
        return
    for k, (batch, steps, units) in enumerate(REGRESSION_GRADIENT_SHAPES):
        case = regression_case(spec, batch, steps, units, k)
        if computes_in("float64") == "float64":
            grads = check_gradients_against_interpreter(spec, module.vjp_numpy, case, seed=k)
        else:  # Keras on JAX or torch computes float64 in float32: its gradients against NumPy's
            grads = check_gradients_against_interpreter(
                spec, novolstm.load_generated(spec, "numpy").vjp_numpy, case, seed=k
            )
        check_gradients_close(spec, module.vjp_numpy, case, grads, seed=k, computes_in=computes_in("float32"))
