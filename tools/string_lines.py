"""Count the lines of Python files that lie inside string literals.

A line counts when a string literal of more than one line (a template, a docstring, a
triple-quoted f-string) spans it: source kept as text inside strings is what no linter, type
checker or editor sees. A string on one line of code (an error message) does not count. The backends keep
at most a fifth of their lines in templates (tests/test_backends_layout.py).

Usage: python tools/string_lines.py [FILE_OR_FOLDER ...]   (default: backends)
"""

from __future__ import annotations

import io
import sys
import tokenize
from pathlib import Path


def string_lines(source: str) -> tuple[int, int, int]:
    r'''(lines, lines inside string literals, of those inside docstrings) of ``source``.

    >>> string_lines('"""Doc.\n"""\nT = """\na\nb\n"""\nx = f"{T}"\n')
    (7, 6, 2)
    '''
    inside: set[int] = set()
    docs: set[int] = set()
    previous = tokenize.NEWLINE
    fstring_start: list[int] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tok.type
        if kind == getattr(tokenize, "FSTRING_START", -1):
            fstring_start.append(tok.start[0])
            continue
        if kind == getattr(tokenize, "FSTRING_END", -1):
            start = fstring_start.pop()
            if tok.end[0] > start:
                inside.update(range(start, tok.end[0] + 1))
        elif kind == tokenize.STRING and not fstring_start and tok.end[0] > tok.start[0]:
            rows = range(tok.start[0], tok.end[0] + 1)
            inside.update(rows)
            # A string that is a statement of its own (after a newline or an indent) is a docstring.
            if previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL):
                docs.update(rows)
        if kind not in (tokenize.COMMENT,):
            previous = kind
    return len(source.splitlines()), len(inside), len(docs)


def files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


def main(argv: list[str]) -> int:
    total = [0, 0, 0]
    print(f"{'file':40} {'lines':>6} {'in strings':>10} {'docstrings':>10}")
    for path in files(argv or ["backends"]):
        counts = string_lines(path.read_text(encoding="utf-8"))
        total = [a + b for a, b in zip(total, counts)]
        print(f"{str(path):40} {counts[0]:6} {counts[1]:10} {counts[2]:10}")
    print(f"{'total':40} {total[0]:6} {total[1]:10} {total[2]:10}")
    print(f"fraction of lines inside string literals: {total[1] / max(total[0], 1):.3f}")
    print(f"  of which templates (not docstrings): {(total[1] - total[2]) / max(total[0], 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
