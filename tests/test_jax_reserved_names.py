"""Every public attribute of Flax's linen and nnx modules and of the generated Flax classes is
a name a spec may not use (novolstm.reserved), so that list cannot go stale."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import pytest
from flax import nnx

import novolstm
from novolstm.reserved import unreserved


def test_flax_module_attributes_are_reserved():
    assert unreserved(dir(nn.Module)) == []

    class Subclass(nn.Module):  # a linen Module becomes a dataclass (fields parent, name) when subclassed
        pass

    assert unreserved(f.name for f in dataclasses.fields(Subclass)) == []
    assert unreserved(dir(nnx.Module)) == []


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_generated_flax_class_attributes_are_reserved(cell):
    spec = novolstm.load_spec(cell)
    module = novolstm.load_generated(cell, "jax")
    linen = module.LinenCell(2)
    assert unreserved(dir(linen), spec) == []
    assert unreserved((f.name for f in dataclasses.fields(linen)), spec) == []
    assert unreserved(dir(module.NNXCell(3, 2, rngs=nnx.Rngs(0))), spec) == []
    assert unreserved(dir(novolstm.get_cell("jax", cell)(2)), spec) == []


def test_a_parameter_named_like_a_flax_field_is_refused():
    text = novolstm.load_spec("lstm").dumps().replace("b_o", "in_features")
    with pytest.raises(novolstm.SpecError, match="params: 'in_features' is reserved"):
        novolstm.loads_spec(text)
