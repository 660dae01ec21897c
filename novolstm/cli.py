"""The ``novolstm`` command line.

    novolstm list                         the built-in cells
    novolstm show SPEC                    equations and parameter table
    novolstm generate SPEC --backend B    the generated source (``-o FILE`` to write it)
    novolstm check                        every cell on every installed backend vs the reference
"""

from __future__ import annotations

import argparse
import sys

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
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, ValueError, ImportError) as exc:
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


COMMANDS = {"list": _list, "show": _show, "generate": _generate, "check": _check}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
