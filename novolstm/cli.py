"""The novolstm command line.

Every subcommand has its own help with examples: novolstm COMMAND --help.
Exit codes: 0 the command succeeded; 1 a check ran and failed (check,
conformance, verify-port); 2 a user error (a bad argument, a spec that does not
load, a file of the wrong kind), printed as one line on standard error.

Examples:
    >>> main(["list"])  # doctest: +ELLIPSIS
    cifg_lstm ...
    slstm ...
    0
    >>> main(["check", "--steps", "0"])  # the one-line error goes to standard error
    2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path
from typing import Any

from . import __version__
from .errors import SpecError

EXIT_CODES = """exit codes:
  0  the command succeeded
  1  a check ran and failed (check, conformance, verify-port)
  2  a user error: a bad argument, a spec that does not load, a file of the wrong kind"""

#: exceptions that mean the input was wrong, not that novolstm is: one line, exit 2
USER_ERRORS = (SpecError, ValueError, ImportError, OSError, zipfile.BadZipFile)


class UsageError(Exception):
    """A user error the command itself found (a bad MODULE:FUNCTION, an unknown dtype)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and where help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive = _int_at_least(1)
non_negative = _int_at_least(0)


def _command(sub, name: str, help: str, description: str, examples: str) -> _Parser:
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()) + "\n\n" + EXIT_CODES
    return sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, 79),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, with help, choices and examples (imports no framework)."""
    from .api import list_backends
    from .bench import ADAPTERS, DTYPES, SHAPES
    from .convert.files import FORMATS, TORCH_LAYOUTS
    from .convert.flax import LAYOUTS
    from .convert.native import NATIVES
    from .evaluation import TASKS
    from .spec_loader import list_specs
    from .testing import TOLERANCES

    specs, backends = list_specs(), list_backends()
    spec_help = f"a built-in cell ({', '.join(specs)}) or the path of a .toml spec"
    parser = _Parser(
        prog="novolstm",
        description=textwrap.fill(
            "Recurrent cells written once as a declarative spec, generated for NumPy, "
            "PyTorch, Keras 3, JAX and ONNX, and checked against a float64 reference.",
            79,
        ),
        epilog="examples:\n  novolstm list\n  novolstm check\n  novolstm generate novolstm --backend torch -o cell.py\n"
        "  novolstm COMMAND --help\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"novolstm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    lst = _command(
        sub,
        "list",
        "list the built-in cells",
        "List the built-in cells and what each one is.",
        "novolstm list\nnovolstm list --json",
    )
    lst.add_argument(
        "--json", action="store_true", help="print JSON (name, description, state, output) instead of text"
    )

    show = _command(
        sub,
        "show",
        "show a spec's equations and parameters",
        "Print a spec's equations, state update and parameter table.",
        "novolstm show novolstm\nnovolstm show my_cell.toml",
    )
    show.add_argument("spec", metavar="SPEC", help=spec_help)

    gen = _command(
        sub,
        "generate",
        "print or write the generated source of a spec",
        "Print the standalone source novolstm generates for a spec and a backend.",
        "novolstm generate lstm\nnovolstm generate novolstm --backend torch -o novolstm_torch.py",
    )
    gen.add_argument("spec", metavar="SPEC", help=spec_help)
    gen.add_argument(
        "--backend", "-b", default="numpy", choices=backends, help="the backend to generate for (default: numpy)"
    )
    gen.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of standard output")

    chk = _command(
        sub,
        "check",
        "compare every cell on every installed backend with the float64 reference",
        "Run every built-in cell on every installed backend, in float64 and float32, and compare "
        "outputs and final state with the float64 reference. Progress goes to standard error, "
        "the table to standard output.",
        "novolstm check\nnovolstm check --cell lstm --backend numpy --backend torch\nnovolstm check --json > check.json",
    )
    chk.add_argument(
        "--cell", action="append", choices=specs, help="only this cell (repeatable; default: every built-in cell)"
    )
    chk.add_argument(
        "--backend",
        action="append",
        choices=backends,
        help="only this backend (repeatable; default: every installed one)",
    )
    chk.add_argument("--steps", type=positive, default=16, help="sequence length of the check (default: 16)")
    chk.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")

    conf = _command(
        sub,
        "conformance",
        "check an implementation of a spec against it",
        "Check an implementation of a spec on the golden vectors (or stress cases for a spec of "
        "your own), with the first divergence and a diagnosis of known mistakes.",
        "novolstm conformance lstm --callable my_port:run\n"
        "novolstm conformance novolstm --results theirs.npz --dtype float32\n"
        "novolstm conformance gru --export golden/",
    )
    conf.add_argument("spec", metavar="SPEC", help=spec_help)
    how = conf.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--callable",
        metavar="MODULE:FUNCTION",
        help="an importable function taking (params, x, state, mask) and returning (outputs, final_state)",
    )
    how.add_argument(
        "--results",
        metavar="FILE.npz",
        help="an .npz of <case>.outputs and <case>.state.<name> computed on the golden vectors",
    )
    how.add_argument("--export", metavar="DIR", help="write the golden vectors (inputs and expected results) to DIR")
    conf.add_argument(
        "--dtype",
        default="float64",
        choices=sorted(TOLERANCES),
        help="the dtype the implementation computes in; sets the tolerance (default: float64)",
    )
    conf.add_argument("--json", action="store_true", help="print the report as JSON instead of text")

    cmp = _command(
        sub,
        "compare",
        "train cells on the same tasks and budget over seeds; table and plot",
        "Train cells with the same data, initial draws, optimizer and budget over several seeds, "
        "and write results.md, results.json and curves.png.",
        "novolstm compare --cells lstm novolstm --tasks adding --steps 100\n"
        "novolstm compare --backend torch --seeds 0 1 2 3 4 --out my-results",
    )
    cmp.add_argument(
        "--cells",
        nargs="+",
        default=["lstm", "novolstm", "novolstm_reference", "gru"],
        metavar="SPEC",
        help=f"the cells to train: built-in names ({', '.join(specs)}) or spec paths",
    )
    cmp.add_argument(
        "--tasks",
        nargs="+",
        default=["adding", "copy", "digits"],
        choices=sorted(TASKS),
        help="the tasks (default: adding copy digits)",
    )
    cmp.add_argument(
        "--lengths",
        nargs="+",
        type=positive,
        default=[20, 50],
        help="sequence lengths of adding and copy (default: 20 50)",
    )
    cmp.add_argument("--seeds", nargs="+", type=non_negative, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    cmp.add_argument("--steps", type=positive, default=300, help="training steps (batch 32) per run (default: 300)")
    cmp.add_argument("--units", type=positive, default=32, help="units of every cell (default: 32)")
    cmp.add_argument(
        "--backend",
        default="numpy",
        choices=["numpy", "torch", "jax", "keras"],
        help="the backend that trains (any backend with gradients; default: numpy)",
    )
    cmp.add_argument(
        "--out", default="compare-results", metavar="DIR", help="folder for results.md, results.json, curves.png"
    )

    bench = _command(
        sub,
        "bench",
        "benchmark generated cells against native LSTMs, side by side",
        "Time the generated cells against each framework's own LSTM in one run, interleaved, "
        "and report ratios. The paths table puts each cell's paths side by side (its generated "
        "loop, its compiled or fused kernels, its jitted forms) with the native kernel, each as "
        "a multiple of the loop and of the native, with compile times. "
        "Writes results.json, results.md and ratios.png.",
        "novolstm bench --smoke\nnovolstm bench --backends torch --shapes typical --dtype float32 bfloat16\n"
        "novolstm bench --backends numpy --json",
    )
    bench.add_argument(
        "--backends",
        nargs="+",
        choices=sorted(ADAPTERS),
        metavar="BACKEND",
        help=f"one or more of {', '.join(sorted(ADAPTERS))} (default: every one installed here)",
    )
    bench.add_argument(
        "--shapes",
        nargs="+",
        default=["typical"],
        choices=list(SHAPES),
        metavar="SHAPE",
        help="one or more of "
        + ", ".join(f"{k} ({'x'.join(map(str, v))})" for k, v in SHAPES.items())
        + " as batch x steps x units (default: typical)",
    )
    bench.add_argument("--repeats", type=positive, default=7, help="interleaved repeats per candidate (default: 7)")
    bench.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=list(DTYPES),
        help="one or more; a backend without a dtype says so and skips it (default: float32)",
    )
    bench.add_argument(
        "--smoke", action="store_true", help="tiny shapes, one repeat: checks the harness, measures nothing"
    )
    bench.add_argument(
        "--out", default="bench-results", metavar="DIR", help="folder for results.json, results.md, ratios.png"
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of the markdown table")

    formats = sorted(FORMATS)
    cnv = _command(
        sub,
        "convert",
        "convert weights between framework layouts through the canonical one",
        "Convert a weight file between canonical, torch, ONNX, Keras and Flax layouts.",
        "novolstm convert lstm.safetensors -o lstm.weights.h5 --from torch --to keras --spec lstm\n"
        "novolstm convert cell.msgpack -o cell.safetensors --from flax --to canonical --spec gru",
    )
    cnv.add_argument("source", metavar="SOURCE", help="the weight file to read")
    cnv.add_argument("-o", "--output", required=True, metavar="FILE", help="the weight file to write")
    cnv.add_argument("--from", dest="src_format", required=True, choices=formats, help="the format of SOURCE")
    cnv.add_argument("--to", dest="dst_format", required=True, choices=formats, help="the format to write")
    cnv.add_argument("--spec", default="lstm", choices=specs, help="the cell the weights are for (default: lstm)")
    cnv.add_argument(
        "--from-layout",
        choices=sorted(LAYOUTS) + list(TORCH_LAYOUTS),
        help="flax: the source cell's layout (default: detected from the file); torch: bias or no_bias, checked",
    )
    cnv.add_argument(
        "--lossy",
        action="store_true",
        help="drop parameters the target layout cannot hold (peepholes into torch, Keras or Flax), with a warning naming them; refused otherwise",
    )
    cnv.add_argument(
        "--layout",
        choices=sorted(LAYOUTS) + list(TORCH_LAYOUTS),
        help="flax: the written cell's layout; torch: bias (default) or no_bias, for a module built with bias=False",
    )
    cnv.add_argument(
        "--prefix",
        metavar="PREFIX",
        help="torch: the recurrent layer's keys in a whole model's state dict, e.g. 'encoder.rnn.'",
    )

    natives = sorted(NATIVES)
    ver = _command(
        sub,
        "verify-port",
        "port weights from framework A to B and compare both layers, step by step",
        "Port weights from framework SOURCE's native layer to TARGET's through the converters, run "
        "both on the same input, and compare them step by step and with the float64 reference.",
        "novolstm verify-port torch keras\nnovolstm verify-port flax torch --spec gru --steps 128\n"
        "novolstm verify-port torch onnx --weights lstm.safetensors --format torch --json",
    )
    ver.add_argument(
        "source", metavar="SOURCE", choices=natives, help=f"the framework ported from: {', '.join(natives)}"
    )
    ver.add_argument("target", metavar="TARGET", choices=natives, help="the framework ported to (same choices)")
    ported_cells = sorted({cell for native in NATIVES.values() for cell in native.cells})
    ver.add_argument("--spec", default="lstm", choices=ported_cells, help="the cell (default: lstm)")
    ver.add_argument("--steps", type=positive, default=64, help="sequence length compared (default: 64)")
    ver.add_argument("--seed", type=non_negative, default=0, help="seed of the probe weights and inputs (default: 0)")
    ver.add_argument("--weights", metavar="FILE", help="a real weight file instead of probe weights (needs --format)")
    ver.add_argument("--format", choices=formats, help="the format of --weights")
    ver.add_argument("--layout", choices=sorted(LAYOUTS), help="flax: the layout of --weights (default: detected)")
    ver.add_argument(
        "--ported",
        metavar="FILE",
        help="a file in the target's format, ported from --weights by another tool: check it",
    )
    ver.add_argument(
        "--prefix", metavar="PREFIX", help="torch --weights: the recurrent layer's keys in a whole model's state dict"
    )
    ver.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    return parser


def main(argv=None) -> int:
    """Run the command line on ``argv`` (default: sys.argv[1:]); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"\nnovolstm {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, *USER_ERRORS) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"novolstm {args.command}: error: {message}", file=sys.stderr)
        return 2


