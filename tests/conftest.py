"""Shared fixtures: which backends are under test, and the Hypothesis profiles.

NOVOLSTM_BACKENDS (comma-separated, default "numpy") names the backends this run
must test. A named backend whose framework cannot be imported fails every test that
uses it; it is never skipped.

NOVOLSTM_FRAMEWORK_TESTS_ONLY=1 (tox's per-framework envs) deselects, by name in the
report, the tests that use no framework: those the numpy env runs (it runs every test
that needs NumPy alone), so each of them runs once per tox run instead of once per env.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import novolstm
from novolstm.testing import computes_in as _computes_in
from novolstm.testing import precision_limit

settings.register_profile("dev", max_examples=25, deadline=None)
# JIT compilation makes first calls slow, so no deadline; bounded examples keep CI short.
settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def requested_backends() -> list[str]:
    names = [b.strip() for b in os.environ.get("NOVOLSTM_BACKENDS", "numpy").split(",") if b.strip()]
    unknown = sorted(set(names) - set(novolstm.list_backends()))
    if unknown:
        raise pytest.UsageError(
            f"NOVOLSTM_BACKENDS names unknown backends {unknown}; known: {novolstm.list_backends()}"
        )
    return names


def pytest_report_header(config):
    lines = [f"novolstm backends under test: {', '.join(requested_backends())} (set NOVOLSTM_BACKENDS to change)"]
    if FRAMEWORK_TESTS_ONLY:
        lines.append(
            "NOVOLSTM_FRAMEWORK_TESTS_ONLY: tests that use no framework are deselected (the numpy env runs them)"
        )
    for backend in requested_backends():
        if precision_limit(backend):
            dtype, why = precision_limit(backend)
            lines.append(f"known precision limit: {backend} float64 is held to the {dtype} tolerance: {why}")
    return lines


def pytest_ignore_collect(collection_path, config):
    # tests/test_<backend>_*.py import their framework at module level: they are
    # collected exactly when that backend is requested (and then fail if it cannot load).
    name = collection_path.name
    # tests/test_all_*.py cross frameworks (pairwise comparisons, ports between every pair):
    # collected exactly when every backend is requested, as in tox's "all" env.
    if name.startswith("test_all_") and set(requested_backends()) != set(novolstm.list_backends()):
        return True
    for backend in novolstm.list_backends():
        if name.startswith(f"test_{backend}_") and backend not in requested_backends():
            return True
    # tests/test_device_*.py run the cells on an accelerator (benchmarks/gpu.py): collected
    # exactly when NOVOLSTM_DEVICE names one, so a CPU-only run never collects them.
    if name.startswith("test_device_") and not os.environ.get("NOVOLSTM_DEVICE"):
        return True
    return None


#: Set in tox's per-framework envs (see the module docstring).
FRAMEWORK_TESTS_ONLY = os.environ.get("NOVOLSTM_FRAMEWORK_TESTS_ONLY") == "1"
#: Test modules that take no ``backend`` parameter and still look at what the installed
#: frameworks do: they run in every env.
FRAMEWORK_SENSITIVE_MODULES = frozenset({"test_import_isolation.py", "test_lazy_imports.py", "test_cli.py"})


def uses_a_framework(item) -> bool:
    """Whether a collected test needs a framework: its module is a backend's (test_torch_*.py, ...,
    test_all_*.py, test_device_*.py), it looks at the installed frameworks, or it runs with a
    ``backend`` parameter other than numpy."""
    name = item.path.name
    prefixes = [f"test_{b}_" for b in novolstm.list_backends() if b != "numpy"] + ["test_all_", "test_device_"]
    if name.startswith(tuple(prefixes)) or name in FRAMEWORK_SENSITIVE_MODULES:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("backend", "numpy") != "numpy"


def pytest_collection_modifyitems(config, items):
    if not FRAMEWORK_TESTS_ONLY:
        return
    kept = [item for item in items if uses_a_framework(item)]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if not uses_a_framework(item)])
        items[:] = kept


#: The porting mistakes the hand-written NovoLSTMs of tests/test_*handwritten* can make (each
#: written in its framework's own API, outside novolstm), and the diagnosis the conformance
#: kit must give each: {lower} is the precision below the one asked for.
HANDWRITTEN_MISTAKES = {
    "gate order": "gates 'f' and 'i' swapped",
    "torch epsilon": "LayerNorm epsilon 1e-05 (torch's default)",
    "flax epsilon": "LayerNorm epsilon 1e-06 (Flax's default)",
    "sample variance": "LayerNorm with the sample variance",
    "softmax over the batch": "softmax over the batch axis",
    "softmax without max": "softmax without the maximum subtracted",
    "keras 2 hard sigmoid": "Keras 2 hard_sigmoid",
    "keras 3 hard sigmoid": "Keras 3 hard_sigmoid",
    "recurrent term missing": "recurrent term U_f missing",
    "bias dropped": "bias b_o dropped",
    "roles swapped in the state update": "'f' and 'i' swap roles in the update of state 'c'",
    "output reads the old state": "'h_next' reads the old state 'c' instead of 'c_next'",
    "masked steps update the state": "masked steps update the state",
    "masked steps output h": "masked steps output the carried state 'h'",
    "mask read as lengths": "mask read as lengths",
    "lower precision": "computes in {lower} (or lower)",
    "state order": "final state returned in the order ('c', 'h')",
    "the other NovoLSTM": "computes the 'novolstm_reference' cell instead",
}


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", requested_backends(), scope="session")
    if "handwritten_mistake" in metafunc.fixturenames:
        metafunc.parametrize("handwritten_mistake", sorted(HANDWRITTEN_MISTAKES))


@pytest.fixture
def expected_diagnosis(handwritten_mistake):
    """``expected_diagnosis(dtype)``: what the kit must diagnose for ``handwritten_mistake`` in ``dtype``."""
    lower = {"float64": "float32", "float32": "float16"}
    return lambda dtype: HANDWRITTEN_MISTAKES[handwritten_mistake].format(lower=lower[dtype])


@pytest.fixture(scope="session")
def backend(request):
    """A requested backend whose framework is importable; failing to import fails the test."""
    from novolstm.backends import emitter

    name = request.param
    try:
        importlib.import_module(emitter(name).FRAMEWORK)
    except ImportError as exc:  # requested but missing: a failure, not a skip
        pytest.fail(f"backend {name!r} was requested (NOVOLSTM_BACKENDS) but cannot load: {exc}")
    return name


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.fixture(scope="session")
def computes_in(backend):
    """``computes_in(dtype)``: the dtype whose tolerance applies to ``backend`` asked for ``dtype``."""
    return lambda dtype: _computes_in(backend, dtype)


PATHS_HEADER = (
    "| backend | shape | dtype | cell | path | forward ms | x loop | x native "
    "| forward+backward ms | x loop | x native | compile s (fwd / fwd+bwd) |"
)


def paths_rows(printed: str) -> list[list[str]]:
    """The printed paths table's rows, as lists of cells (the header checked)."""
    lines = printed.splitlines()
    start = lines.index(PATHS_HEADER) + 2
    end = next(k for k in range(start, len(lines)) if not lines[k].startswith("|"))
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start:end]]
    assert all(len(r) == 12 for r in rows), rows
    return rows


