"""Exceptions raised by novolstm."""

from __future__ import annotations


class SpecError(ValueError):
    """A cell spec is malformed: the message names the file, the key and what was expected.

    Examples:
        >>> from novolstm.spec_loader import parse_spec
        >>> parse_spec({"spec_version": 1}, source="demo.toml")
        Traceback (most recent call last):
        ...
        novolstm.errors.SpecError: demo.toml: missing key 'name' (expected a cell name such as "lstm")
    """

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"{source}: {message}")
