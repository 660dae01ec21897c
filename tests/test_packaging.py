"""The package as a user gets it: build the wheel, install it into a fresh
virtual environment, and use it from outside the repository.

Works offline: the wheel is built with the setuptools already installed here
when it is recent enough (otherwise pip's isolated build fetches one), and the
fresh environments see this environment's NumPy (and any other runtime
requirement) through a folder of symlinks to exactly those distributions, so
pip installs them from nowhere. The package itself comes only from the wheel
(or, for the editable variant, from the copied source tree).

The build runs on a copy of the source in a temporary folder, so neither
setuptools' build/ and *.egg-info nor the editable install touch the checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]

# Source folder -> the package it installs as (see [tool.setuptools] in pyproject.toml).
PACKAGE_ROOTS = {"novolstm": "novolstm", "spec": "novolstm/spec", "backends": "novolstm/backends"}

_SKIP_DIRS = {
    ".git",
    ".tox",
    ".nox",
    ".venv",
    "venv",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
}

SMOKE = r"""
import sys
from pathlib import Path

import numpy as np

import novolstm
import novolstm.reference

where = Path(novolstm.__file__).resolve()
expected = Path(sys.argv[1]).resolve()
assert expected in where.parents, f"novolstm imported from {where}, expected under {expected}"

names = novolstm.list_specs()
assert "novolstm" in names and "lstm" in names, names
spec = novolstm.load_spec("novolstm")
params = novolstm.init_params(spec, 3, 4, seed=0)
x = np.random.default_rng(0).standard_normal((2, 5, 3))
out, state = novolstm.run(spec, params, x, backend="numpy")
ref_out, ref_state = novolstm.reference.run("novolstm", params, x)


def leaves(obj):
    if isinstance(obj, dict):
        return [leaf for key in sorted(obj) for leaf in leaves(obj[key])]
    if isinstance(obj, (list, tuple)):
        return [leaf for item in obj for leaf in leaves(item)]
    return [np.asarray(obj, dtype=np.float64)]


