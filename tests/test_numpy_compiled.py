"""The NumPy backend's compiled step loop (novolstm.backends.cpp.c_forward, numpy_ext): the steps
(and for a small call the prologue too) as one C++ function, built with the system compiler and
called through ctypes. Held to the float64 reference and to the generated loop for every built-in
spec, in float32 and float64, with masks, lengths and initial states, with the prologue in the
kernel and in NumPy (both sides of numpy_ext.PROLOGUE_MAX_WORK); the reverse direction against the
loop on the flipped sequence; random specs of the fuzzing strategy against the interpreter; a
mutated operation must be caught; the automatic choice, the fallbacks (no compiler: one warning;
an operation the emitter lacks: none) and the cache's refusals of libraries it did not build.

Kernels build once per spec into NOVOLSTM_CACHE_DIR (tox shares it between its envs), about a
second each; the random specs cost one build per example.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import novolstm
from novolstm.backends.cpp import c_forward, emit, numpy_ext
from novolstm.codegen import plan
from novolstm.testing import (
    OPERATION_SPECS,
    assert_close,
    cases,
    check_against_interpreter,
    check_against_reference,
    concurrent_calls,
    pairwise_tolerance,
    spec_cases,
)

SPECS = novolstm.list_specs()


@contextlib.contextmanager
def prologue_in_numpy():
    """Compiled calls made inside leave the prologue to NumPy (its BLAS products) whatever their size."""
    saved = numpy_ext.PROLOGUE_MAX_WORK
    numpy_ext.PROLOGUE_MAX_WORK = -1
    try:
        yield
    finally:
        numpy_ext.PROLOGUE_MAX_WORK = saved


class Reversed:
    """A compiled kernel run from the last step to the first."""

    def __init__(self, kernel):
        self.kernel, self.runs_prologue = kernel, kernel.runs_prologue

    def __call__(self, *args, **kwargs):
        return self.kernel(*args, reverse=True, **kwargs)


def run_with(module, compiled, reverse=False):
    """``run(params, x, state, mask)`` of the generated forward, on the compiled step loop (compiled=True,
    and with ``reverse`` its reverse direction) or the generated loop (False)."""

    def run(params, x, state, mask):
        outputs, final, _ = module.forward(params, x, state, mask, compiled=compiled)
        return outputs, final

    if not reverse:
        return run

    def reversed_run(params, x, state, mask):
        # The generated forward hands the kernel its arrays; this runs them from the last step to the first.
        kernel = module._compiled_forward(x.dtype, 1, 1, 1, True)
        real = module._compiled_forward
        module._compiled_forward = lambda *a: Reversed(kernel)
        try:
            return run(params, x, state, mask)
        finally:
            module._compiled_forward = real

    return reversed_run


def test_every_built_in_spec_compiles():
    # A spec the emitter refused would silently run the generated loop (forward or backward): none may.
    for spec in SPECS:
        kernel = c_forward.generate(plan(novolstm.load_spec(spec)), key="probe")
        assert 'return "probe"' in kernel.source and "at::" not in kernel.source and kernel.backward is not None


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=3)
@given(data=st.data())
def test_compiled_matches_reference_and_loop(spec, dtype, data):
    """Outputs and final state of the compiled step loop against the float64 reference, and against
    the generated loop (float64: to rounding; float32: within the pairwise tolerance); every case
    also in the reverse direction against the loop over the flipped sequence. Forward, the kernel
    runs the prologue (these calls are small); reversed, NumPy does."""
    case = data.draw(cases(spec, max_batch=3, max_steps=10))
    module = novolstm.load_generated(spec, "numpy")
    check_against_reference(spec, run_with(module, True), case, dtype)
    c = case.cast(dtype)
    tol = pairwise_tolerance(dtype, dtype, case.steps)
    for reverse in (False, True):
        flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
        with prologue_in_numpy() if reverse else contextlib.nullcontext():
            got, got_state = run_with(module, True, reverse)(c.params, c.x, c.state, c.mask)
        mask = None if c.mask is None else np.ascontiguousarray(flip(c.mask))
        want, want_state = run_with(module, False)(c.params, np.ascontiguousarray(flip(c.x)), c.state, mask)
        assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape
        assert_close(got, flip(want), tol, what=f"{spec} outputs, reverse={reverse}")
        for g, w in zip(got_state, want_state, strict=True):
            assert_close(g, w, tol, what=f"{spec} final state, reverse={reverse}")


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=2)
@given(data=st.data())
def test_the_compiled_tape_gives_the_loops_gradients(spec, data):
    """forward(keep_tape=True) on the compiled loop writes the tape, with the prologue's values
    where the kernel runs it, and the kernel's backward steps read it (the weight gradients and the
    prologue's backward are NumPy's): every gradient (input, initial state, each parameter) as
    through the generated loop (float64), the prologue in the kernel and in NumPy."""
    case = data.draw(cases(spec, max_batch=3, max_steps=8))
    module = novolstm.load_generated(spec, "numpy")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch, steps, _ = case.x.shape
    units = next(iter(case.params.values())).shape[-1]
    g_out = rng.normal(size=(batch, steps, units))
    g_state = tuple(rng.normal(size=(batch, units)) for _ in module.STATE_NAMES)
    grads = {}
    runs = {"in the kernel": (True, contextlib.nullcontext()), "in NumPy": (True, prologue_in_numpy())}
    for where, (compiled, context) in {**runs, "loop": (False, contextlib.nullcontext())}.items():
        with context:
            _, _, tape = module.forward(case.params, case.x, case.state, case.mask, keep_tape=True, compiled=compiled)
        g_x, g_s, g_p = module.backward(case.params, tape, g_out, g_state)
        grads[where] = [g_x, *g_s, *(g_p[k] for k in sorted(g_p))]
    tol = pairwise_tolerance("float64", "float64", steps, kind="gradients")
    for where in runs:
        for got, want in zip(grads[where], grads["loop"], strict=True):
            assert_close(got, want, tol, f"{spec} gradients, the prologue {where}")


@settings(max_examples=3)
@given(spec_cases(max_batch=3, max_units=4))
def test_random_specs_compiled_match_interpreter_and_loop(text_case):
    text, case = text_case
    spec = novolstm.loads_spec(text, source="<random spec>")
    c_forward.generate(plan(spec), key="probe")  # compiles (else the test below would only say why not)
    module = novolstm.load_generated(spec, "numpy")
    check_against_interpreter(spec, run_with(module, True), case)  # the prologue in the kernel
    with prologue_in_numpy():
        got, got_state = run_with(module, True)(case.params, case.x, case.state, case.mask)
    want, want_state = run_with(module, False)(case.params, case.x, case.state, case.mask)
    for g, w in zip((got, *got_state), (want, *want_state)):
        assert_close(g, w, pairwise_tolerance("float64", "float64", case.steps), what="compiled vs loop")
    grads = []  # through the compiled backward steps (where the emitter compiles them) and the loop's
    for compiled in (True, False):
        _, _, tape = module.forward(case.params, case.x, case.state, case.mask, keep_tape=True, compiled=compiled)
        g_x, g_s, g_p = module.backward(case.params, tape, np.cos(want))
        grads.append([g_x, *g_s, *(g_p[k] for k in sorted(g_p))])
    for g, w in zip(*grads, strict=True):
        assert_close(g, w, pairwise_tolerance("float64", "float64", case.steps, kind="gradients"), "gradients")


def test_a_mutated_operation_is_caught(monkeypatch):
    """The comparison above can fail: with tanh compiled as the logistic, the reference check does."""
    monkeypatch.setitem(emit.OPS, "tanh", lambda n, a: f"rt::sigmoid({a[0]})")
    monkeypatch.setattr(numpy_ext, "_LOADED", {})
    module = novolstm.load_generated("gru", "numpy")
    case = next(iter(_fixed_cases("gru")))
    with pytest.raises(AssertionError, match="gru outputs"):
        check_against_reference("gru", run_with(module, True), case)


def test_a_mutated_backward_operation_is_caught(monkeypatch):
    """The gradient comparison can fail: with the derivative of tanh miscompiled, it does; and with
    no backward kernel the generated loop runs the steps, to the loop's gradients."""
    case = next(iter(_fixed_cases("lstm", steps=5)))
    module = novolstm.load_generated("lstm", "numpy")
    g = np.ones((2, 5, 4))

    def gradients(compiled):
        _, _, tape = module.forward(case.params, case.x, None, case.mask, keep_tape=True, compiled=compiled)
        return module.backward(case.params, tape, g)[0]

    want, tol = gradients(False), pairwise_tolerance("float64", "float64", 5, kind="gradients")
    kernel = module._compiled_forward(np.float64, 1, 1, 1, True)
    monkeypatch.setattr(kernel, "backward_layout", None)
    assert_close(gradients(True), want, tol, "the loop's backward steps after the compiled forward")
    monkeypatch.setitem(emit.OPS, "tanh_grad", lambda n, a: f"{a[0]} * (T(1) - {a[1]})")
    monkeypatch.setattr(numpy_ext, "_LOADED", {})
    with pytest.raises(AssertionError, match="compiled backward"):
        assert_close(gradients(True), want, tol, "the compiled backward")


