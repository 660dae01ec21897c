"""Random specs on Keras 3 (on whichever KERAS_BACKEND this env has) against the interpreter (novolstm.interpret): outputs and final
state in float64 and float32, and gradients with respect to inputs, initial state and every
parameter (float64 against central differences of the interpreter, float32 against float64).

Specs and cases come from novolstm.testing.spec_cases; every spec the fuzzer ever failed on is
a regression test in tests/test_fuzz_specs.py, which runs on every requested backend.
"""

from __future__ import annotations

import keras  # noqa: F401  (a requested backend that cannot load fails here)
import pytest
from hypothesis import given, note, settings, target
from hypothesis import strategies as st

import novolstm
from novolstm.testing import (
    check_against_interpreter,
    check_gradients_against_interpreter,
    check_gradients_close,
    computes_in,
    spec_cases,
)

BACKEND = "keras"


def examples(ci_count: int) -> int:
    """``ci_count`` examples under the ci profile (30), in proportion under the others."""
    return max(1, round(ci_count * settings.default.max_examples / 30))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=examples(5))
@given(spec_case=spec_cases())
def test_keras_matches_the_interpreter_on_random_specs(dtype, spec_case):
    text, case = spec_case
    note(text)
    spec = novolstm.loads_spec(text)

    def run(params, x, state, mask):
        return novolstm.run(spec, params, x, state, backend=BACKEND, mask=mask)

    deviation = check_against_interpreter(spec, run, case, dtype, computes_in(BACKEND, dtype))
    target(deviation, label=f"max deviation {dtype}")


@settings(max_examples=examples(2))
@given(spec_case=spec_cases(max_batch=2, max_units=4, max_extra_steps=4), seed=st.integers(0, 2**32 - 1))
def test_keras_gradients_match_the_interpreter_on_random_specs(spec_case, seed):
    text, case = spec_case
    note(text)
    spec = novolstm.loads_spec(text)
    vjp_numpy = novolstm.load_generated(spec, BACKEND).vjp_numpy
    if computes_in(BACKEND, "float64") == "float64":
        anchor = check_gradients_against_interpreter(spec, vjp_numpy, case, seed)
    else:  # computes float64 in float32 (PRECISION_LIMITS): held to NumPy's checked gradients instead
        anchor = check_gradients_against_interpreter(spec, novolstm.load_generated(spec, "numpy").vjp_numpy, case, seed)
        check_gradients_close(spec, vjp_numpy, case, anchor, seed, "float64", computes_in(BACKEND, "float64"))
    deviation = check_gradients_close(spec, vjp_numpy, case, anchor, seed, "float32", computes_in(BACKEND, "float32"))
    target(deviation, label="max gradient deviation float32")