def _print_json(value) -> None:
    print(json.dumps(_jsonable(value), indent=1))


def _jsonable(value):
    """Plain JSON values: arrays as lists, dataclasses as dicts, non-finite floats as "nan"/"inf"/"-inf"."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _write_atomically(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _list(args) -> int:
    from .spec_loader import list_specs, load_spec

    specs = [load_spec(name) for name in list_specs()]
    if args.json:
        _print_json(
            [
                {"name": s.name, "description": s.description, "state": list(s.state_names), "output": s.output}
                for s in specs
            ]
        )
        return 0
    for spec in specs:
        print(f"{spec.name:<20} {spec.description.split(':')[0]}")
    return 0


def _show(args) -> int:
    from .expr import format_expression
    from .spec_loader import load_spec

    spec = load_spec(args.spec)
    print(f"{spec.name} (spec_version {spec.spec_version}, sha256 {spec.hash[:16]})")
    print(spec.description, "\n")
    print(f"input {spec.input}; state ({', '.join(spec.state_names)}); output {spec.output}\n")
    width = max(len(n) for n, _ in spec.equations)
    for name, expr in spec.equations:
        print(f"  {name:<{width}} = {format_expression(expr)}")
    for state, nxt in spec.state:
        print(f"  {state + chr(39):<{width}} = {nxt}")
    print("\n  parameter   shape               init")
    for p in spec.params:
        init = p.init.name + (f"({', '.join(f'{k}={v}' for k, v in p.init.args)})" if p.init.args else "")
        print(f"  {p.name:<11} ({', '.join(p.shape)}){'':<{18 - len(', '.join(p.shape)) - 2}} {init}")
    if spec.numerics.layer_norm_epsilon is not None:
        print(
            f"\n  layer_norm: epsilon {spec.numerics.layer_norm_epsilon}, {spec.numerics.layer_norm_variance} variance"
        )
    return 0


def _generate(args) -> int:
    from .api import generate_source

    source = generate_source(args.spec, args.backend)
    if args.output:
        _write_atomically(Path(args.output), source)
    else:
        sys.stdout.write(source)
    return 0


def _check(args) -> int:
    from .progress import progress_bar
    from .selfcheck import check, format_table, installed_backends
    from .spec_loader import list_specs

    installed = installed_backends()
    missing = [b for b in args.backend or [] if b not in installed]
    if missing:
        raise UsageError(
            f"backend {missing[0]!r} needs its framework, which is not installed here "
            f"(pip install '.[{missing[0] if missing[0] != 'keras' else 'tensorflow'}]'); installed: {', '.join(installed)}"
        )
    backends = args.backend or installed
    cells, dtypes = args.cell or list_specs(), ("float64", "float32")
    show = progress_bar("novolstm check", len(cells) * len(backends) * len(dtypes))
    show(0)
    rows = []
    for row in check(cells=cells, backends=backends, dtypes=dtypes, steps=args.steps):
        rows.append(row)
        show(len(rows), f"{row.cell} on {row.backend} ({row.dtype})")
    failed = [r for r in rows if not r.ok]
    if args.json:
        _print_json({"backends": backends, "passed": not failed, "rows": [{**_jsonable(r), "ok": r.ok} for r in rows]})
    else:
        print(f"backends: {', '.join(backends)}")
        print(format_table(rows))
        print(f"\n{len(rows) - len(failed)} of {len(rows)} within tolerance")
    return 1 if failed else 0


def _load_callable(text: str):
    import importlib

    module_name, colon, function = text.partition(":")
    if not colon or not module_name or not function:
        raise UsageError(f"--callable expects MODULE:FUNCTION (for example my_port:run), got {text!r}")
    sys.path.insert(0, os.getcwd())  # as python -m does: a module next to the user is found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--callable: cannot import module {module_name!r}: {exc}") from None
    except SyntaxError as exc:
        raise UsageError(f"--callable: module {module_name!r} is not valid Python: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed at import: their error, said in one line
        raise UsageError(f"--callable: importing module {module_name!r} raised {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(os.getcwd())
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UsageError(f"--callable: module {module_name!r} has no function {function!r}")
    return fn


def _read_npz(path: str) -> dict:
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise UsageError(f"--results: {path} is not an .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"--results: {path} holds a single array, expected an .npz archive of named arrays")
    with data:
        return {k: data[k] for k in data.files}


def _conformance(args) -> int:
    import numpy as np

    from . import conformance
    from .spec_loader import load_spec

    spec = load_spec(args.spec)
    if args.export:
        folder = Path(args.export)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {}
        meta: dict[str, Any] = {
            "spec": spec.name,
            "spec_hash": spec.hash,
            "state_names": list(spec.state_names),
            "cases": {},
        }
        for g in conformance.golden_cases(spec):
            meta["cases"][g.name] = {"description": g.description}
            arrays.update({f"{g.name}.x": g.case.x, f"{g.name}.mask": g.case.mask, f"{g.name}.outputs": g.outputs})
            arrays.update({f"{g.name}.param.{k}": v for k, v in g.case.params.items()})
            for name, s0, s1 in zip(spec.state_names, g.case.state or (), g.state):
                arrays.update({f"{g.name}.state0.{name}": s0, f"{g.name}.state.{name}": s1})
        np.savez_compressed(folder / f"{spec.name}.npz", **arrays)
        (folder / f"{spec.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {folder / (spec.name + '.npz')} and {spec.name}.json")
        return 0
    if args.callable:
        report = conformance.check(_load_callable(args.callable), spec, dtype=args.dtype)
    else:
        report = conformance.check_results(spec, _read_npz(args.results), dtype=args.dtype)
    if args.json:
        _print_json({**_jsonable(report), "passed": report.passed})
    else:
        print(report.format())
    return 0 if report.passed else 1


def _compare(args) -> int:
    from dataclasses import asdict

    from .api import load_generated
    from .evaluation import compare, plot_curves, results_table

    for cell in args.cells:  # up front: a bad spec or a missing framework, before any training
        load_generated(cell, args.backend)
    results = compare(args.cells, args.tasks, args.seeds, args.backend, args.steps, args.lengths, args.units)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(results)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results]) + "\n")
    try:
        plot_curves(results, out / "curves.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'novolstm[eval]')", file=sys.stderr)
    print(table)
    print(f"\nwrote {out}/results.md, results.json" + (", curves.png" if (out / "curves.png").exists() else ""))
    return 0


def _bench(args) -> int:
    from .bench import available_backends
    from .bench.harness import codegen_seconds, import_seconds, run, write

    installed = available_backends()
    missing = [b for b in args.backends or [] if b not in installed]
    if missing:
        raise UsageError(
            f"backend {missing[0]!r} needs its framework, which is not installed here; installed: {', '.join(installed)}"
        )
    backends = args.backends or installed
    shapes, repeats = (["smoke"], 1) if args.smoke else (args.shapes, args.repeats)
    results = run(backends, shapes, repeats, args.dtype)
    extras = {"import novolstm (s)": f"{import_seconds():.3f}"}
    extras |= {
        f"get_cell code generation, {b} (s)": f"{codegen_seconds(b):.4f}" for b in dict.fromkeys(["numpy", *backends])
    }
    write(results, extras, args.out)
    if args.json:
        _print_json({**results, "extras": extras})
    else:
        print((Path(args.out) / "results.md").read_text())
    return 0


def _convert(args) -> int:
    from .convert.files import convert

    layers = convert(
        args.source,
        args.output,
        args.src_format,
        args.dst_format,
        args.spec,
        args.from_layout,
        args.layout,
        args.lossy,
        prefix=args.prefix,
    )
    shapes = {k: v["W_" + next(n[2:] for n in v if n.startswith("W_"))].shape for k, v in layers.items()}
    print(f"{args.source} ({args.src_format}) -> {args.output} ({args.dst_format}): spec {args.spec}, cells {shapes}")
    return 0


def _verify_port(args) -> int:
    from .convert.verify import verify_port

    report = verify_port(
        args.source,
        args.target,
        args.spec,
        steps=args.steps,
        seed=args.seed,
        weights=args.weights,
        weights_format=args.format,
        layout=args.layout,
        ported=args.ported,
        prefix=args.prefix,
    )
    if args.json:
        _print_json(report)
    else:
        print(report.format())
    return 0 if report.passed else 1


COMMANDS = {
    "verify-port": _verify_port,
    "bench": _bench,
    "convert": _convert,
    "compare": _compare,
    "list": _list,
    "show": _show,
    "generate": _generate,
    "check": _check,
    "conformance": _conformance,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
