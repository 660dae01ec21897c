"""Random specs exported to ONNX (novolstm.export_onnx, a Scan over the step graph) and run in
onnxruntime, against the interpreter (novolstm.interpret), in float64 and float32.

onnxruntime is an inference runtime: no gradients here. Every spec the fuzzer ever failed on
is a regression test in tests/test_fuzz_specs.py, which runs on every requested backend.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from hypothesis import given, note, settings, target

import novolstm
from novolstm.testing import check_against_interpreter, spec_cases


def examples(ci_count: int) -> int:
    """``ci_count`` examples under the ci profile (30), in proportion under the others."""
    return max(1, round(ci_count * settings.default.max_examples / 30))


def exported_run(spec, dtype):
    """``run(params, x, state, mask)`` through an exported model and an onnxruntime session."""

    def run(params, x, state, mask):
        model = novolstm.export_onnx(spec, params, dtype=dtype, native_lstm=False)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        batch, steps, _ = x.shape
        units = params[spec.params[0].name].shape[-1]
        if state is None:
            state = tuple(np.zeros((batch, units), dtype) for _ in spec.state_names)
        feeds = {"x": x, "mask": np.ones((batch, steps), bool) if mask is None else mask}
        feeds.update({f"{name}0": s for name, s in zip(spec.state_names, state)})
        outputs, *final = session.run(None, feeds)
        return outputs, tuple(final)

    return run


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=examples(12))
@given(spec_case=spec_cases())
def test_onnx_export_matches_the_interpreter_on_random_specs(dtype, spec_case):
    text, case = spec_case
    note(text)
    spec = novolstm.loads_spec(text)
    target(check_against_interpreter(spec, exported_run(spec, dtype), case, dtype), label=f"max deviation {dtype}")
