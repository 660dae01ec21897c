"""The compiled path (novolstm.backends.cpp): a spec's whole sequence, forward and backward, as
one C++ kernel exposed as torch operators. Held to the float64 reference (outputs, state), to
the NumPy generated backward (float64 gradients, itself checked against finite differences of
the reference) and to the generated loop (float32 gradients, reverse direction, several
layers), for every built-in spec; every operation of the language (one spec holding them all),
the domain rule and random specs of the fuzzing strategy against the interpreter and its
central differences; both GEMM paths of the step (a plain loop up to 4 rows, oneDNN / BLAS
above); the kernel's own sigmoid, tanh and softmax, and the runtime's exp and softplus (float32
polynomials) within a few ulp of float64 over every magnitude and the special values; through autograd's gradcheck, torch.compile with no graph break and torch.export; and
the fallbacks when no compiler is present or the emitter lacks an operation.

Kernels build once per spec into NOVOLSTM_CACHE_DIR (tox points it into the env's tmp dir),
about 20 seconds each on one core; the random specs cost one build per example.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings

import novolstm
from novolstm.testing import (
    DOMAIN_SPEC,
    OPERATION_SPECS,
    assert_close,
    cases,
    check_against_interpreter,
    check_against_reference,
    check_gradients_against_interpreter,
    check_gradients_close,
    operation_cases,
    pairwise_tolerance,
    spec_cases,
    tolerance,
)

#: Every built-in spec runs the compiled path (test_every_built_in_spec_compiles).
SPECS = novolstm.list_specs()


def test_every_built_in_spec_compiles():
    # A spec the emitter refused would silently run the generated loop: none may.
    from novolstm.backends.cpp.emit import generate
    from novolstm.codegen import plan

    for spec in SPECS:
        kernel = generate(plan(novolstm.load_spec(spec)), namespace="probe")
        assert "TORCH_LIBRARY(probe, m)" in kernel.source


def test_a_spec_the_emitter_does_not_compile_runs_the_loop_without_a_warning(monkeypatch, rng):
    """An operation the C++ table lacks (gelu taken out of it): the loop, no warning; compiled=True says why."""
    from novolstm.backends.cpp import emit

    monkeypatch.delitem(emit.OPS, "gelu")
    spec = novolstm.loads_spec(OPERATION_SPECS["gelu"].replace('name = "op_gelu"', 'name = "op_gelu_uncompiled"'))
    Layer = novolstm.get_layer("torch", spec=spec)
    x = torch.tensor(rng.normal(size=(5, 2, 3)))
    auto, loop = Layer(3, 4, dtype=torch.float64), Layer(3, 4, dtype=torch.float64, compiled=False)
    loop.load_state_dict(auto.state_dict())
    assert torch.equal(auto(x)[0], loop(x)[0])  # warnings are errors here: none was raised
    with pytest.raises(RuntimeError, match="compiled=True.*the C\\+\\+ emitter does not compile op 'gelu'"):
        Layer(3, 4, dtype=torch.float64, compiled=True)(x)


DTYPES = {"float64": torch.float64, "float32": torch.float32}


def layers(spec, case, dtype, **kwargs):
    """The compiled Layer and the generated loop's, with the case's parameters."""
    Layer = novolstm.get_layer("torch", spec=spec)
    input_size, units = case.x.shape[-1], next(iter(case.params.values())).shape[-1]
    out = []
    for compiled in (True, False):
        layer = Layer(
            input_size, units, batch_first=True, dtype=DTYPES[dtype], fused=False, compiled=compiled, **kwargs
        )
        layer.load_canonical({key: case.params for key in layer.cells} if len(layer.cells) > 1 else case.params)
        out.append(layer)
    return out


def run_with_grads(layer, case, dtype, g_out, g_state):
    """Outputs, final state, and the gradients of <outputs, g_out> + <final state, g_state>."""
    x = torch.tensor(case.x, dtype=DTYPES[dtype], requires_grad=True)
    B, H = case.x.shape[0], next(iter(case.params.values())).shape[-1]
    state0 = case.state if case.state is not None else tuple(np.zeros((B, H)) for _ in layer.state_names)
    hx = tuple(torch.tensor(s[None], dtype=DTYPES[dtype], requires_grad=True) for s in state0)
    masking = {k: torch.tensor(v) for k, v in case.masking.items()}
    out, final = layer(x, hx if len(hx) > 1 else hx[0], **masking)
    final = final if isinstance(final, tuple) else (final,)
    loss = (out * torch.tensor(g_out, dtype=out.dtype)).sum() + sum(
        (f[0] * torch.tensor(g, dtype=f.dtype)).sum() for f, g in zip(final, g_state)
    )
    names = [n for n, _ in layer.named_parameters()]
    grads = torch.autograd.grad(loss, [x, *hx, *layer.parameters()], allow_unused=True)
    as_np = lambda t: None if t is None else t.detach().double().numpy()  # noqa: E731
    return (
        as_np(out),
        tuple(as_np(f[0]) for f in final),
        as_np(grads[0]),
        tuple(as_np(g[0]) for g in grads[1 : 1 + len(hx)]),
        {n.rsplit(".", 1)[1]: as_np(g) for n, g in zip(names, grads[1 + len(hx) :])},
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", SPECS)
def test_compiled_matches_reference_numpy_backward_and_loop(spec, dtype):
    @settings(max_examples=12)
    @given(case=cases(spec, max_steps=10))
    def check(case):
        compiled, loop = layers(spec, case, dtype)
        rng = np.random.default_rng(case.x.size)
        B, T = case.x.shape[:2]
        H = next(iter(case.params.values())).shape[-1]
        g_out = rng.normal(size=(B, T, H))
        g_state = tuple(rng.normal(size=(B, H)) for _ in compiled.state_names)
        got = run_with_grads(compiled, case, dtype, g_out, g_state)
        # outputs and final state: the float64 reference
        check_against_reference(spec, lambda *a: got[:2], case, dtype)
        # gradients: the NumPy float64 backward (where masked, outputs zero and state carried)
        numpy_module = novolstm.load_generated(spec, "numpy")
        _, _, vjp = numpy_module.vjp_numpy(case.params, case.x, case.state, case.mask)
        g_x, g_s0, g_p = vjp(g_out, g_state)
        gtol = tolerance(dtype, T, kind="gradients")
        assert_close(got[2], g_x, gtol, what=f"{spec} grad x")
        for k, g in enumerate(g_s0):
            assert_close(got[3][k], g, gtol, what=f"{spec} grad initial state {k}")
        for name, g in g_p.items():
            assert_close(got[4][name], g, gtol, what=f"{spec} grad {name}")
        # and the generated loop in the same dtype
        want = run_with_grads(loop, case, dtype, g_out, g_state)
        ptol = pairwise_tolerance(dtype, dtype, T, kind="gradients")
        assert_close(got[0], want[0], pairwise_tolerance(dtype, dtype, T), what="outputs vs loop")
        assert_close(got[2], want[2], ptol, what="grad x vs loop")
        for name in want[4]:
            assert_close(got[4][name], want[4][name], ptol, what=f"grad {name} vs loop")

    check()


@pytest.mark.parametrize("spec", SPECS)
def test_compiled_stacked_bidirectional_matches_loop(spec, rng):
    """Reverse direction, two layers, a mask with gaps: the compiled Layer against the loop's."""
    Layer = novolstm.get_layer("torch", spec=spec)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=torch.float64, fused=False)
    compiled, loop = Layer(3, 4, compiled=True, **kwargs), Layer(3, 4, compiled=False, **kwargs)
    params = {
        key: novolstm.testing.random_params(spec, cell.input_size, 4, rng) for key, cell in compiled.cells.items()
    }
    compiled.load_canonical(params), loop.load_canonical(params)
    T, B = 7, 3
    x = rng.normal(size=(T, B, 3))
    mask = torch.tensor(rng.random((B, T)) < 0.7)
    results = []
    for layer in (compiled, loop):
        xt = torch.tensor(x, requires_grad=True)
        out, final = layer(xt, mask=mask)
        final = final if isinstance(final, tuple) else (final,)
        (out.pow(2).sum() + sum(f.sum() for f in final)).backward()
        results.append(
            (out.detach(), [f.detach() for f in final], xt.grad, {n: p.grad for n, p in layer.named_parameters()})
        )
    tol, gtol = (
        pairwise_tolerance("float64", "float64", T),
        pairwise_tolerance("float64", "float64", T, kind="gradients"),
    )
    assert_close(results[0][0].numpy(), results[1][0].numpy(), tol, what="outputs")
    for a, b in zip(results[0][1], results[1][1]):
        assert_close(a.numpy(), b.numpy(), tol, what="final state")
    assert_close(results[0][2].numpy(), results[1][2].numpy(), gtol, what="grad x")
    for name, g in results[1][3].items():
        assert_close(results[0][3][name].numpy(), g.numpy(), gtol, what=f"grad {name}")


