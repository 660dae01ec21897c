"""The malformed-file corpus (tests/hostile_files.py), the cases NumPy alone can build: canonical
checkpoints and torch safetensors state dicts. Each is refused with the right error, within a
bounded time and resident-set growth; every malformed safetensors file the safetensors library
refuses too is one novolstm's own reader refuses (the library is the second opinion)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest


def load_corpus():
    """tests/hostile_files.py, loaded once by path (the tests folder is no package)."""
    if "hostile_files" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hostile_files", pathlib.Path(__file__).with_name("hostile_files.py"))
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
    for what in ("checkpoint", "torch safetensors", "torch.save", "ONNX", "Keras .weights.h5", "Keras .keras", "Keras 2", "Flax"):
        assert what in names, what
    assert len(corpus.ALL_CASES) == len({c.name for c in corpus.ALL_CASES})