diff = float(np.max(np.abs(np.asarray(out, dtype=np.float64) - np.asarray(ref_out, dtype=np.float64))))
assert diff < 1e-12, f"output differs from the float64 reference by {diff}"
got, want = leaves(state), leaves(ref_state)
assert len(got) == len(want), (len(got), len(want))
for a, b in zip(got, want):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert float(np.max(np.abs(a - b), initial=0.0)) < 1e-12
print("SMOKE OK", diff)
"""


# ---------------------------------------------------------------- helpers


def _clean_env() -> dict[str, str]:
    """The environment for child processes: nothing that points Python at the checkout."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        env.pop(var, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _installed_version(name: str) -> tuple[int, ...] | None:
    try:
        return _version_tuple(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def _can_build_here() -> bool:
    """Can this environment build the wheel without pip's isolated build env?"""
    setuptools = _installed_version("setuptools")
    if setuptools is None or setuptools < (64,):
        return False
    # bdist_wheel moved into setuptools in 70.1; before that it needs `wheel`.
    return setuptools >= (70, 1) or _installed_version("wheel") is not None


def _source_files() -> list[Path]:
    """Files a clean checkout would have (tracked + untracked-but-not-ignored)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = None
    if out:
        files = [Path(p) for p in out.decode().split("\0") if p]
    else:  # not a git checkout: take everything but the usual junk
        files = [
            p.relative_to(REPO)
            for p in REPO.rglob("*")
            if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(REPO).parts))
        ]
    return [
        f
        for f in files
        if (REPO / f).is_file()
        and not (_SKIP_DIRS & set(f.parts))
        and not any(part.endswith(".egg-info") for part in f.parts)
        and f.suffix not in (".pyc", ".pyo")
    ]


def _copy_source(dest: Path) -> Path:
    for rel in _source_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def _pip_has_python_option() -> bool:
    pip = _installed_version("pip")
    return pip is not None and pip >= (22, 3)


def _make_venv(where: Path) -> Path:
    """A fresh venv (no system site-packages); returns its python."""
    with_pip = not _pip_has_python_option()
    cmd = [sys.executable, "-m", "venv", str(where)]
    if not with_pip:
        cmd.insert(3, "--without-pip")
    _run(cmd, cwd=where.parent)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert python.exists(), python
    return python


def _pip(python: Path) -> list[str]:
    if _pip_has_python_option():
        return [sys.executable, "-m", "pip", "--python", str(python)]
    return [str(python), "-m", "pip"]


def _requirement_names(requirements: list[str] | None) -> list[str]:
    names = []
    for req in requirements or ():
        marker = req.partition(";")[2]
        if re.search(r"\bextra\b", marker):
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if match:
            names.append(match.group(1))
    return names


def _share_distributions(python: Path, names: list[str], shim: Path) -> None:
    """Make this environment's installed distributions `names` (and what they
    need) importable in the venv of `python`, and nothing else: a folder of
    symlinks to exactly their files, added to the venv by a .pth file."""
    shim.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not needed here (e.g. tomli on 3.11+) or pip will say so
        todo.extend(_requirement_names(dist.requires))
        tops = {PurePosixPath(str(f)).parts[0] for f in dist.files or ()}
        for top in sorted(tops - {".."}):
            src = Path(dist.locate_file(top))
            link = shim / top
            if src.exists() and not link.exists():
                link.symlink_to(src, target_is_directory=src.is_dir())
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=shim.parent
    ).stdout.strip()
    Path(purelib, "_novolstm_test_shared.pth").write_text(f"{shim}\n")


def _wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return _requirement_names(
        [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    )


def _install(python: Path, args: list[str], cwd: Path) -> None:
    """pip install, offline first; if that cannot resolve, let pip use its index."""
    base = _pip(python) + ["install", "--quiet"]
    offline = subprocess.run(
        base + ["--no-index", *args], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    if offline.returncode != 0:
        _run(base + args, cwd=cwd)


def _smoke(python: Path, expected_root: Path, cwd: Path) -> None:
    script = cwd / "smoke.py"
    script.write_text(SMOKE)
    proc = _run([python, "-I", script, expected_root], cwd=cwd)
    assert "SMOKE OK" in proc.stdout, proc.stdout


def _console_script(python: Path) -> Path:
    return python.parent / ("novolstm.exe" if os.name == "nt" else "novolstm")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_source(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def wheel(source_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source_copy]
    if _can_build_here():
        cmd.insert(4, "--no-build-isolation")
    _run(cmd, cwd=dist)
    wheels = list(dist.glob("novolstm-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A working directory that is not inside the repository."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    assert REPO not in where.resolve().parents
    return where


# ---------------------------------------------------------------- tests


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())

    assert "novolstm/__init__.py" in names
    assert "novolstm/spec/novolstm.toml" in names
    assert "novolstm/backends/__init__.py" in names
    assert not any(n.startswith(("tests/", "spec/", "backends/")) for n in names), sorted(names)

    # Every package in the source tree is in the wheel (packages are listed by
    # hand in pyproject.toml), and so is every spec data file.
    missing = []
    for src_dir, pkg_dir in PACKAGE_ROOTS.items():
        root = REPO / src_dir
        for init in root.rglob("__init__.py"):
            rel = init.relative_to(root).as_posix()
            if "__pycache__" in rel:
                continue
            if f"{pkg_dir}/{rel}" not in names:
                missing.append(f"{src_dir}/{rel}")
    for pattern in ("*.toml", "*.json", "*.npz"):
        for data in (REPO / "spec").rglob(pattern):
            rel = data.relative_to(REPO / "spec").as_posix()
            if f"novolstm/spec/{rel}" not in names:
                missing.append(f"spec/{rel}")
    assert not missing, f"in the source tree but not in the wheel (pyproject.toml packages / package-data?): {missing}"

    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert re.search(r"^novolstm\s*=\s*novolstm\.cli:main\s*$", text, re.M), text


def test_wheel_in_fresh_venv(wheel: Path, tmp_path: Path, outside: Path) -> None:
    venv = tmp_path / "venv"
    python = _make_venv(venv)
    _share_distributions(python, _wheel_requirements(wheel), tmp_path / "shared")
    _install(python, [str(wheel)], cwd=outside)

    _smoke(python, venv, cwd=outside)

    proc = _run([_console_script(python), "list"], cwd=outside)
    assert "novolstm" in proc.stdout, proc.stdout


def test_editable_install(source_copy: Path, wheel: Path, tmp_path: Path, outside: Path) -> None:
    venv = tmp_path / "venv"
    python = _make_venv(venv)
    needs = _wheel_requirements(wheel)
    args = ["-e", str(source_copy)]
    if _can_build_here():
        needs += ["setuptools", "wheel"]
        args.insert(0, "--no-build-isolation")
    _share_distributions(python, needs, tmp_path / "shared")
    _install(python, args, cwd=outside)

    _smoke(python, source_copy, cwd=outside)

    proc = _run([_console_script(python), "list"], cwd=outside)
    assert "novolstm" in proc.stdout, proc.stdout
