"""Meta-tests: the suite's own check (``check_against_reference`` over ``cases``) catches
deliberate mutants of the spec and of the generated code."""

from __future__ import annotations

import types
from importlib import resources

import pytest
from hypothesis import find, settings
from hypothesis.errors import NoSuchExample

import novolstm
from novolstm.spec_loader import loads_spec
from novolstm.testing import cases, check_against_reference

NOVOLSTM = resources.files("novolstm.spec").joinpath("novolstm.toml").read_text()


def _edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return text


SPEC_MUTANTS = {
    "input and forget gates swapped": _edit(
        NOVOLSTM,
        ("x @ W_i + h @ U_i + b_i", "@@"),
        ("x @ W_f + h @ U_f + b_f", "x @ W_i + h @ U_i + b_i"),
        ("@@", "x @ W_f + h @ U_f + b_f"),
    ),
    "LayerNorm epsilon 1e-5 instead of 1e-3": _edit(
        NOVOLSTM, ("layer_norm_epsilon = 1e-3", "layer_norm_epsilon = 1e-5")
    ),
    "recurrent term missing": _edit(
        NOVOLSTM, ("h @ U_o + ", ""), ('U_o = { shape = ["units", "units"], init = "orthogonal" }\n', "")
    ),
    "bias dropped": _edit(NOVOLSTM, (" + b_g)", ")"), ('b_g = { shape = ["units"], init = "zeros" }\n', "")),
    "LayerNorm wraps the product (the reference-code cell)": _edit(
        NOVOLSTM,
        (
            "layer_norm(sigmoid(x @ W_i + h @ U_i + b_i), gamma_i, beta_i) * softmax(x @ W_s + h @ U_s + b_s)",
            "layer_norm(sigmoid(x @ W_i + h @ U_i + b_i) * softmax(x @ W_s + h @ U_s + b_s), gamma_i, beta_i)",
        ),
    ),
}


def _generated_run(module):
    def run(params, x, state, mask):
        outputs, final, _ = module.forward(params, x, state, mask)
        return outputs, final

    return run


def _is_caught(run, case) -> bool:
    try:
        check_against_reference("novolstm", run, case)
    except AssertionError:
        return True
    return False


def _first_catch(run):
    """The first example of the property test's strategy on which the check fails."""
    return find(
        cases("novolstm"), lambda case: _is_caught(run, case), settings=settings(max_examples=200, database=None)
    )


def test_the_unmutated_cell_passes():
    module = novolstm.load_generated("novolstm", "numpy")
    with pytest.raises(NoSuchExample):
        find(
            cases("novolstm"),
            lambda case: _is_caught(_generated_run(module), case),
            settings=settings(max_examples=50, database=None),
        )


@pytest.mark.parametrize("mutant", sorted(SPEC_MUTANTS))
def test_spec_mutants_are_caught(mutant):
    spec = loads_spec(SPEC_MUTANTS[mutant], source=f"<mutant: {mutant}>")
    module = novolstm.load_generated(spec, "numpy")
    example = _first_catch(_generated_run(module))
    assert example is not None


def test_the_design_document_cell_and_the_reference_code_cell_differ():
    module = novolstm.load_generated("novolstm_reference", "numpy")
    assert _first_catch(_generated_run(module)) is not None


def _mutated_module(old: str, new: str) -> types.ModuleType:
    source = novolstm.generate_source("novolstm", "numpy")
    assert old in source
    module = types.ModuleType("novolstm_mutant")
    exec(compile(source.replace(old, new), "<mutant>", "exec"), module.__dict__)
    return module


CODE_MUTANTS = {
    "softmax over the batch axis": (
        "return e / e.sum(axis=-1, keepdims=True)",
        "return e / e.sum(axis=0, keepdims=True)",
    ),
}


def test_code_mutant_softmax_over_the_wrong_axis_is_caught():
    old, new = CODE_MUTANTS["softmax over the batch axis"]
    assert _first_catch(_generated_run(_mutated_module(old, new))) is not None


def test_code_mutant_hard_sigmoid_is_caught():
    module = _mutated_module(
        "return 0.5 * np.tanh(0.5 * z) + 0.5", "return np.clip(0.2 * z + 0.5, 0.0, 1.0)  # Keras 2 hard_sigmoid"
    )
    assert _first_catch(_generated_run(module)) is not None
