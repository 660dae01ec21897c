"""Canonical checkpoints: exact round trips, interoperability with safetensors, and clear
errors for every way a file can be wrong."""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
import pytest
import safetensors.numpy

import novolstm
from novolstm import CheckpointError
from novolstm.testing import random_params

RNG = np.random.default_rng(11)


def params_for(cell="novolstm", dtype="float32"):
    return {k: v.astype(dtype) for k, v in random_params(novolstm.load_spec(cell), 3, 4, RNG).items()}


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_round_trip_is_exact(tmp_path, dtype):
    params = params_for(dtype=dtype)
    novolstm.save(params, tmp_path / "c.safetensors", spec="novolstm")
    loaded, meta = novolstm.load(tmp_path / "c.safetensors")
    assert sorted(loaded) == sorted(params)
    for k in params:
        assert loaded[k].dtype == params[k].dtype
        np.testing.assert_array_equal(loaded[k], params[k])
    assert meta["spec"] == "novolstm" and meta["spec_hash"] == novolstm.load_spec("novolstm").hash
    assert meta["dtype"] == dtype and meta["layers"] == "1"


def test_stacked_bidirectional_layers(tmp_path):
    params = {key: params_for("gru") for key in ["l0", "l0_reverse", "l1", "l1_reverse"]}
    novolstm.save(params, tmp_path / "s.safetensors", spec="gru", layers=2, bidirectional=True)
    loaded, meta = novolstm.load(tmp_path / "s.safetensors")
    assert sorted(loaded) == sorted(params) and meta["bidirectional"] == "true"
    np.testing.assert_array_equal(loaded["l1_reverse"]["b_hn"], params["l1_reverse"]["b_hn"])


def test_the_safetensors_library_reads_ours_and_we_read_its(tmp_path):
    params = params_for()
    novolstm.save(params, tmp_path / "ours.safetensors", spec="novolstm")
    theirs = safetensors.numpy.load_file(str(tmp_path / "ours.safetensors"))
    assert all(np.array_equal(theirs[k], params[k]) for k in params)
    meta = {
        "format": "novolstm-canonical",
        "layout_version": "1",
        "spec": "novolstm",
        "dtype": "float32",
        "spec_hash": novolstm.load_spec("novolstm").hash,
        "layers": "1",
        "bidirectional": "false",
    }
    safetensors.numpy.save_file(params, str(tmp_path / "theirs.safetensors"), metadata=meta)
    loaded, _ = novolstm.load(tmp_path / "theirs.safetensors")
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_loaded_weights_run_identically(tmp_path):
    params = params_for(dtype="float64")
    novolstm.save(params, tmp_path / "c.safetensors", spec="novolstm")
    loaded, _ = novolstm.load(tmp_path / "c.safetensors", spec="novolstm")
    x = RNG.normal(size=(2, 5, 3))
    np.testing.assert_array_equal(novolstm.run("novolstm", params, x)[0], novolstm.run("novolstm", loaded, x)[0])


