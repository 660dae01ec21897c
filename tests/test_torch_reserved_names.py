"""Every public attribute of torch's nn.Module and of the generated torch classes is a name
a spec may not use (novolstm.reserved), so that list cannot go stale."""

from __future__ import annotations

import pytest
import torch

import novolstm
from novolstm.reserved import unreserved


def test_nn_module_attributes_are_reserved():
    assert unreserved(dir(torch.nn.Module())) == []


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_generated_torch_class_attributes_are_reserved(cell):
    spec = novolstm.load_spec(cell)
    cell_module, layer = novolstm.get_cell("torch", cell)(3, 2), novolstm.get_layer("torch", cell)(3, 2)
    assert unreserved(dir(cell_module), spec) == []
    assert unreserved(dir(layer), spec) == []


def test_a_parameter_named_like_an_nn_module_attribute_is_refused():
    text = novolstm.load_spec("lstm").dumps().replace("b_o", "training")
    with pytest.raises(novolstm.SpecError, match="params: 'training' is reserved .*torch.nn.Module"):
        novolstm.loads_spec(text)
