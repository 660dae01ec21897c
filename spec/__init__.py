"""Built-in cell specs (TOML) and the JSON Schema of the spec format.

Read these files through ``importlib.resources.files("novolstm.spec")``, or through
``novolstm.load_spec`` and ``novolstm.list_specs``.
"""