def rewrite_header(path: pathlib.Path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def broken(tmp_path, how):
    path = tmp_path / "c.safetensors"
    novolstm.save(params_for(), path, spec="novolstm")
    how(path)
    return path


CORRUPTIONS = {
    "truncated data": (
        lambda p: p.write_bytes(p.read_bytes()[:-10]),
        "lie outside the .* data bytes \\(truncated\\?\\)",
    ),
    "truncated header": (lambda p: p.write_bytes(p.read_bytes()[:20]), "corrupt or truncated: header claims"),
    "empty file": (lambda p: p.write_bytes(b""), "truncated: 0 bytes"),
    "garbage header": (lambda p: p.write_bytes(struct.pack("<Q", 5) + b"{oops" + b"\0" * 8), "header: corrupt JSON"),
    "wrong spec hash": (
        lambda p: rewrite_header(p, lambda h: h["__metadata__"].update(spec_hash="0" * 64)),
        "the cells differ",
    ),
    "missing tensor": (lambda p: rewrite_header(p, lambda h: h.pop("U_s")), "missing tensors \\['U_s'\\]"),
    "extra tensor": (
        lambda p: rewrite_header(p, lambda h: h.update(W_z=dict(h["W_i"]))),
        "unexpected tensors \\['W_z'\\]",
    ),
    "wrong shape": (
        lambda p: rewrite_header(p, lambda h: h["U_i"].update(shape=[2, 8])),
        "tensor 'U_i' has shape \\(2, 8\\), expected \\(4, 4\\)",
    ),
    "shape and bytes disagree": (
        lambda p: rewrite_header(p, lambda h: h["U_i"].update(shape=[4, 5])),
        "do not hold shape \\(4, 5\\)",
    ),
    "dtype differs from metadata": (
        lambda p: rewrite_header(p, lambda h: h["__metadata__"].update(dtype="float64")),
        "metadata says dtype float64",
    ),
    "not a novolstm file": (lambda p: rewrite_header(p, lambda h: h.pop("__metadata__")), "not a novolstm checkpoint"),
    "unknown dtype code": (
        lambda p: rewrite_header(p, lambda h: h["b_i"].update(dtype="Q8")),
        "tensor 'b_i': malformed entry",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_files_name_what_is_wrong(tmp_path, case):
    how, message = CORRUPTIONS[case]
    with pytest.raises(CheckpointError, match=message):
        novolstm.load(broken(tmp_path, how))


def test_loading_for_another_spec_refuses(tmp_path):
    novolstm.save(params_for("lstm"), tmp_path / "c.safetensors", spec="lstm")
    with pytest.raises(CheckpointError, match="written for spec 'lstm'.*the spec here \\('novolstm'\\)"):
        novolstm.load(tmp_path / "c.safetensors", spec="novolstm")


def test_saving_refuses_what_it_cannot_store_exactly(tmp_path):
    params = params_for()
    with pytest.raises(CheckpointError, match="mix dtypes"):
        novolstm.save({**params, "b_i": params["b_i"].astype(np.float64)}, tmp_path / "x", spec="novolstm")
    with pytest.raises(CheckpointError, match="missing \\['U_s'\\]"):
        novolstm.save({k: v for k, v in params.items() if k != "U_s"}, tmp_path / "x", spec="novolstm")
    with pytest.raises(CheckpointError, match="tensor 'W_s' has shape"):
        novolstm.save({**params, "W_s": np.zeros((3, 5), np.float32)}, tmp_path / "x", spec="novolstm")


def test_no_pickle_anywhere_in_the_package():
    root = pathlib.Path(novolstm.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path


def test_save_module_and_load_into_a_numpy_cell(tmp_path):
    Cell = novolstm.get_cell("numpy", "novolstm")
    cell = Cell(input_size=3, units=4, seed=1)
    path = tmp_path / "cell.safetensors"
    novolstm.save_module(cell, path)
    assert novolstm.load(path)[1]["spec"] == "novolstm"
    other = novolstm.load_into(Cell(input_size=3, units=4, seed=2), path)
    x = RNG.normal(size=(2, 5, 3))
    np.testing.assert_array_equal(other.sequence(x)[0], cell.sequence(x)[0])
    with pytest.raises(CheckpointError, match="hash"):
        novolstm.load_into(novolstm.get_cell("numpy", "lstm")(input_size=3, units=4), path)
    with pytest.raises(ValueError, match="expected shape"):
        novolstm.load_into(Cell(input_size=3, units=5), path)
    with pytest.raises(TypeError, match="a cell or layer novolstm generated"):
        novolstm.save_module(object(), tmp_path / "nothing.safetensors")


def test_save_module_of_a_user_spec_loaded_from_a_path(tmp_path):
    spec = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples" / "cifg.toml"
    Cell = novolstm.get_cell("numpy", str(spec))
    cell = Cell(input_size=2, units=3, seed=4)
    novolstm.save_module(cell, tmp_path / "cifg.safetensors")
    other = novolstm.load_into(Cell(input_size=2, units=3, seed=5), tmp_path / "cifg.safetensors")
    assert all((other.params[k] == v).all() for k, v in cell.params.items())
