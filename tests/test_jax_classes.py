"""novolstm.jax's and novolstm.flax's named classes: one per built-in spec, the classes get_cell
and the generated modules hold, cells that behave as Flax's LSTMCell under nnx.RNN / nn.RNN
(values against the float64 reference), and msgpack and Orbax checkpoints restored in a fresh process
that imports only jax, flax and the named classes."""

from __future__ import annotations

import copy
import doctest
import json
import os
import pickle
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

import novolstm
import novolstm.flax as nf
import novolstm.flax.linen as nl
import novolstm.jax as nj
from novolstm import reference
from novolstm.testing import assert_close, random_params, tolerance

SPECS = novolstm.list_specs()
I, H = 3, 4


@pytest.mark.parametrize("name", SPECS)
def test_every_builtin_spec_has_named_jax_nnx_and_linen_cells(name):
    cell_name = novolstm.load_spec(name).class_name + "Cell"
    generated = novolstm.load_generated(name, "jax")
    assert getattr(nj, cell_name) is novolstm.get_cell("jax", name) is generated.Cell
    assert getattr(nf, cell_name) is generated.NNXCell and getattr(nl, cell_name) is generated.LinenCell
    for module, cls in ((nj, generated.Cell), (nf, generated.NNXCell), (nl, generated.LinenCell)):
        assert (cls.__module__, cls.__qualname__) == (module.__name__, cell_name)
    assert issubclass(generated.NNXCell, nnx.Module) and issubclass(generated.LinenCell, nn.RNNCellBase)


def test_repr_and_pickle_of_the_pure_cell():
    cell = nj.GRUCell(5, dtype=jnp.float32)
    assert repr(cell) == "GRUCell(units=5, dtype=float32)"
    assert pickle.loads(pickle.dumps(cell)) == cell == copy.deepcopy(cell)


@pytest.mark.parametrize("name", ["lstm", "novolstm"])
def test_nnx_and_linen_cells_under_flax_rnn_compute_their_spec(name, rng):
    class_name = novolstm.load_spec(name).class_name + "Cell"
    params = random_params(name, I, H, rng)
    x = rng.normal(size=(2, 5, I))
    expected, final = reference.run(name, params, x)
    tol = tolerance("float64", 5)
    with jax.enable_x64(True):
        cell = getattr(nf, class_name)(I, H, params=params, param_dtype=jnp.float64)
        assert cell.num_feature_axes == 1
        carry = cell.initialize_carry((2, I))  # the state tuple in the spec's order: (h, c)
        assert len(carry) == len(final) and all(s.shape == (2, H) for s in carry)
        out = nnx.RNN(cell)(jnp.asarray(x))
        assert_close(np.asarray(out), expected, tol, "nnx.RNN outputs")
        final_carry, out = nnx.RNN(cell, return_carry=True)(jnp.asarray(x))
        for got, want in zip(final_carry, final):
            assert_close(np.asarray(got), want, tol, "nnx.RNN final carry")

        linen = nn.RNN(getattr(nl, class_name)(H, param_dtype=jnp.float64))
        assert set(linen.init(jax.random.key(0), jnp.asarray(x))["params"]["cell"]) == set(params)  # canonical names
        variables = {"params": {"cell": {k: jnp.asarray(v) for k, v in params.items()}}}
        assert_close(np.asarray(linen.apply(variables, jnp.asarray(x))), expected, tol, "nn.RNN outputs")


LOADER = """
import json, sys
import numpy as np
import jax, jax.numpy as jnp
from flax import nnx, serialization
import novolstm.flax, novolstm.flax.linen  # the named classes: no novolstm call before the restore
import flax.linen as nn

x = jnp.asarray(np.load("x.npy"))
out = {}
cell = novolstm.flax.NovoLSTMCell(3, 4, rngs=nnx.Rngs(7))  # other weights, then the checkpoint's
state = nnx.state(cell)
with open("nnx.msgpack", "rb") as fh:
    nnx.replace_by_pure_dict(state, serialization.msgpack_restore(fh.read()))
nnx.update(cell, state)
out["nnx"] = np.asarray(nnx.RNN(cell)(x)).tolist()
import orbax.checkpoint as ocp
cell = novolstm.flax.NovoLSTMCell(3, 4, rngs=nnx.Rngs(8))
nnx.update(cell, ocp.StandardCheckpointer().restore(sys.argv[1], nnx.state(cell)))
out["orbax"] = np.asarray(nnx.RNN(cell)(x)).tolist()
linen = nn.RNN(novolstm.flax.linen.GRUCell(4))
template = linen.init(jax.random.key(7), x)
with open("linen.msgpack", "rb") as fh:
    variables = serialization.from_bytes(template, fh.read())
out["linen"] = np.asarray(linen.apply(variables, x)).tolist()
print(json.dumps(out))
"""


def test_msgpack_and_orbax_checkpoints_restore_in_a_fresh_process(tmp_path, rng):
    x = rng.normal(size=(2, 5, I)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    cell = nf.NovoLSTMCell(I, H, params=random_params("novolstm", I, H, rng))
    (tmp_path / "nnx.msgpack").write_bytes(serialization.to_bytes(nnx.to_pure_dict(nnx.state(cell))))
    linen = nn.RNN(nl.GRUCell(H))
    variables = {
        "params": {"cell": {k: jnp.asarray(v, jnp.float32) for k, v in random_params("gru", I, H, rng).items()}}
    }
    (tmp_path / "linen.msgpack").write_bytes(serialization.to_bytes(variables))
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "orbax", nnx.state(cell))
    checkpointer.wait_until_finished()
    expected = {
        "nnx": np.asarray(nnx.RNN(cell)(jnp.asarray(x))),
        "orbax": np.asarray(nnx.RNN(cell)(jnp.asarray(x))),
        "linen": np.asarray(linen.apply(variables, x)),
    }

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "JAX_ENABLE_X64")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOADER), str(tmp_path / "orbax")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, want in expected.items():
        np.testing.assert_array_equal(np.asarray(loaded[key], np.float32), want, err_msg=key)


@pytest.mark.parametrize("module", [nj, nf, nl], ids=lambda m: m.__name__)
def test_module_docstring_examples(module):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0
