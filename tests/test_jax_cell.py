"""The generated JAX cells against the float64 reference: every built-in cell, float64 and
float32 (half precision within its own row of the table), masking, reverse and
bidirectional runs, initialization, single steps and bad input."""

from __future__ import annotations

import contextlib
import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

import novolstm
from novolstm import reference
from novolstm.testing import PROPERTY_CELLS, assert_close, cases, check_against_reference, random_params, tolerance

CELLS = list(PROPERTY_CELLS)  # every cell: tests/test_backends.py, tests/test_conformance.py


def x64(dtype):
    """float64 needs jax_enable_x64; scoped so the rest of the suite runs in JAX's default mode."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def module(cell):
    return novolstm.load_generated(cell, "jax")


def native(cell, **kw):
    """The module's own sequence function, jitted, as ``run(params, x, state, mask)`` with NumPy out."""
    fn = jax.jit(module(cell).sequence, static_argnames=("reverse", "unroll", "time_major"))

    def run(params, x, state, mask):
        with x64(x.dtype):
            outputs, final = fn(params, x, state, mask, **kw)
            return np.asarray(outputs), tuple(np.asarray(s) for s in final)

    return run


def problem(cell, batch=3, steps=9, input_size=4, units=5, seed=0, masked=True):
    rng = np.random.default_rng(seed)
    spec = novolstm.load_spec(cell)
    params = random_params(spec, input_size, units, rng)
    x = rng.normal(size=(batch, steps, input_size))
    state = tuple(rng.normal(size=(batch, units)) for _ in spec.state_names)
    mask = rng.random((batch, steps)) < 0.7 if masked else None
    return params, x, state, mask


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=8)
@given(data=st.data())
def test_sequence_matches_reference(cell, dtype, data):
    case = data.draw(cases(cell))
    target(check_against_reference(cell, native(cell), case, dtype), label=f"jax {cell} {dtype}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fixed_problem_and_unroll(cell, dtype):
    params, x, state, mask = problem(cell, steps=12)
    expected, expected_state = reference.run(cell, params, x, state, mask=mask)
    tol = tolerance(dtype, 12)
    cast = {k: v.astype(dtype) for k, v in params.items()}
    results = []
    for unroll in (1, 5):  # 5 does not divide 12: a remainder loop too
        out, final = native(cell, unroll=unroll)(cast, x.astype(dtype), tuple(s.astype(dtype) for s in state), mask)
        assert out.dtype == np.dtype(dtype) and all(s.dtype == np.dtype(dtype) for s in final)
        assert_close(out, expected, tol, what=f"{cell} outputs (unroll {unroll})")
        for got, want in zip(final, expected_state):
            assert_close(got, want, tol, what=f"{cell} final state (unroll {unroll})")
        results.append(out)
    # Unrolling changes the loop, not the arithmetic.
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=10 * np.finfo(dtype).eps)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision(cell, dtype):
    params, x, state, mask = problem(cell, steps=8)
    expected, expected_state = reference.run(cell, params, x, state, mask=mask)
    m = module(cell)
    jdtype = jnp.dtype(dtype)
    out, final = jax.jit(m.sequence)(
        {k: jnp.asarray(v, jdtype) for k, v in params.items()},
        jnp.asarray(x, jdtype),
        tuple(jnp.asarray(s, jdtype) for s in state),
        mask,
    )
    assert out.dtype == jdtype and all(s.dtype == jdtype for s in final)
    tol = tolerance(dtype, 8)
    assert_close(np.asarray(out, np.float64), expected, tol, what=f"{cell} {dtype} outputs")
    for got, want in zip(final, expected_state):
        assert_close(np.asarray(got, np.float64), want, tol, what=f"{cell} {dtype} final state")


