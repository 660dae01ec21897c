"""Docstrings read well in the API reference: Google style, no Sphinx roles, and every >>> example
under an Examples: section (where mkdocstrings renders it as code and tests/test_doctests.py runs it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import novolstm

SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|attr|mod|exc|obj|ref|doc):`")
SECTION = re.compile(r"^([A-Z][\w ()]*):$")
PACKAGE = Path(novolstm.__file__).parent
# novolstm.backends (the emitters, installed from backends/) is not in the API reference; the
# docstrings its templates give generated code are shown on the per-backend API pages.
FILES = sorted(p for p in PACKAGE.rglob("*.py") if "backends" not in p.relative_to(PACKAGE).parts)


def _docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield getattr(node, "name", "module"), doc


def _misplaced_examples(doc: str) -> list[str]:
    """Lines with >>> that are not inside an Examples: section."""
    section, bad = None, []
    for line in doc.splitlines():
        match = SECTION.match(line)
        if match:
            section = match.group(1)
        elif line and not line[0].isspace():
            section = None  # unindented text ends a section
        if line.strip().startswith(">>>") and section != "Examples":
            bad.append(line.strip())
    return bad


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(PACKAGE.parent).as_posix())
def test_docstrings_are_google_style_with_examples_sections(path):
    problems = []
    for name, doc in _docstrings(path):
        if SPHINX_ROLE.search(doc):
            problems.append(f"{name}: Sphinx role {SPHINX_ROLE.search(doc).group(0)}")
        if re.search(r"^\s*Example( \(.*\))?:$", doc, re.M):
            problems.append(f"{name}: 'Example:' (the section is 'Examples:')")
        problems += [f"{name}: >>> outside an Examples: section: {line}" for line in _misplaced_examples(doc)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_looks_for():
    assert _misplaced_examples("Summary.\n\n>>> 1 + 1\n2") == [">>> 1 + 1"]
    assert _misplaced_examples("Summary.\n\nArgs:\n    x: a value.\n\n    >>> 1") == [">>> 1"]
    assert _misplaced_examples("Summary.\n\nExamples:\n    >>> 1 + 1\n    2") == []
    assert SPHINX_ROLE.search("see :class:`Spec`") and not SPHINX_ROLE.search("see ``Spec``")