def _fixed_cases(spec, batch=2, steps=6, inputs=3, units=4, seed=0):
    from novolstm.testing import Case, random_params

    rng = np.random.default_rng(seed)
    params = random_params(novolstm.load_spec(spec), inputs, units, rng)
    yield Case(params, rng.normal(size=(batch, steps, inputs)), None, rng.random((batch, steps)) < 0.7)


def test_auto_runs_the_compiled_loop_from_compiled_min_steps():
    module = novolstm.load_generated("lstm", "numpy")
    n, work = module.COMPILED_MIN_STEPS, module.COMPILED_MAX_WORK

    def choose(dtype=np.float32, batch=1, steps=n, units=64, compiled=None):
        return module._compiled_forward(dtype, batch, steps, units, compiled)

    assert choose() is not None and choose(np.float64) is not None
    assert choose(batch=work // 64**2) is not None and choose(batch=work // 64**2 + 1) is None  # large: BLAS
    assert choose(steps=n - 1) is None  # short: the loop
    assert choose(compiled=False) is None
    assert choose(steps=1, batch=work, compiled=True) is not None
    # the latency shape's prologue runs in the kernel (no BLAS call), the typical shape's in NumPy
    assert choose().runs_prologue(1, 1000, 64, 64) and not choose().runs_prologue(32, 100, 128, 128)
    with pytest.raises(ValueError, match="compiled: expected None"):
        module.Cell(2, 3, compiled="yes")
    with pytest.raises(RuntimeError, match="float32 and float64, not float16"):
        choose(np.float16, compiled=True)


def test_cell_runs_compiled_and_its_vjp_runs_the_loop(rng):
    module = novolstm.load_generated("novolstm", "numpy")
    x = rng.normal(size=(2, 40, 3)).astype(np.float32)
    auto, loop = module.Cell(3, 5, dtype="float32"), module.Cell(3, 5, dtype="float32", compiled=False)
    (y_auto, s_auto), (y_loop, s_loop) = auto.sequence(x), loop.sequence(x)
    tol = pairwise_tolerance("float32", "float32", 40)
    for got, want in zip((y_auto, *s_auto), (y_loop, *s_loop), strict=True):
        assert_close(got, want, tol, "compiled vs loop")
    assert y_auto.flags.c_contiguous and not np.array_equal(y_auto, y_loop)  # not the loop: rounded otherwise
    (y_vjp, _, vjp), (_, _, loop_vjp) = auto.sequence_with_vjp(x), loop.sequence_with_vjp(x)
    assert np.array_equal(y_vjp, y_auto)  # the compiled forward wrote the tape
    g = np.ones_like(y_vjp)
    (gx, gs, gp), (lx, ls, lp) = vjp(g), loop_vjp(g)
    tol = pairwise_tolerance("float32", "float32", 40, kind="gradients")
    for got, want in zip((gx, *gs, *gp.values()), (lx, *ls, *lp.values()), strict=True):
        assert_close(got, want, tol, "gradients through the compiled tape")


def test_concurrent_calls_share_one_kernel(rng):
    """Threads calling the same compiled loop at once (ctypes releases the GIL) get the answer of one call."""
    module = novolstm.load_generated("novolstm", "numpy")
    params = module.init_params(3, 6, dtype="float32")
    xs = [rng.normal(size=(2, 50, 3)).astype(np.float32) for _ in range(4)]
    alone = [module.forward(params, x, compiled=True)[0] for x in xs]
    together = concurrent_calls(lambda: [module.forward(params, x, compiled=True)[0] for x in xs], threads=4)
    assert all(np.array_equal(a, b) for got in together for a, b in zip(got, alone, strict=True))


def test_no_compiler_falls_back_with_one_warning(tmp_path, monkeypatch, rng):
    module = novolstm.load_generated("lstm", "numpy")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("NOVOLSTM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(numpy_ext, "_LOADED", {})
    monkeypatch.setattr(module, "_COMPILED_WARNED", [])
    params = novolstm.init_params("lstm", 3, 4, dtype="float32")
    x = rng.normal(size=(2, module.COMPILED_MIN_STEPS, 3)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = module.forward(params, x)
        second = module.forward(params, x)
    assert [str(w.message) for w in caught] == [
        f"novolstm: the compiled step loop is unavailable, running the generated loop: no C++ compiler "
        f"({str(tmp_path / 'no-such-compiler')!r} is not on PATH; set CXX to one)"
    ]
    loop = module.forward(params, x, compiled=False)
    for got in (first, second):
        assert np.array_equal(got[0], loop[0]) and all(np.array_equal(a, b) for a, b in zip(got[1], loop[1]))
    with pytest.raises(RuntimeError, match="compiled=True, but .*no C\\+\\+ compiler"):
        module.forward(params, x, compiled=True)


def test_a_spec_the_emitter_does_not_compile_runs_the_loop_without_a_warning(monkeypatch, rng):
    monkeypatch.delitem(emit.OPS, "gelu")
    text = OPERATION_SPECS["gelu"].replace('name = "op_gelu"', 'name = "op_gelu_uncompiled"')
    module = novolstm.load_generated(novolstm.loads_spec(text), "numpy")
    params = module.init_params(3, 4)
    x = rng.normal(size=(2, module.COMPILED_MIN_STEPS, 3))
    auto, loop = module.forward(params, x), module.forward(params, x, compiled=False)
    assert np.array_equal(auto[0], loop[0])  # warnings are errors here: none was raised
    with pytest.raises(RuntimeError, match="compiled=True.*the C\\+\\+ emitter does not compile op 'gelu'"):
        module.forward(params, x, compiled=True)


def test_the_kernel_refuses_bad_arrays(rng):
    module = novolstm.load_generated("lstm", "numpy")
    kernel = module._compiled_forward(np.float64, 1, 1, 1, True)
    x, state = rng.normal(size=(2, 3, 4)), (np.zeros((2, 5)), np.zeros((2, 5)))
    w, prologue = rng.normal(size=(5, 20)), (x.swapaxes(0, 1), rng.normal(size=(4, 20)), rng.normal(size=20))
    seq = prologue[0] @ prologue[1] + prologue[2]
    inside, before = kernel(x, state, None, None, w, *prologue), kernel(x, state, None, seq, w, None, None, None)
    assert_close(inside[0], before[0], pairwise_tolerance("float64", "float64", 3), "the prologue in the kernel")
    with pytest.raises(ValueError, match="expected 2 state arrays and 5 arrays"):
        kernel(x, state, None, seq, w)
    with pytest.raises(ValueError, match="w_z_h: expected shape \\(5, 20\\)"):
        kernel(x, state, None, seq, w[:4], *prologue)
    with pytest.raises(ValueError, match="state: expected 2 arrays of shape \\(2, units\\)"):
        kernel(x, (state[0], state[1][:1]), None, seq, w, *prologue)
    with pytest.raises(ValueError, match="mask: expected a bool array of shape \\(2, 3\\)"):
        kernel(x, state, np.ones((2, 3)), seq, w, *prologue)
    with pytest.raises(ValueError, match="seq_z_x: expected shape \\(3, 2, 20\\)"):
        kernel(x, state, None, seq[:2], w, *prologue)
    with pytest.raises(ValueError, match="v_x: expected shape \\(3, 2, 4\\)"):  # the kernel runs the prologue
        kernel(x, state, None, None, w, x, *prologue[1:])
    gru = novolstm.load_generated("gru", "numpy")._compiled_forward(np.float64, 1, 1, 1, True)
    with pytest.raises(ValueError, match="the hoisted arrays: expected all of them .* or none"):
        gru(x, state[:1], None, np.zeros((3, 2, 10)), None, np.zeros((5, 15)), np.zeros(15), *prologue[:1], None, None)


def test_parallel_processes_build_a_kernel_once(tmp_path):
    """Three processes asking at once for a kernel no cache holds: one build (the others wait on
    its file lock and load it), one library, no temporary left behind."""
    log, wrapper = tmp_path / "builds.log", tmp_path / "cxx.py"
    # The compiler itself, counting the builds (its path is in the cache key: a fresh kernel).
    wrapper.write_text(
        "import subprocess, sys\n"
        f"if '-o' in sys.argv:\n    open({str(log)!r}, 'a').write('build\\n')\n"
        "sys.exit(subprocess.call(['c++', *sys.argv[1:]]))\n"
    )
    env = {**os.environ, "CXX": f"{sys.executable} {wrapper}", "NOVOLSTM_CACHE_DIR": str(tmp_path / "cache")}
    script = (
        "import numpy as np, novolstm; module = novolstm.load_generated('mgu', 'numpy'); "
        "print(module._compiled_forward(np.float64, 1, 1, 1, True).library)"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    printed = {run.communicate(timeout=300)[0].strip() for run in runs}
    assert [run.returncode for run in runs] == [0, 0, 0] and len(printed) == 1
    assert log.read_text() == "build\n"
    cache = tmp_path / "cache" / "numpy-ext"
    assert sorted(p.name for p in cache.iterdir() if p.suffix != ".lock") == [os.path.basename(printed.pop())]


def test_the_cache_loads_only_libraries_it_built(tmp_path, monkeypatch):
    """A library built once is reused from the cache; a link, a file others may write, or another
    kernel's library under this one's name is refused (the loop then runs), never loaded."""
    module = novolstm.load_generated("lstm", "numpy")
    built = module._compiled_forward(np.float64, 1, 1, 1, True).library
    other = novolstm.load_generated("gru", "numpy")._compiled_forward(np.float64, 1, 1, 1, True).library
    monkeypatch.setenv("NOVOLSTM_CACHE_DIR", str(tmp_path))
    cache = numpy_ext.cache_dir()
    cache.mkdir(parents=True)
    target = cache / built.name
    shutil.copy2(built, target)
    toml = module.SPEC_TOML

    def load():
        monkeypatch.setattr(numpy_ext, "_LOADED", {})
        return numpy_ext.compiled_forward(toml)

    assert load().library == target and sorted(p.name for p in cache.iterdir() if p.suffix == ".so") == [built.name]
    os.chmod(target, 0o777)
    with pytest.raises(numpy_ext.CompiledUnavailable, match="writable by others"):
        load()
    target.unlink()
    target.symlink_to(built)
    with pytest.raises(numpy_ext.CompiledUnavailable, match="not a regular file"):
        load()
    # Another folder: the process keeps the first library of a path loaded (dlopen reuses it by name).
    monkeypatch.setenv("NOVOLSTM_CACHE_DIR", str(tmp_path / "other"))
    numpy_ext.cache_dir().mkdir(parents=True)
    shutil.copy2(other, numpy_ext.cache_dir() / built.name)
    with pytest.raises(numpy_ext.CompiledUnavailable, match="not built for this kernel"):
        load()