def test_run_numpy_honours_the_input_dtype():
    params, x, state, mask = problem("novolstm")
    out64, st64 = novolstm.run("novolstm", params, x, state, backend="jax", mask=mask)
    out32, st32 = novolstm.run("novolstm", params, x.astype(np.float32), state, backend="jax", mask=mask)
    assert out64.dtype == np.float64 and out32.dtype == np.float32
    assert not jax.config.jax_enable_x64  # the float64 run enabled x64 for itself only
    assert_close(out64, reference.run("novolstm", params, x, state, mask=mask)[0], what="float64 outputs")


# ---------------------------------------------------------------- masking, reverse, bidirectional


@pytest.mark.parametrize("cell", CELLS)
def test_masking_rule(cell):
    params, x, state, mask = problem(cell)
    mask[0] = False  # a row with no real step keeps its initial state
    mask[1, :4] = False  # leading padding
    with x64("float64"):
        out, final = jax.jit(module(cell).sequence)(params, x, state, mask)
        out, final = np.asarray(out), [np.asarray(s) for s in final]
    assert (out[~mask] == 0.0).all()  # exactly zero, not merely small
    for got, initial in zip(final, state):
        np.testing.assert_array_equal(got[0], initial[0])  # carried through unchanged
    expected, expected_state = reference.run(cell, params, x, state, mask=mask)
    assert_close(out, expected, what="outputs")
    for got, want in zip(final, expected_state):
        assert_close(got, want, what="final state")


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_equal_their_mask(cell):
    params, x, state, _ = problem(cell)
    lengths = np.array([9, 3, 0])
    mask = np.arange(9)[None, :] < lengths[:, None]
    with x64("float64"):
        m = module(cell)
        a = m.sequence(params, x, state, lengths=lengths)
        b = m.sequence(params, x, state, mask=mask)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert_close(np.asarray(a[0]), reference.run(cell, params, x, state, lengths=lengths)[0], what="outputs")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("masked", [False, True])
def test_reverse(cell, masked):
    params, x, state, mask = problem(cell, masked=masked)
    with x64("float64"):
        out, final = jax.jit(module(cell).sequence, static_argnames="reverse")(params, x, state, mask, reverse=True)
    flipped_mask = None if mask is None else mask[:, ::-1]
    expected, expected_state = reference.run(cell, params, x[:, ::-1], state, mask=flipped_mask)
    assert_close(np.asarray(out), expected[:, ::-1], what="reverse outputs (aligned with the inputs)")
    for got, want in zip(final, expected_state):
        assert_close(np.asarray(got), want, what="reverse final state")


def test_reverse_with_right_padding_starts_at_each_last_real_step():
    params, x, state, _ = problem("lstm", masked=False)
    lengths = np.array([9, 5, 1])
    with x64("float64"):
        out, _ = module("lstm").sequence(params, x, None, lengths=lengths, reverse=True)
    for b, n in enumerate(lengths):  # the valid part alone, reversed, from a zero state
        expected, _ = reference.run("lstm", params, x[b : b + 1, :n][:, ::-1])
        assert_close(np.asarray(out)[b : b + 1, :n], expected[:, ::-1], what=f"row {b}")
        assert (np.asarray(out)[b, n:] == 0).all()


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional(cell):
    params, x, state, mask = problem(cell)
    params_bw, _, state_bw, _ = problem(cell, seed=1)
    with x64("float64"):
        m = module(cell)
        out, (fin_fw, fin_bw) = jax.jit(m.bidirectional)((params, params_bw), x, (state, state_bw), mask)
        summed, _ = m.bidirectional((params, params_bw), x, (state, state_bw), mask, merge="sum")
    fw, fw_state = reference.run(cell, params, x, state, mask=mask)
    bw, bw_state = reference.run(cell, params_bw, x[:, ::-1], state_bw, mask=mask[:, ::-1])
    H = fw.shape[-1]
    assert out.shape == x.shape[:2] + (2 * H,)
    assert_close(np.asarray(out)[..., :H], fw, what="forward half")
    assert_close(np.asarray(out)[..., H:], bw[:, ::-1], what="backward half")
    assert_close(np.asarray(summed), fw + bw[:, ::-1], what="merge='sum'")
    for got, want in zip(fin_fw + fin_bw, fw_state + bw_state):
        assert_close(np.asarray(got), want, what="final states")