def _check_paths_table(printed: str, data: dict) -> dict[tuple[str, str, str], list[str]]:
    """The paths table holds one row per measured candidate, each time as results.json has it,
    and each x loop as that time over its cell's generated loop's.

    Returns:
        (dtype, cell, path) -> the row's cells.
    """
    rows = {(r[2], r[3], r[4]): r for r in paths_rows(printed)}
    measured = [r for r in data["rows"] if not r.get("skipped")]
    assert len(rows) == len(measured), (sorted(rows), len(measured))
    for r in measured:
        native = r["candidate"].startswith(("native", "context"))
        row = rows[(r["dtype"], r["candidate"] if native else r["cell"], r["path"])]
        assert row[5] == f"{1e3 * r['forward_s']:.2f}"
        same = [q for q in measured if q["dtype"] == r["dtype"] and q["cell"] == r["cell"]]
        loop = next((q for q in same if q["path"] == "generated loop"), None)
        if loop and not native:
            assert row[6] == f"{r['forward_s'] / loop['forward_s']:.2f}"
    return rows


@pytest.fixture
def check_paths_table():
    """``check_paths_table(printed, results)``: the paths table ``novolstm bench`` printed, checked
    against its results.json; returns (dtype, cell, path) -> the row's cells."""
    return _check_paths_table