# The step's GEMMs: a plain loop up to 4 rows; above, the packed AVX-512 kernel in float32 (or
# oneDNN / BLAS): row blocks with a tail (9 and 45 rows), one partial column panel (6 units) or
# several with a partial last one (70 units), big enough at 45 by 70 for two threads to split
# every GEMM, weight gradient and loop over rows. The kernel runs on two threads; at 45 by 70 in
# float32 with AVX-512 (the kernels that split columns and rows, never a sum) one, three and six
# threads must give the same bits: two and three threads each run their own rows through every
# step, six (7 rows a thread) split the step GEMM's panels too, with barriers (see rt::Team).
@pytest.mark.parametrize("batch, inputs, units", [(1, 5, 6), (9, 5, 6), (45, 50, 70)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", ["novolstm", "gru"])
def test_compiled_matches_loop_on_both_gemm_paths(spec, dtype, batch, inputs, units, rng):
    Layer = novolstm.get_layer("torch", spec=spec)
    compiled = Layer(inputs, units, compiled=True, fused=False, dtype=DTYPES[dtype])
    loop = Layer(inputs, units, compiled=False, fused=False, dtype=DTYPES[dtype])
    compiled.load_canonical(novolstm.testing.random_params(spec, inputs, units, rng))
    loop.load_state_dict(compiled.state_dict())
    T = 8
    x = rng.normal(size=(T, batch, inputs))
    mask = torch.tensor(rng.random((batch, T)) < 0.8)
    # (out * per-unit weights).sum(): the outputs' gradient arrives broadcast (strides 0, 0, 1), and
    # the kernel reads it through its strides; out.square() gives every row a gradient of its own.
    weights = torch.tensor(rng.normal(size=units), dtype=DTYPES[dtype])

    def run(layer, threads):
        layer.zero_grad(set_to_none=True)
        xt = torch.tensor(x, dtype=DTYPES[dtype], requires_grad=True)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out, _ = layer(xt, mask=mask)
            ((out * weights).sum() + out.square().sum() if batch > 1 else (out * weights).sum()).backward()
        finally:
            torch.set_num_threads(before)
        return out.detach(), xt.grad, {n: p.grad for n, p in layer.named_parameters()}

    results = [run(compiled, 2), run(loop, 2)]
    if batch == 45 and dtype == "float32" and torch.backends.cpu.get_cpu_capability() == "AVX512":
        for threads in (1, 3, 6):
            other = run(compiled, threads)
            assert torch.equal(other[0], results[0][0]), f"outputs on {threads} thread(s)"
            assert torch.equal(other[1], results[0][1]), f"grad x on {threads} thread(s)"
            for name, g in results[0][2].items():
                assert torch.equal(other[2][name], g), f"grad {name} on {threads} thread(s)"
    tol = pairwise_tolerance(dtype, dtype, T)
    gtol = pairwise_tolerance(dtype, dtype, T, kind="gradients")
    assert_close(results[0][0].double().numpy(), results[1][0].double().numpy(), tol, what="outputs")
    assert_close(results[0][1].double().numpy(), results[1][1].double().numpy(), gtol, what="grad x")
    for name, g in results[1][2].items():
        assert_close(results[0][2][name].double().numpy(), g.double().numpy(), gtol, what=f"grad {name}")


def test_compiled_gradient_of_the_final_state_alone_matches_loop(rng):
    # No loss reads the outputs (nor the tape): their gradients reach the kernel as None, not
    # as zeros torch made (torch_ext: set_materialize_grads(False)), and count as zeros.
    Layer = novolstm.get_layer("torch", spec="ln_lstm")
    compiled = Layer(4, 5, compiled=True, fused=False, dtype=torch.float64)
    loop = Layer(4, 5, compiled=False, fused=False, dtype=torch.float64)
    compiled.load_canonical(novolstm.testing.random_params("ln_lstm", 4, 5, rng))
    loop.load_state_dict(compiled.state_dict())
    x = rng.normal(size=(6, 3, 4))
    grads = []
    for layer in (compiled, loop):
        xt = torch.tensor(x, requires_grad=True)
        _, (h, c) = layer(xt)
        grads.append(torch.autograd.grad((h * c).sum(), [xt, *layer.parameters()]))
    gtol = pairwise_tolerance("float64", "float64", 6, kind="gradients")
    for got, want in zip(*grads):
        assert_close(got.numpy(), want.numpy(), gtol, what="grad of the final state")


# Steps whose rows never meet (no product over the state) in the loop's one parallel region
# (emit.team_loop): mingru elementwise alone; indrnn with its recurrent vector's gradient a sum
# over the rows, summed after the last step. 7 steps (odd: the state's double buffers end
# swapped) of 20 rows of 96 units: on two threads each runs its own 10 rows with no barrier, on
# three (fewer than 8 rows each) the step's parts with a barrier between. Both directions with a
# mask gapped, float64 against the generated loop; float32 the same bits on 1, 2 and 3 threads.
@pytest.mark.parametrize("spec", ["mingru", "indrnn"])
def test_rows_apart_loop_matches_loop_both_directions_on_any_thread_count(spec, rng):
    Layer = novolstm.get_layer("torch", spec=spec)
    inputs, units, T, B = 5, 96, 7, 20
    layers = {
        (compiled, dtype): Layer(inputs, units, bidirectional=True, fused=False, compiled=compiled, dtype=DTYPES[dtype])
        for compiled in (True, False)
        for dtype in ("float64", "float32")
    }
    params = {key: novolstm.testing.random_params(spec, inputs, units, rng) for key in layers[True, "float64"].cells}
    for layer in layers.values():
        layer.load_canonical(params)
    x = rng.normal(size=(T, B, inputs))
    mask = torch.tensor(rng.random((B, T)) < 0.7)
    g_out = rng.normal(size=(T, B, 2 * units))

    def run(key, threads):
        layer = layers[key]
        xt = torch.tensor(x, dtype=DTYPES[key[1]], requires_grad=True)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out, final = layer(xt, mask=mask)
            ((out * torch.tensor(g_out, dtype=out.dtype)).sum() + final.square().sum()).backward()
        finally:
            torch.set_num_threads(before)
        grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
        layer.zero_grad(set_to_none=True)
        return out.detach(), final.detach(), xt.grad, grads

    got, want = run((True, "float64"), 2), run((False, "float64"), 2)
    tol = pairwise_tolerance("float64", "float64", T)
    gtol = pairwise_tolerance("float64", "float64", T, kind="gradients")
    assert_close(got[0].numpy(), want[0].numpy(), tol, what="outputs")
    assert_close(got[1].numpy(), want[1].numpy(), tol, what="final state")
    assert_close(got[2].numpy(), want[2].numpy(), gtol, what="grad x")
    for name, g in want[3].items():
        assert_close(got[3][name].numpy(), g.numpy(), gtol, what=f"grad {name}")
    single = run((True, "float32"), 1)
    assert_close(single[0].double().numpy(), want[0].numpy(), tolerance("float32", T), what="float32 outputs")
    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # the packed kernels: threads never split a sum
        for threads in (2, 3):
            other = run((True, "float32"), threads)
            for k, what in enumerate(["outputs", "final state", "grad x"]):
                assert torch.equal(other[k], single[k]), f"{what} on {threads} threads"
            for name, g in single[3].items():
                assert torch.equal(other[3][name], g), f"grad {name} on {threads} threads"


def compiled_op(spec):
    from novolstm.backends.cpp.torch_ext import compiled_sequence

    return compiled_sequence(novolstm.load_spec(spec).dumps())


# ---------------------------------------------------------------- the kernel's own elementwise functions

#: Special values and the edges of exp's range (float32 overflow near 88.7, subnormal results
#: below -87.3, zero below -103.9), both signs.
SPECIAL_VALUES = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-38, -1e-38, 3.4e38, -3.4e38]
SPECIAL_VALUES += [s * v for v in (0.0625, 0.5, 9.0, 44.0, 87.3, 88.7, 89.0, 103.9, 104.0, 150.0) for s in (1, -1)]


def float32_sweep(count):
    """``count`` float32 values: every magnitude from the smallest subnormal to the largest finite
    float (log-spaced, both signs), and a dense linear sweep over [-24, 24], where the functions bend."""
    magnitudes = np.geomspace(1e-45, 3.4e38, count // 4)
    linear = np.linspace(-24.0, 24.0, count - 2 * (count // 4))
    return np.concatenate([magnitudes, -magnitudes, linear]).astype(np.float32)


def functions_through_the_kernel(op, z, dtype):
    """sigmoid(z), tanh(z) and softmax over each row of z (rows, units), as the novolstm kernel's
    step computes them: read from its tape, every projection's weights the identity on x (so each
    gate's pre-activation is exactly z, the GEMMs adding exact zeros) or, for values a GEMM would
    turn into NaN (infinities, NaN: inf * 0), zero weights and z as the bias (rows must be 1)."""
    spec = novolstm.load_spec("novolstm")
    rows, units = z.shape
    through_bias = not np.isfinite(z).all()
    assert rows == 1 or not through_bias
    params = {}
    for name in spec.param_names:
        if name.startswith("W_") and not through_bias:
            params[name] = np.eye(units)
        elif name.startswith("b_") and through_bias:
            params[name] = z[0]
        elif name == "gamma_i":
            params[name] = np.ones(units)
        else:
            params[name] = np.zeros((units, units) if name[:2] in ("W_", "U_") else units)
    x = np.zeros((1, rows, units)) if through_bias else z[None]
    tensors = [torch.tensor(params[n], dtype=dtype) for n in spec.param_names]
    state = [torch.zeros(rows, units, dtype=dtype) for _ in spec.state_names]
    outs = op.forward_op(torch.tensor(x, dtype=dtype), None, False, True, state, tensors)
    tape = {e.name: t for e, t in zip(op.layout.tape, outs[1 + len(spec.state_names) :])}
    ifo = tape["s_sigmoid_ifo"][0].double().numpy()
    for k in (1, 2):  # the three sigmoid gates are one loop over 3 * units elements
        np.testing.assert_array_equal(ifo[:, k * units : (k + 1) * units], ifo[:, :units])
    as_np = lambda name: tape[name][0].double().numpy()  # noqa: E731
    return ifo[:, :units], as_np("s_g"), as_np("s_i_softmax")


def float64_functions(z, dtype):
    """sigmoid, tanh and softmax of z in float64; softmax's shift z - max z rounded to ``dtype``
    first, as any softmax in that dtype rounds it (in float32 that rounding alone moves exp of a
    shift near -68 by up to 64 ulp)."""
    with np.errstate(over="ignore", invalid="ignore"):
        shift = (z.astype(dtype) - z.astype(dtype).max(axis=1, keepdims=True)).astype(np.float64)
        z = z.astype(np.float64)
        e = np.exp(-np.abs(z))
        sigmoid = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
        shifted = np.exp(shift)
        softmax = shifted / shifted.sum(axis=1, keepdims=True)
    return sigmoid, np.tanh(z), softmax


def assert_within_ulps(got, want, dtype, ulps, what):
    """got within ``ulps`` units in the last place (of dtype, at want rounded to dtype) of want;
    NaN where want is NaN, and equal infinities."""
    want_r = want.astype(dtype)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want_r), err_msg=f"{what}: NaN positions")
    finite = np.isfinite(want_r)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want_r)], want_r[~finite & ~np.isnan(want_r)])
    err = np.abs(got[finite] - want[finite]) / np.spacing(np.abs(want_r[finite])).astype(np.float64)
    worst = int(np.argmax(err)) if err.size else 0
    assert err.size == 0 or err[worst] <= ulps, (
        f"{what}: {err[worst]:.1f} ulp at z giving {want[finite][worst]!r} (got {got[finite][worst]!r})"
    )