# ---------------------------------------------------------------- layouts, steps, init


@pytest.mark.parametrize("cell", ["novolstm", "gru"])
def test_time_major_unbatched_and_step(cell):
    params, x, state, mask = problem(cell)
    m = module(cell)
    with x64("float64"):
        out, final = m.sequence(params, x, state, mask)
        out_tm, final_tm = m.sequence(params, np.swapaxes(x, 0, 1), state, mask, time_major=True)
        np.testing.assert_array_equal(np.asarray(out_tm), np.swapaxes(np.asarray(out), 0, 1))
        one, one_final = m.sequence(params, x[1], tuple(s[1] for s in state), mask[1])  # (time, input)
        np.testing.assert_allclose(np.asarray(one), np.asarray(out)[1], rtol=0, atol=1e-14)
        for a, b in zip(one_final, final):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[1], rtol=0, atol=1e-14)
        # step by step, with the pure step function
        s = state
        for t in range(x.shape[1]):
            s, y = jax.jit(m.step)(params, s, x[:, t])
        expected, expected_state = reference.run(cell, params, x, state)
        assert_close(np.asarray(y), expected[:, -1], what="last step output")
        for got, want in zip(s, expected_state):
            assert_close(np.asarray(got), want, what="stepped state")


@pytest.mark.parametrize("cell", CELLS)
def test_init_from_seed_equals_init_params(cell):
    with x64("float64"):
        params = module(cell).Cell(6, dtype="float64").init(3, input_size=4)
    expected = novolstm.init_params(cell, input_size=4, units=6, seed=3)
    assert sorted(params) == sorted(expected)
    for name in expected:
        assert params[name].dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(params[name]), expected[name])
    params32 = module(cell).Cell(6).init(3, input_size=4)
    for name in expected:
        assert params32[name].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(params32[name]), expected[name].astype(np.float32))


@pytest.mark.parametrize("cell", CELLS)
def test_init_from_key(cell):
    m = module(cell)
    cell_ = m.Cell(8)
    params = jax.jit(cell_.init, static_argnums=1)(jax.random.key(0), 5)
    shapes = novolstm.load_spec(cell).parameter_shapes(5, 8)
    assert {k: v.shape for k, v in params.items()} == shapes
    assert all(v.dtype == jnp.float32 for v in params.values())
    again = cell_.init(jax.random.key(0), 5)
    other = cell_.init(jax.random.key(1), 5)
    for name, (_dims, init, _) in m.PARAM_TABLE.items():
        np.testing.assert_array_equal(np.asarray(params[name]), np.asarray(again[name]))
        if init in ("glorot_uniform", "orthogonal", "uniform", "normal"):
            assert not np.array_equal(np.asarray(params[name]), np.asarray(other[name]))
        if init == "orthogonal":
            q = np.asarray(params[name], np.float64)
            np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-5)
        if init == "glorot_uniform":
            assert np.abs(np.asarray(params[name])).max() <= np.sqrt(6 / 13)
    weights = [np.asarray(params[n]) for n, (_, init, _) in m.PARAM_TABLE.items() if init == "glorot_uniform"]
    assert all(not np.array_equal(weights[0], w) for w in weights[1:])  # one stream per name


