"""Indentation-aware source templates.

A line holding only ``$name`` is replaced by the lines of ``values[name]`` (a list of
lines or a multi-line string), each indented like the placeholder; ``$name`` inside
a line is replaced by ``str(values[name])``. A placeholder without a value is an error.

Examples:
    >>> print(fill("def f(a):\\n    $body\\n    return $result", body=["b = a + 1", "c = b * 2"], result="c"))
    def f(a):
        b = a + 1
        c = b * 2
        return c
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def fill(template: str, **values) -> str:
    out: list[str] = []
    for line in template.split("\n"):
        stripped = line.strip()
        if stripped.startswith("$") and _PLACEHOLDER.fullmatch(stripped):
            indent = line[: len(line) - len(line.lstrip())]
            body = _value(values, stripped[1:])
            lines = body.split("\n") if isinstance(body, str) else list(body)
            out.extend(indent + piece if piece else "" for piece in lines)
        else:
            out.append(_PLACEHOLDER.sub(lambda m: str(_value(values, m.group(1))), line))
    return "\n".join(out)


def _value(values: dict, key: str):
    if key not in values:
        raise KeyError(f"template placeholder ${key} has no value")
    return values[key]