#: A loop over the runtime's float exp and softplus, built as the kernels are (their flags): the
#: spec's exp takes any argument (overflow included), which no built-in spec's kernel reaches.
RUNTIME_SWEEP = """
extern "C" void sweep(const float* z, float* exp_out, float* softplus_out, long n) {
  for (long j = 0; j < n; ++j) exp_out[j] = novolstm_rt::exp(z[j]);
  for (long j = 0; j < n; ++j) softplus_out[j] = novolstm_rt::softplus(z[j]);
}
"""


def test_runtime_exp_and_softplus_within_ulps_of_float64_over_the_float_range(tmp_path):
    """The runtime's float32 exp (a polynomial, for every argument: the spec's exp) and softplus
    (log1p of exp(-|z|), a polynomial too) against float64 NumPy over the sweep of every magnitude
    and the special values: overflow to inf, underflow through the subnormals, NaN."""
    import ctypes
    import subprocess

    from novolstm.backends.cpp.c_forward import portable_runtime
    from novolstm.backends.cpp.torch_ext import CFLAGS, _cpu_flags

    source = tmp_path / "sweep.cpp"
    headers = "".join(f"#include <{h}>\n" for h in ("algorithm", "cmath", "cstdint", "cstring"))
    source.write_text(f"{headers}namespace novolstm_rt {{\n{portable_runtime()}\n}}\n{RUNTIME_SWEEP}")
    library = tmp_path / "sweep.so"
    flags = [f for f in CFLAGS if f != "-fopenmp"]
    subprocess.run(["c++", *flags, *_cpu_flags(), "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    sweep = ctypes.CDLL(str(library)).sweep
    z = np.concatenate([float32_sweep(64 * 128), np.array(SPECIAL_VALUES, np.float32)])
    exp, softplus = np.empty_like(z), np.empty_like(z)
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    sweep(pointer(z), pointer(exp), pointer(softplus), ctypes.c_long(z.size))
    z64 = z.astype(np.float64)
    with np.errstate(over="ignore"):
        assert_within_ulps(exp, np.exp(z64), np.float32, 2, "exp")
        assert_within_ulps(softplus, np.maximum(z64, 0) + np.log1p(np.exp(-np.abs(z64))), np.float32, 3, "softplus")


@pytest.mark.parametrize("dtype, ulps", [(np.float32, 4), (np.float64, 6)])
def test_compiled_sigmoid_tanh_and_softmax_within_ulps_of_float64_over_the_float_range(dtype, ulps):
    """The kernel's own exp (a polynomial in float32, vectorized), its sigmoid, tanh and softmax,
    against float64 NumPy: a dense sweep of every magnitude and the special values, NaN and the
    infinities as the reference gives them, subnormal results included."""
    op = compiled_op("novolstm")
    torch_dtype = DTYPES[np.dtype(dtype).name]
    units = 128
    z = float32_sweep(64 * units).reshape(64, units)
    specials = np.resize(np.array(SPECIAL_VALUES, np.float32), (1, units))
    for values, what in ((z, "sweep"), (specials, "special values")):
        sigmoid, tanh, softmax = functions_through_the_kernel(op, values, torch_dtype)
        want = float64_functions(values, dtype)
        assert_within_ulps(sigmoid, want[0], dtype, ulps, f"sigmoid ({what})")
        assert_within_ulps(tanh, want[1], dtype, ulps, f"tanh ({what})")
        if what == "sweep":  # a row of special values has an infinity: a NaN row, as the reference's
            assert_within_ulps(softmax, want[2], dtype, ulps, f"softmax ({what})")
        else:
            assert np.isnan(softmax).all() and np.isnan(want[2]).all()


@pytest.mark.parametrize("spec", ["novolstm", "gru"])
def test_gradcheck(spec, rng):
    op = compiled_op(spec)
    names = novolstm.load_spec(spec).param_names
    params = novolstm.testing.random_params(spec, 2, 3, rng)
    tensors = [torch.tensor(params[n], requires_grad=True) for n in names]
    x = torch.tensor(rng.normal(size=(4, 2, 2)), requires_grad=True)
    state = [torch.tensor(rng.normal(size=(2, 3)), requires_grad=True) for _ in novolstm.load_spec(spec).state_names]
    mask = torch.tensor([[True, True], [False, True], [True, False], [True, True]])
    n = len(state)

    def f(x, *rest):
        ys, final = op(x, mask, True, list(rest[:n]), list(rest[n:]))
        return (ys, *final)

    assert torch.autograd.gradcheck(f, (x, *state, *tensors))


def test_double_backward_through_the_kernel_raises_a_clear_error(rng):
    layer = novolstm.get_layer("torch", spec="novolstm")(3, 4, compiled=True, dtype=torch.float64)
    x = torch.tensor(rng.normal(size=(5, 2, 3)), requires_grad=True)
    (g,) = torch.autograd.grad(layer(x)[0].square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="compiled sequence kernel is not twice differentiable.*backward='autograd'"):
        g.square().sum().backward()
    # First order is unchanged by the guard: the same gradient without create_graph.
    x2 = x.detach().requires_grad_()
    (g2,) = torch.autograd.grad(layer(x2)[0].square().sum(), x2)
    assert torch.equal(g.detach(), g2)


def test_torch_compile_fullgraph_and_export(rng):
    Layer = novolstm.get_layer("torch", spec="novolstm")
    layer = Layer(3, 4, compiled=True, dtype=torch.float32)
    x = torch.tensor(rng.normal(size=(6, 2, 3)), dtype=torch.float32, requires_grad=True)
    eager_out, _ = layer(x)
    eager_out.sum().backward()
    eager_grad = layer.cells["l0"].W_i.grad.clone()
    layer.zero_grad()
    compiled_layer = torch.compile(layer, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    out, _ = compiled_layer(x)
    out.sum().backward()
    tol = pairwise_tolerance("float32", "float32", 6)
    assert_close(out.detach().numpy(), eager_out.detach().numpy(), tol, what="torch.compile outputs")
    assert_close(
        layer.cells["l0"].W_i.grad.numpy(), eager_grad.numpy(), tol.scaled(10.0), what="torch.compile grad W_i"
    )
    exported = torch.export.export(layer, (x.detach(),))
    assert any("novolstm_" in str(node.target) for node in exported.graph.nodes), "the kernel is one node of the graph"
    assert_close(
        exported.module()(x.detach())[0].detach().numpy(), eager_out.detach().numpy(), tol, what="exported outputs"
    )


def test_compiled_runs_where_it_can_and_says_why_not(rng):
    Layer = novolstm.get_layer("torch", spec="novolstm")
    strict = Layer(3, 4, compiled=True, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="compiled=True.*float32 and float64"):
        strict(torch.ones(5, 2, 3, dtype=torch.float16))
    auto = Layer(3, 4, dtype=torch.float16)
    assert auto(torch.ones(5, 2, 3, dtype=torch.float16))[0].dtype == torch.float16  # the loop, silently
    with pytest.raises(ValueError, match="compiled"):
        Layer(3, 4, compiled="yes")
    assert "compiled=False" in repr(Layer(3, 4, compiled=False))


def test_no_compiler_falls_back_with_one_warning(tmp_path, monkeypatch, rng):
    """A spec never built before (renamed), no compiler: the loop runs, after one warning."""
    text = novolstm.load_spec("gru").dumps().replace('name = "gru"', 'name = "gru_nocompiler"')
    spec = novolstm.loads_spec(text)
    monkeypatch.setenv("NOVOLSTM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    Layer = novolstm.get_layer("torch", spec=spec)
    layer, loop = Layer(3, 4, fused=False), Layer(3, 4, fused=False, compiled=False)
    x = torch.tensor(rng.normal(size=(5, 2, 3)), dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="compiled kernel is unavailable.*no C\\+\\+ compiler"):
        out = layer(x)[0]
    assert torch.equal(out, loop(x)[0])
    with pytest.raises(RuntimeError, match="compiled=True.*no C\\+\\+ compiler"):
        Layer(3, 4, fused=False, compiled=True)(x)


# ---------------------------------------------------------------- any spec: the operations, random specs


def compiled_run_and_vjp(spec):
    """``vjp_numpy(params, x, state, mask) -> (outputs, final_state, vjp)`` through the compiled op
    (its own backward kernel, reached by autograd), as the generated modules give it; batch-major
    NumPy in and out, so that novolstm.testing's interpreter checks take it."""
    from novolstm.backends.cpp.torch_ext import compiled_sequence

    op = compiled_sequence(spec.dumps())
    units_param, units_axis = op.layout.units_param, op.layout.units_axis

    def vjp_numpy(params, x, state, mask):
        batch, units = x.shape[0], params[units_param].shape[units_axis]
        if state is None:
            state = tuple(np.zeros((batch, units), x.dtype) for _ in spec.state_names)
        xt = torch.tensor(x.transpose(1, 0, 2), requires_grad=True)
        s0 = [torch.tensor(s, requires_grad=True) for s in state]
        ps = [torch.tensor(params[p], requires_grad=True) for p in spec.param_names]
        m = None if mask is None else torch.tensor(np.ascontiguousarray(mask.T))
        ys, final = op(xt, m, False, s0, ps)

        def vjp(g_out, g_state):
            loss = (ys * torch.tensor(g_out.transpose(1, 0, 2))).sum() + sum(
                (f * torch.tensor(g)).sum() for f, g in zip(final, g_state)
            )
            grads = torch.autograd.grad(loss, [xt, *s0, *ps])
            g_x = grads[0].numpy().transpose(1, 0, 2)
            g_s = tuple(g.numpy() for g in grads[1 : 1 + len(s0)])
            return g_x, g_s, {p: g.numpy() for p, g in zip(spec.param_names, grads[1 + len(s0) :])}

        return ys.detach().numpy().transpose(1, 0, 2), tuple(f.detach().numpy() for f in final), vjp

    return vjp_numpy


def check_compiled_against_interpreter(spec, case, seed):
    """Outputs and final state (float64, float32) and gradients (float64 against central differences
    of the interpreter, float32 against those) of the compiled op, on ``case``."""
    vjp_numpy = compiled_run_and_vjp(spec)
    for dtype in ("float64", "float32"):
        check_against_interpreter(spec, lambda *a: vjp_numpy(*a)[:2], case, dtype)
    anchor = check_gradients_against_interpreter(spec, vjp_numpy, case, seed)
    check_gradients_close(spec, vjp_numpy, case, anchor, seed, "float32")


@settings(max_examples=6)
@given(spec_case=operation_cases(None))
def test_every_operation_compiled_matches_interpreter_and_finite_differences(spec_case):
    # One spec holding every operation of the language: one build.
    spec, case = spec_case
    check_compiled_against_interpreter(spec, case, seed=case.x.size)


def test_compiled_domain_rule():
    """log 0 = -inf, log and sqrt of a negative = nan, 1 / 0 = inf: IEEE values, as the interpreter's."""
    from novolstm import interpret

    spec = novolstm.loads_spec(DOMAIN_SPEC)
    vjp_numpy = compiled_run_and_vjp(spec)
    for dtype in (np.float64, np.float32):
        params = {"W": np.array([[1.0, -1.0, 0.5]], dtype)}
        x = np.array([[[0.0], [2.0], [-3.0]]], dtype)  # batch 1, three steps
        expected, expected_state = interpret.run(spec, {"W": params["W"].astype(np.float64)}, x.astype(np.float64))
        assert np.isneginf(expected[0, 0]).any() and np.isnan(expected[0, 2]).any()
        outputs, state, _ = vjp_numpy(params, x, None, None)
        np.testing.assert_allclose(outputs.astype(np.float64), expected, rtol=1e-6, atol=0)
        for got, want in zip(state, expected_state):
            np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-6, atol=0)


#: Random specs: each example builds a kernel of its own (about 20 s on one core), so few.
RANDOM_SPEC_EXAMPLES = 3


# No shrinking: every shrunk spec is a build of its own (Hypothesis spent minutes on one); the
# failing example prints as drawn.
@settings(max_examples=RANDOM_SPEC_EXAMPLES, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(text_case=spec_cases())
def test_random_specs_compiled_match_interpreter_and_finite_differences(text_case):
    text, case = text_case
    spec = novolstm.loads_spec(text, source="<random spec>")
    check_compiled_against_interpreter(spec, case, seed=case.x.size)


def test_compiled_nan_propagates_through_relu_maximum_and_clip():
    """A NaN stays NaN through relu, maximum and clip, as in the interpreter (a bare comparison drops it)."""
    from novolstm import interpret

    spec = novolstm.loads_spec(
        DOMAIN_SPEC.replace('name = "domain"', 'name = "nan_paths"').replace(
            'y = "log(k)", h_next = "sqrt(k)", c_next = "1 / (k * k)"',
            'n = "log(k)", y = "relu(n)", h_next = "maximum(n, 0.5)", c_next = "clip(n, -1, 1)"',
        )
    )
    vjp_numpy = compiled_run_and_vjp(spec)
    x = np.array([[[-1.0], [2.0]]])  # log of a negative: NaN inside the step
    params = {"W": np.array([[1.0, -1.0, 0.5]])}
    expected, expected_state = interpret.run(spec, params, x)
    assert np.isnan(expected[0, 0]).sum() == 2 and np.isnan(expected_state[1]).any()
    outputs, state, _ = vjp_numpy(params, x, None, None)
    np.testing.assert_array_equal(outputs, expected)
    for got, want in zip(state, expected_state):
        np.testing.assert_array_equal(got, want)
