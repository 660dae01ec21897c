"""Built-in cell specs (TOML) and the JSON Schema of the spec format.

Read these files through ``importlib.resources.files("novolstm.spec")``, or through
:func:`novolstm.load_spec` and :func:`novolstm.list_specs`.
"""
