"""The command line as a user meets it: help, --version, --json, one table, exit codes 0/1/2,
and a one-line error (never a traceback) for every kind of bad input."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import novolstm
from novolstm.cli import build_parser, main

COMMANDS = ["list", "show", "generate", "check", "conformance", "compare", "bench", "convert", "verify-port"]

CORRECT = """
import novolstm


def run(params, x, state, mask):
    return novolstm.reference.run("lstm", params, x, state, mask=mask)
"""

# The output gate forgotten: every case fails, and the kit says so with exit code 1.
WRONG = """
import numpy as np
import novolstm


def run(params, x, state, mask):
    outputs, final = novolstm.reference.run("lstm", params, x, state, mask=mask)
    return np.tanh(outputs), final
"""


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"novolstm {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"novolstm {novolstm.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_examples_and_exit_codes(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:\n  novolstm " + command.split()[0] in text
    assert "exit codes:" in text and "2  a user error" in text
    assert "``" not in text and ":class:" not in text and ":func:" not in text


def test_every_argument_has_help_and_closed_sets_have_choices():
    parser, commands = _subcommands()
    assert set(commands) == set(COMMANDS)
    main_help = parser.format_help()
    assert "exit codes:" in main_help and "``" not in main_help
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    # Every argument whose values are a closed set offers them as choices.
    closed = {
        ("generate", "backend"),
        ("check", "cell"),
        ("check", "backend"),
        ("conformance", "dtype"),
        ("compare", "tasks"),
        ("compare", "backend"),
        ("bench", "backends"),
        ("bench", "shapes"),
        ("bench", "dtype"),
        ("convert", "src_format"),
        ("convert", "dst_format"),
        ("convert", "spec"),
        ("convert", "layout"),
        ("convert", "from_layout"),
        ("verify-port", "source"),
        ("verify-port", "target"),
        ("verify-port", "spec"),
        ("verify-port", "format"),
        ("verify-port", "layout"),
    }
    for name, dest in closed:
        action = next(a for a in commands[name]._actions if a.dest == dest)
        assert action.choices, f"{name} {dest} has no choices"
    assert (
        list(next(a for a in commands["generate"]._actions if a.dest == "backend").choices) == novolstm.list_backends()
    )


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed] == novolstm.list_specs()
    assert all(c["description"] and c["state"] for c in listed)


def test_check_prints_its_table_once_and_progress_on_stderr(capsys):
    assert main(["check", "--cell", "lstm", "--cell", "gru", "--backend", "numpy", "--steps", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("max |dev|") == 1  # one header: the table, once
    assert captured.out.count("lstm ") == 2 and "4 of 4 within tolerance" in captured.out
    assert "max |dev|" not in captured.err and "novolstm check" in captured.err and "4/4" in captured.err
    assert "[" + "#" * 30 + "]" in captured.err


def test_check_json(capsys):
    assert main(["check", "--cell", "novolstm", "--backend", "numpy", "--steps", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["backends"] == ["numpy"]
    assert [(r["cell"], r["backend"], r["dtype"]) for r in report["rows"]] == [
        ("novolstm", "numpy", "float64"),
        ("novolstm", "numpy", "float32"),
    ]
    assert all(r["ok"] and 0 <= r["max_deviation"] <= r["tolerance"] for r in report["rows"])


@pytest.fixture
def implementations(tmp_path, monkeypatch):
    (tmp_path / "correct_port.py").write_text(CORRECT)
    (tmp_path / "wrong_port.py").write_text(WRONG)
    (tmp_path / "broken_port.py").write_text("def run(:\n")
    (tmp_path / "crashing_port.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.chdir(tmp_path)  # --callable finds modules in the working directory, as python -m does
    yield tmp_path
    for name in ("correct_port", "wrong_port", "broken_port", "crashing_port"):
        sys.modules.pop(name, None)


def test_conformance_exit_codes_and_json(implementations, capsys):
    assert main(["conformance", "lstm", "--callable", "correct_port:run"]) == 0
    assert "CONFORMS" in capsys.readouterr().out
    assert main(["conformance", "lstm", "--callable", "wrong_port:run", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["spec"] == "lstm" and report["results"]
    assert all(not case["passed"] and case["max_deviation"] > case["tolerance"] for case in report["results"])
    assert main(["conformance", "lstm", "--callable", "correct_port:run", "--json", "--dtype", "float32"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float32"


def test_verify_port_json(capsys):
    assert main(["verify-port", "numpy", "reference", "--steps", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and len(report["step_error"]) == 6
    assert report["source"] == "numpy" and report["target"] == "reference" and report["tolerance"]["atol"] > 0


def test_bench_json(tmp_path, capsys):
    assert main(["bench", "--smoke", "--backends", "numpy", "--json", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "results.json").read_text())
    assert printed["ratios"] and "import novolstm (s)" in printed["extras"]


def _bad_files(folder: Path) -> dict[str, Path]:
    """Files of the wrong kind for every reader: an archive, an array, a spec, text, bytes."""
    rng = np.random.default_rng(0)
    files = {
        "garbage": folder / "garbage.bin",
        "npz": folder / "arrays.npz",
        "npy": folder / "array.npy",
        "toml": folder / "cell.toml",
        "text": folder / "notes.txt",
        "empty": folder / "empty.safetensors",
    }
    files["garbage"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    np.savez(files["npz"], x=np.ones(3))
    np.save(files["npy"], np.ones(3))
    files["toml"].write_text(
        (Path(novolstm.__file__).parent / "spec" / "lstm.toml").read_text()
        if (Path(novolstm.__file__).parent / "spec" / "lstm.toml").exists()
        else 'spec_version = 1\nname = "x"\n'
    )
    files["text"].write_text("hello\n")
    files["empty"].write_bytes(b"")
    return files


def _user_errors(folder: Path) -> list[list[str]]:
    f = {k: str(v) for k, v in _bad_files(folder).items()}
    missing = str(folder / "missing.npz")
    return [
        ["check", "--steps", "0"],
        ["check", "--cell", "nope"],
        ["check", "--backend", "fortran"],
        ["compare", "--lengths", "-3"],
        ["compare", "--steps", "0"],
        ["compare", "--seeds", "-1"],
        ["compare", "--units", "x"],
        ["compare", "--tasks", "chess"],
        ["compare", "--cells", "lstm", f["garbage"], "--steps", "1"],
        ["compare", "--cells", "lstm", "no_such_cell", "--steps", "1"],
        ["bench", "--repeats", "0"],
        ["bench", "--shapes", "huge"],
        ["bench", "--dtype", "int4"],
        ["verify-port", "torch", "abacus"],
        ["verify-port", "numpy", "reference", "--steps", "0"],
        ["show", "nope"],
        ["show", f["garbage"]],
        ["show", f["npz"]],
        ["show", f["text"]],
        ["show", str(folder)],
        ["generate", f["npy"]],
        ["generate", "lstm", "--backend", "cobol"],
        ["generate", "lstm", "-o", str(folder / "no-such-folder" / "cell.py")],
        ["conformance", "lstm", "--callable", "nocolon"],
        ["conformance", "lstm", "--callable", "no_such_module_xyz:run"],
        ["conformance", "lstm", "--callable", "os:no_such_function"],
        ["conformance", "lstm", "--callable", "broken_port:run"],
        ["conformance", "lstm", "--callable", "crashing_port:run"],
        ["conformance", "lstm", "--callable", ":run"],
        ["conformance", "lstm", "--dtype", "int8", "--callable", "os:getcwd"],
        ["conformance", "lstm", "--results", f["garbage"]],
        ["conformance", "lstm", "--results", f["npy"]],
        ["conformance", "lstm", "--results", f["toml"]],
        ["conformance", "lstm", "--results", missing],
        ["conformance", f["garbage"], "--export", str(folder / "out")],
        ["conformance", "lstm"],
        ["convert", f["garbage"], "-o", str(folder / "o.safetensors"), "--from", "torch", "--to", "canonical"],
        ["convert", f["toml"], "-o", str(folder / "o.safetensors"), "--from", "canonical", "--to", "torch"],
        ["convert", f["empty"], "-o", str(folder / "o.safetensors"), "--from", "canonical", "--to", "torch"],
        ["convert", f["npz"], "-o", str(folder / "o.safetensors"), "--from", "torch", "--to", "canonical"],
        ["convert", f["text"], "-o", str(folder / "o.safetensors"), "--from", "mystery", "--to", "canonical"],
        ["convert", missing, "-o", str(folder / "o.safetensors"), "--from", "torch", "--to", "canonical"],
        ["nosuchcommand"],
        [],
    ]


def test_user_errors_are_one_line_and_exit_2(implementations, capsys):
    for argv in _user_errors(implementations):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        command = argv[0] if argv and argv[0] in COMMANDS else ""
        line = _one_error_line(captured.err, command) if command else captured.err.strip()
        assert "error:" in line and "Traceback" not in captured.err, argv


def test_check_names_a_backend_whose_framework_is_missing(capsys):
    from novolstm.selfcheck import installed_backends

    missing = [b for b in novolstm.list_backends() if b not in installed_backends()]
    if not missing:
        pytest.skip("every backend's framework is installed in this environment")
    assert main(["check", "--backend", missing[0], "--cell", "lstm"]) == 2
    line = _one_error_line(capsys.readouterr().err, "check")
    assert f"backend {missing[0]!r} needs its framework" in line and "pip install" in line
    from novolstm.bench import ADAPTERS

    for backend in (b for b in missing if b in ADAPTERS):
        assert main(["bench", "--smoke", "--backends", backend]) == 2
        assert f"backend {backend!r} needs its framework" in _one_error_line(capsys.readouterr().err, "bench")


def test_no_traceback_from_the_installed_command(implementations):
    # Through a real process: the exit code the shell sees, and nothing but one line on stderr.
    cases = [
        ["check", "--steps", "0"],
        ["compare", "--lengths", "-3"],
        ["show", str(_bad_files(implementations)["garbage"])],
        ["conformance", "lstm", "--callable", "no_such_module_xyz:run"],
        ["conformance", "lstm", "--results", str(implementations / "array.npy")],
    ]
    env = {**os.environ, "PYTHONPATH": ""}
    for argv in cases:
        done = subprocess.run(
            [sys.executable, "-m", "novolstm", *argv], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 2, (argv, done.stderr)
        _one_error_line(done.stderr, argv[0])
    script = Path(sys.executable).with_name("novolstm")  # the console script pip installed beside python
    if script.exists():
        done = subprocess.run(
            [str(script), "verify-port", "numpy", "reference", "--steps", "-1"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 2
        _one_error_line(done.stderr, "verify-port")
    wrong = subprocess.run(
        [sys.executable, "-m", "novolstm", "conformance", "lstm", "--callable", "wrong_port:run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert wrong.returncode == 1 and "DOES NOT CONFORM" in wrong.stdout and "Traceback" not in wrong.stderr


@given(st.binary(max_size=2048))
def test_random_bytes_as_any_input_file_are_user_errors(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input"
        path.write_bytes(data)
        for argv in (
            ["show", str(path)],
            ["conformance", "gru", "--results", str(path)],
            [
                "convert",
                str(path),
                "-o",
                str(Path(folder) / "o.safetensors"),
                "--from",
                "canonical",
                "--to",
                "torch",
                "--spec",
                "gru",
            ],
        ):
            with _captured_stderr() as err:
                code = main(argv)
            assert code == 2, (argv, err.getvalue())
            _one_error_line(err.getvalue(), argv[0])


class _captured_stderr:
    """Hypothesis runs many examples in one test: capture stderr per call without capsys."""

    def __enter__(self):
        import io

        self._saved, sys.stderr = sys.stderr, io.StringIO()
        return sys.stderr

    def __exit__(self, *exc):
        sys.stderr = self._saved
        return False
