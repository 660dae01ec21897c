"""The ``novolstm`` command line.

    novolstm list                         the built-in cells
    novolstm show SPEC                    equations and parameter table
    novolstm generate SPEC --backend B    the generated source (``-o FILE`` to write it)
    novolstm check                        every cell on every installed backend vs the reference
    novolstm bench                        speed against native LSTMs, ratios side by side
    novolstm compare                      train cells on the same tasks; learning curves and a table
    novolstm verify-port A B              port weights between two frameworks' layers and compare them
    novolstm conformance SPEC ...         check an implementation: --callable MODULE:FUNCTION,
                                          --results FILE.npz, or --export DIR for the golden inputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SpecError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="novolstm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the built-in cells")
    show = sub.add_parser("show", help="show a spec's equations and parameters")
    show.add_argument("spec", help="a built-in name or a path to a .toml spec")
    gen = sub.add_parser("generate", help="print or write the generated source of a spec")
    gen.add_argument("spec")
    gen.add_argument("--backend", "-b", default="numpy")
    gen.add_argument("-o", "--output", help="write to this file instead of standard output")
    chk = sub.add_parser("check", help="compare every cell on every installed backend with the reference")
    chk.add_argument("--cell", action="append", help="only this cell (repeatable)")
    chk.add_argument("--backend", action="append", help="only this backend (repeatable)")
    conf = sub.add_parser("conformance", help="check an implementation of a spec against it")
    conf.add_argument("spec")
    how = conf.add_mutually_exclusive_group(required=True)
    how.add_argument("--callable", help="MODULE:FUNCTION taking (params, x, state, mask), returning (outputs, final_state)")
    how.add_argument("--results", help="an .npz of <case>.outputs and <case>.state.<name> computed on the golden vectors")
    how.add_argument("--export", metavar="DIR", help="write the golden vectors (inputs and expected results) to DIR")
    conf.add_argument("--dtype", default="float64", help="the dtype the implementation computes in (sets the tolerance)")
    cmp = sub.add_parser("compare", help="train cells on the same tasks and budget over seeds; table and plot")
    cmp.add_argument("--cells", nargs="+", default=["lstm", "novolstm", "novolstm_reference", "gru"], help="built-in names or spec paths")
    cmp.add_argument("--tasks", nargs="+", default=["adding", "copy", "digits"])
    cmp.add_argument("--lengths", nargs="+", type=int, default=[20, 50], help="sequence lengths of adding and copy")
    cmp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    cmp.add_argument("--steps", type=int, default=300, help="training steps (batch 32) per run")
    cmp.add_argument("--units", type=int, default=32)
    cmp.add_argument("--backend", default="numpy", help="numpy, torch, jax or keras (any backend with gradients)")
    cmp.add_argument("--out", default="compare-results", help="folder for results.md, results.json, curves.png")
    bench = sub.add_parser("bench", help="benchmark generated cells against native LSTMs, side by side")
    bench.add_argument("--backends", nargs="+", help="default: every backend installed here")
    bench.add_argument("--shapes", nargs="+", default=["typical"], help="smoke, latency, typical, throughput")
    bench.add_argument("--repeats", type=int, default=7)
    bench.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                       help="one or more; a backend without a dtype says so and skips it")
    bench.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat: checks the harness, measures nothing")
    bench.add_argument("--out", default="bench-results", help="folder for results.json, results.md, ratios.png")
    cnv = sub.add_parser("convert", help="convert weights between framework layouts through the canonical one")
    cnv.add_argument("source")
    cnv.add_argument("-o", "--output", required=True)
    cnv.add_argument("--from", dest="src_format", required=True, help="canonical, torch, onnx, keras, flax")
    cnv.add_argument("--to", dest="dst_format", required=True)
    cnv.add_argument("--spec", default="lstm", help="the cell the weights are for (lstm, gru, ...)")
    cnv.add_argument("--from-layout", help="flax: the source cell's layout (default: detected from the file)")
    cnv.add_argument("--lossy", action="store_true", help="drop parameters the target layout cannot hold (peepholes into torch, Keras or Flax), with a warning naming them; refused otherwise")
    cnv.add_argument("--layout", help="flax: the written cell's layout (linen_lstm, nnx_lstm, nnx_optimized_lstm, linen_gru, nnx_gru); "
                     "torch: bias (default) or no_bias, for a module built with bias=False")
    cnv.add_argument("--prefix", help="torch: the recurrent layer's keys in a whole model's state dict, e.g. 'encoder.rnn.'")
    ver = sub.add_parser("verify-port", help="port weights from framework A to B and compare both layers, step by step")
    ver.add_argument("source", help="torch, keras, flax, flax-lstmcell, onnx, numpy, reference")
    ver.add_argument("target")
    ver.add_argument("--spec", default="lstm", help="lstm or gru")
    ver.add_argument("--steps", type=int, default=64)
    ver.add_argument("--seed", type=int, default=0)
    ver.add_argument("--weights", help="a real weight file instead of probe weights (needs --format)")
    ver.add_argument("--format", help="the format of --weights: canonical, torch, onnx, keras, flax")
    ver.add_argument("--layout", help="flax: the layout of --weights (default: detected)")
    ver.add_argument("--ported", help="a file in the target's format, ported from --weights by another tool: check it")
    ver.add_argument("--prefix", help="torch --weights: the recurrent layer's keys in a whole model's state dict, e.g. 'encoder.rnn.'")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, ValueError, ImportError, OSError) as exc:
        print(f"novolstm {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _list(args) -> int:
    from .spec_loader import list_specs, load_spec

    for name in list_specs():
        print(f"{name:<20} {load_spec(name).description.split(':')[0]}")
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
        print(f"\n  layer_norm: epsilon {spec.numerics.layer_norm_epsilon}, {spec.numerics.layer_norm_variance} variance")
    return 0


def _generate(args) -> int:
    from .api import generate_source

    source = generate_source(args.spec, args.backend)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(source)
    else:
        sys.stdout.write(source)
    return 0


def _check(args) -> int:
    from .check import check, format_table, installed_backends

    backends = args.backend or installed_backends()
    print(f"backends: {', '.join(backends)}")
    rows = []
    for row in check(cells=args.cell, backends=backends):
        rows.append(row)
        print(f"  {row.cell} on {row.backend} ({row.dtype}): max |dev| {row.max_deviation:.2e}", file=sys.stderr)
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} within tolerance")
    return 1 if failed else 0


def _conformance(args) -> int:
    import importlib
    import json
    from pathlib import Path

    import numpy as np

    from . import conformance
    from .spec_loader import load_spec

    spec = load_spec(args.spec)
    if args.export:
        folder = Path(args.export)
        folder.mkdir(parents=True, exist_ok=True)
        arrays, meta = {}, {"spec": spec.name, "spec_hash": spec.hash, "state_names": list(spec.state_names), "cases": {}}
        for g in conformance.golden_cases(spec):
            meta["cases"][g.name] = {"description": g.description}
            arrays.update({f"{g.name}.x": g.case.x, f"{g.name}.mask": g.case.mask, f"{g.name}.outputs": g.outputs})
            arrays.update({f"{g.name}.param.{k}": v for k, v in g.case.params.items()})
            for name, s0, s1 in zip(spec.state_names, g.case.state, g.state):
                arrays.update({f"{g.name}.state0.{name}": s0, f"{g.name}.state.{name}": s1})
        np.savez_compressed(folder / f"{spec.name}.npz", **arrays)
        (folder / f"{spec.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {folder / (spec.name + '.npz')} and {spec.name}.json")
        return 0
    if args.callable:
        module_name, _, function = args.callable.partition(":")
        fn = getattr(importlib.import_module(module_name), function)
        report = conformance.check(fn, spec, dtype=args.dtype)
    else:
        with np.load(args.results, allow_pickle=False) as data:
            report = conformance.check_results(spec, {k: data[k] for k in data.files}, dtype=args.dtype)
    print(report.format())
    return 0 if report.passed else 1


def _compare(args) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from .evaluation import compare, plot_curves, results_table

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

    backends = args.backends or available_backends()
    shapes, repeats = (["smoke"], 1) if args.smoke else (args.shapes, args.repeats)
    results = run(backends, shapes, repeats, args.dtype)
    extras = {"import novolstm (s)": f"{import_seconds():.3f}"}
    extras |= {f"get_cell code generation, {b} (s)": f"{codegen_seconds(b):.4f}" for b in dict.fromkeys(["numpy", *backends])}
    write(results, extras, args.out)
    print((Path(args.out) / "results.md").read_text())
    return 0


def _convert(args) -> int:
    from .convert.files import convert

    layers = convert(args.source, args.output, args.src_format, args.dst_format, args.spec, args.from_layout, args.layout, args.lossy,
                     prefix=args.prefix)
    shapes = {k: v["W_" + next(n[2:] for n in v if n.startswith("W_"))].shape for k, v in layers.items()}
    print(f"{args.source} ({args.src_format}) -> {args.output} ({args.dst_format}): spec {args.spec}, cells {shapes}")
    return 0


def _verify_port(args) -> int:
    from .convert.verify import verify_port

    report = verify_port(args.source, args.target, args.spec, steps=args.steps, seed=args.seed, weights=args.weights,
                         weights_format=args.format, layout=args.layout, ported=args.ported, prefix=args.prefix)
    print(report.format())
    return 0 if report.passed else 1


COMMANDS = {"verify-port": _verify_port, "bench": _bench, "convert": _convert, "compare": _compare, "list": _list, "show": _show, "generate": _generate, "check": _check, "conformance": _conformance}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
