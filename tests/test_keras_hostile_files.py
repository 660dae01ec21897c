"""The malformed-file corpus (tests/hostile_files.py): Keras weight files, .keras archives and
Keras 2 .h5 files (built with h5py), each refused with the right error in bounded time and memory."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

_spec = importlib.util.spec_from_file_location(
    "_hostile_loader", pathlib.Path(__file__).with_name("test_hostile_files.py")
)
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)
corpus = _loader.load_corpus()

CASES = [c for c in corpus.cases_for({"h5py"}) if c.needs]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_keras_file_is_refused(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus.assert_refused(case, str(tmp_path))
