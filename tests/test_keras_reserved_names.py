"""Every public attribute of a Keras Layer and of the generated Keras classes is a name a
spec may not use (novolstm.reserved), so that list cannot go stale."""

from __future__ import annotations

import keras
import pytest

import novolstm
from novolstm.reserved import unreserved


def test_keras_layer_attributes_are_reserved():
    assert unreserved(dir(keras.layers.Layer())) == []


@pytest.mark.parametrize("cell", novolstm.list_specs())
def test_generated_keras_class_attributes_are_reserved(cell):
    spec = novolstm.load_spec(cell)
    built = novolstm.get_cell("keras", cell)(2)
    built.build((None, 3))
    layer = novolstm.get_layer("keras", cell)(2)
    assert unreserved(dir(built), spec) == []
    assert unreserved(dir(layer), spec) == []


def test_a_parameter_named_like_a_keras_layer_attribute_is_refused():
    text = novolstm.load_spec("lstm").dumps().replace("b_o", "weights")
    with pytest.raises(novolstm.SpecError, match="params: 'weights' is reserved .*keras.layers.Layer"):
        novolstm.loads_spec(text)
