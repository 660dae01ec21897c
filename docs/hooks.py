"""mkdocs hooks: pages generated from the spec files at build time, so docs and specs cannot drift.

- reference/specs.md: every built-in cell's equations and parameter table, and the JSON Schema.
- generated/<cell>.md: the source each backend's emitter generates for that cell.
"""

from __future__ import annotations

import json
from importlib import resources

from mkdocs.structure.files import File

import novolstm
from novolstm.expr import format_expression


def _spec_page() -> str:
    lines = ["# Spec reference", "", "Generated at build time from the files in `spec/`.", ""]
    for name in novolstm.list_specs():
        spec = novolstm.load_spec(name)
        lines += [f"## `{name}`", "", spec.description, "", f"State `({', '.join(spec.state_names)})`, "
                  f"output `{spec.output}`, spec hash `{spec.hash[:16]}`.", "", "```text"]
        width = max(len(n) for n, _ in spec.equations)
        lines += [f"{n:<{width}} = {format_expression(e)}" for n, e in spec.equations]
        lines += [f"{s + chr(39):<{width}} = {nxt}" for s, nxt in spec.state]
        lines += ["```", "", "| parameter | shape | initializer |", "|---|---|---|"]
        for p in spec.params:
            init = p.init.name + (f"({', '.join(f'{k}={v:g}' for k, v in p.init.args)})" if p.init.args else "")
            lines.append(f"| `{p.name}` | ({', '.join(p.shape)}) | {init} |")
        if spec.numerics.layer_norm_epsilon is not None:
            lines += ["", f"LayerNorm epsilon `{spec.numerics.layer_norm_epsilon:g}`, {spec.numerics.layer_norm_variance} variance."]
        lines.append("")
    schema = resources.files("novolstm.spec").joinpath("spec.schema.json").read_text()
    lines += ["## The JSON Schema", "", "```json", json.dumps(json.loads(schema), indent=2), "```", ""]
    return "\n".join(lines)


def _generated_pages() -> dict[str, str]:
    pages = {}
    index = ["# Generated code", "", "What `novolstm generate SPEC --backend B` prints, produced at build time.", ""]
    for name in novolstm.list_specs():
        body = [f"# `{name}`", ""]
        for backend in novolstm.list_backends():
            body += [f"## {backend}", "", "```python", novolstm.generate_source(name, backend).rstrip(), "```", ""]
        pages[f"generated/{name}.md"] = "\n".join(body)
        index.append(f"- [{name}]({name}.md)")
    pages["generated/index.md"] = "\n".join(index) + "\n"
    return pages


def on_files(files, config):
    pages = {"reference/specs.md": _spec_page(), **_generated_pages()}
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files
