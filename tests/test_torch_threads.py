"""Eight threads asking for the same torch cell and layer at once get one class each."""

from __future__ import annotations

import uuid

import torch

import novolstm
from novolstm.testing import concurrent_calls


def test_eight_threads_get_one_torch_cell_and_layer():
    # A spec no other test asked for (its description differs), so no cache holds it yet.
    spec = novolstm.loads_spec(
        novolstm.load_spec("lstm").dumps().replace('description = "', f'description = "threads {uuid.uuid4().hex}: ', 1)
    )
    cells = concurrent_calls(lambda: novolstm.get_cell("torch", spec))
    layers = concurrent_calls(lambda: novolstm.get_layer("torch", spec))
    assert all(c is cells[0] for c in cells) and all(layer is layers[0] for layer in layers)
    assert issubclass(cells[0], torch.nn.Module)
    assert layers[0].__module__ == cells[0].__module__
