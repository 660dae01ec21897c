"""The torch backend: emit.py (the op table and generate) and runtime.py (the code every generated module inlines)."""
