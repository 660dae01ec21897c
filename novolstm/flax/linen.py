"""Flax linen cells of the built-in specs, by the specs' class names (the nnx cells are in ``novolstm.flax``).

``NovoLSTMCell(features)``, ``LSTMCell``, ``GRUCell``, ... behave as ``flax.linen.LSTMCell``
does under ``nn.RNN``: ``initialize_carry(rng, input_shape)``, ``num_feature_axes``, and a
carry that is the state tuple in the spec's state order (``(h, c)`` for the LSTMs, where
Flax's own cell uses ``(c, h)``). Importing this module imports flax.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from novolstm.flax.linen import GRUCell
    >>> layer = nn.RNN(GRUCell(4))
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
    >>> layer.apply(variables, jnp.ones((2, 5, 3))).shape
    (2, 5, 4)
"""

import flax.linen  # noqa: F401 - importing novolstm.flax.linen imports flax, as documented

from novolstm.generated import builtin_classes, public_class

_CLASSES = builtin_classes("jax", ("LinenCell",))
__all__ = sorted(_CLASSES)


def __getattr__(name):
    return public_class("jax", _CLASSES, name, globals())


def __dir__():
    return sorted(set(globals()) | set(__all__))
