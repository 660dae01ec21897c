"""mkdocs hooks: pages generated from the spec files at build time, so docs and specs cannot drift.

- reference/specs.md: every built-in cell's equations and parameter table, and the JSON Schema.
- reference/cli.md: every command's --help.
- generated/<cell>.md: the source each backend's emitter generates for that cell.
- api/backends.md, api/<backend>.md: the API of each backend's generated classes (Cell, Layer, ...), rendered by
  mkdocstrings from the module novolstm generates for the built-in ``novolstm`` spec. The modules
  are written to API_MODULES, which mkdocs.yml puts on mkdocstrings' search path.

This file is excluded from the site (mkdocs.yml exclude_docs).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from mkdocs.structure.files import File

import novolstm
from novolstm.expr import format_expression

#: where the generated modules are written for mkdocstrings (git-ignored; mkdocs.yml: paths)
API_MODULES = Path(__file__).resolve().parent.parent / ".mkdocs-api"

#: the spec whose generated modules document every backend's API (all specs generate the same API)
API_SPEC = "novolstm"

#: backend -> (what the page says it is, the generated objects it documents)
API_PAGES = {
    "numpy": ("A trainable NumPy cell: one step, whole sequences, and their gradients.",
              ["Cell", "forward", "backward", "init_params"]),
    "torch": ("`nn.Module` classes with `nn.LSTMCell`'s and `nn.LSTM`'s conventions.",
              ["Cell", "Layer", "sequence", "init_params"]),
    "keras": ("A Keras 3 cell for `keras.layers.RNN` and a sequence layer, in `keras.ops` only.",
              ["Cell", "Layer", "init_params"]),
    "jax": ("Pure functions over `jax.lax.scan`, bundled in a `Cell`; the Flax modules are described on "
            "[the JAX backend](../jax.md) page.", ["Cell", "step", "sequence", "bidirectional", "init_params", "init_from_key"]),
    "onnx": ("An ONNX model builder: the input projection in the main graph, one `Scan` over time.",
             ["build_model", "init_params"]),
}

# Generated docstrings may cite other objects as Sphinx roles; the site shows them as code.
# (The templates in backends/ should say Examples: and drop the roles; until then, _for_the_site.)
_ROLE = re.compile(r"(?::py)?:(?:class|func|meth|data|attr|mod|exc|obj):`~?([^`]+)`")


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


def _api_module(backend: str) -> str:
    return f"novolstm_{backend}"


def _for_the_site(source: str) -> str:
    """Generated source as the API pages render it: Sphinx roles as code, and ``Example:``
    headers as the ``Examples:`` section griffe renders as code (else ``>>>`` reads as quotes)."""
    source = _ROLE.sub(lambda m: f"``{m.group(1)}``", source)
    return re.sub(r"^(\s*)Example:$", r"\1Examples:", source, flags=re.M)


def _write_api_modules() -> None:
    API_MODULES.mkdir(exist_ok=True)
    for backend in API_PAGES:
        source = _for_the_site(novolstm.generate_source(API_SPEC, backend))
        path = API_MODULES / f"{_api_module(backend)}.py"
        if not path.exists() or path.read_text() != source:
            path.write_text(source)


def _api_pages() -> dict[str, str]:
    pages = {}
    index = ["# Generated classes, per backend", "",
             f"Every spec generates the same API for a backend; these pages show it for the built-in `{API_SPEC}` "
             "spec, rendered from the module novolstm generates (`novolstm generate novolstm --backend B`).", ""]
    for backend, (what, members) in API_PAGES.items():
        body = [f"# {backend}: the generated API", "", what, "",
                f"Rendered from the module generated for the `{API_SPEC}` spec; for any spec, "
                f"`novolstm.get_cell(\"{backend}\", spec)`" + (f" and `novolstm.get_layer(\"{backend}\", spec)`" if "Layer" in members else "")
                + f" return the same classes, and `novolstm.load_generated(spec, \"{backend}\")` the whole module. "
                f"[Its source](../generated/{API_SPEC}.md#{backend}).", ""]
        for member in members:
            # Generated signatures carry no annotations (the types are in each Args: line), and a few
            # generated Args: lines name several parameters at once ("units, seed:"): no warnings here.
            body += [f"::: {_api_module(backend)}.{member}", "    options:", "      show_root_heading: true",
                     "      show_root_full_path: false", "      filters: [\"!^_\"]",
                     "      docstring_options: {warn_missing_types: false, warn_unknown_params: false, warnings: false}", ""]
        pages[f"api/{backend}.md"] = "\n".join(body)
        index.append(f"- [{backend}]({backend}.md): {what}")
    pages["api/backends.md"] = "\n".join(index) + "\n"
    return pages


def _cli_page() -> str:
    """Every command's --help, as the terminal shows it."""
    import argparse

    import os

    from novolstm.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same page on every machine
    parser = build_parser()
    lines = ["# Command line", "", "`novolstm COMMAND --help` prints each section below; generated at build time from the parser.", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        lines += [f"## {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


# Written when mkdocs loads this file, before mkdocstrings sets up its search path.
_write_api_modules()


def on_files(files, config):
    pages = {"reference/specs.md": _spec_page(), "reference/cli.md": _cli_page(), **_generated_pages(), **_api_pages()}
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files