def test_float64_init_without_x64_refuses():
    with pytest.raises(TypeError, match="jax_enable_x64"):
        module("lstm").Cell(4, dtype="float64").init(0, 3)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, x, s, m: (p, x[..., :-1], s, m), "x: expected shape"),
        (lambda p, x, s, m: ({k: v for k, v in p.items() if k != "W_f"}, x, s, m), "missing \\['W_f'\\]"),
        (lambda p, x, s, m: ({**p, "W_q": p["W_f"]}, x, s, m), "unexpected \\['W_q'\\]"),
        (lambda p, x, s, m: ({**p, "U_f": p["U_f"][:, :-1]}, x, s, m), "params\\['U_f'\\]"),
        (lambda p, x, s, m: (p, x, s[:1], m), "state: expected 2 arrays"),
        (lambda p, x, s, m: (p, x, (s[0][:-1], s[1]), m), "state h"),
        (lambda p, x, s, m: (p, x, s, m.astype(int)), "mask: expected a bool array"),
        (lambda p, x, s, m: (p, x, s, m[:, :-1]), "mask: expected a bool array"),
    ],
)
def test_bad_input_is_refused_before_any_arithmetic(change, match):
    args = change(*problem("lstm"))
    with pytest.raises(ValueError, match=match):
        jax.jit(module("lstm").sequence)(*args)


def test_cell_checks_its_units():
    params, x, _, _ = problem("lstm")
    with pytest.raises(ValueError, match="units"):
        module("lstm").Cell(7).sequence(params, x)


# ---------------------------------------------------------------- the generated source


@pytest.mark.parametrize("cell", CELLS)
def test_generated_source_is_standalone_and_documented(cell):
    source = novolstm.generate_source(cell, "jax")
    spec = novolstm.load_spec(cell)
    assert "do not edit" in source and spec.hash in source
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"contextlib", "functools", "importlib", "zlib", "jax", "jax.numpy", "numpy"}, imports
    assert "flax" not in {line.strip() for line in source.splitlines() if line.startswith("import")}
    assert "jax.lax.scan" in source


@pytest.mark.parametrize("cell", CELLS)
def test_generated_module_examples(cell):
    m = module(cell)
    m.NNXCell, m.LinenCell  # noqa: B018 - built on first access, then their examples run too
    result = doctest.testmod(m, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_emitter_examples():
    from novolstm.backends.jax import emit

    result = doctest.testmod(emit)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("cell", CELLS)
def test_step_reads_one_hoisted_array_per_gate_and_one_recurrent_matmul(cell):
    from novolstm.passes import build_program, split_blocks

    program = split_blocks(build_program(novolstm.load_spec(cell)))
    step_linears = [n for n in program.step.nodes if n.op == "linear"]
    # the recurrent projection stays one fused matmul; minLSTM's gates read no state: none
    assert len(step_linears) == (0 if cell == "minlstm" else 1)
    assert [n.op for n in program.prologue.nodes].count("linear") == 1  # so does the input projection
    assert all(program.step[h].width == 1 for h in program.hoisted)  # one (time, batch, units) array per gate


@pytest.mark.parametrize("cell", ["novolstm", "indrnn"])  # one GEMM per block; the whole product
def test_prologue_hoists_bias_free_gemms_the_step_adds_the_biases(cell):
    # The biases enter in the step: over all timesteps XLA would materialize the biased product
    # as one more (time, batch, k*units) array (and the forward+backward's temporaries grow).
    m = module(cell)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in random_params(cell, 3, 4, np.random.default_rng(1)).items()}
    shifted = {k: v + 5.0 if k in m.BIAS_NAMES else v for k, v in params.items()}
    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 2, 3)), jnp.float32)
    hoisted = m.prologue(m.fuse(params, jnp.float32), x, 4)
    assert all(v.shape == (6, 2, 4) for v in jax.tree_util.tree_leaves(hoisted))  # one contiguous array a block
    same = m.prologue(m.fuse(shifted, jnp.float32), x, 4)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), hoisted, same))
    state = tuple(jnp.zeros((2, 4)) for _ in m.STATE_NAMES)
    y, y_shifted = (
        m.cell_step(m.fuse(p, jnp.float32), state, jax.tree_util.tree_map(lambda v: v[0], hoisted))[1]
        for p in (params, shifted)
    )
    assert not np.allclose(y, y_shifted)  # the step adds them
