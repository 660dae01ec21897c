"""The malformed-file corpus (tests/hostile_files.py), the cases NumPy alone can build: canonical
checkpoints and torch safetensors state dicts. Each is refused with the right error, within a
bounded time and resident-set growth; every malformed safetensors file the safetensors library
refuses too is one novolstm's own reader refuses (the library is the second opinion)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

import novolstm


def load_corpus():
    """tests/hostile_files.py, loaded once by path (the tests folder is no package)."""
    if "hostile_files" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "hostile_files", pathlib.Path(__file__).with_name("hostile_files.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["hostile_files"] = module
        spec.loader.exec_module(module)
    return sys.modules["hostile_files"]


corpus = load_corpus()

CASES = corpus.cases_for(set())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file_is_refused(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus.assert_refused(case, str(tmp_path))


LIBRARY = [c for c in CASES if c.library_refuses]


@pytest.mark.parametrize("case", LIBRARY, ids=[c.name for c in LIBRARY])
def test_the_safetensors_library_refuses_it_too(case, tmp_path):
    """Our reader is not laxer than the library on the files both must refuse."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = case.build(str(tmp_path))
    with pytest.raises((SafetensorError, OSError, ValueError)):
        load_file(path)


def test_the_corpus_covers_every_reader():
    names = " ".join(c.name for c in corpus.ALL_CASES)
    for what in (
        "checkpoint",
        "torch safetensors",
        "torch.save",
        "ONNX",
        "Keras .weights.h5",
        "Keras .keras",
        "Keras 2",
        "Flax",
    ):
        assert what in names, what
    assert len(corpus.ALL_CASES) == len({c.name for c in corpus.ALL_CASES})


CLI = [c for c in CASES if c.read is corpus.load_checkpoint][:8]


@pytest.mark.parametrize("case", CLI, ids=[c.name for c in CLI])
def test_the_cli_refuses_in_one_line_with_exit_2(case, tmp_path, capsys):
    from novolstm.cli import main

    path = case.build(str(tmp_path))
    assert main(["convert", path, "-o", str(tmp_path / "out.safetensors"), "--from", "canonical", "--to", "torch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("novolstm convert: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("spec", ["novolstm", "novolstm_reference"])
def test_spec_to_the_onnx_operator_refuses_cells_it_cannot_express(spec, tmp_path, capsys):
    from novolstm.cli import main

    novolstm.save(novolstm.init_params(spec, 2, 3, seed=0), tmp_path / "c.safetensors", spec=spec)
    args = [
        "convert",
        str(tmp_path / "c.safetensors"),
        "-o",
        str(tmp_path / "m.onnx"),
        "--from",
        "canonical",
        "--to",
        "onnx",
        "--spec",
        spec,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"not {spec!r}" in err and "novolstm.export_onnx" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()
