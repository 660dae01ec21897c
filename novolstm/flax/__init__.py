"""Flax nnx cells of the built-in specs, by the specs' class names; the linen cells are in ``novolstm.flax.linen``.

``NovoLSTMCell(in_features, hidden_features, rngs=...)``, ``LSTMCell``, ``GRUCell``, ... behave
as ``flax.nnx.LSTMCell`` does under ``nnx.RNN``: ``initialize_carry``, ``num_feature_axes``,
and a carry that is the state tuple in the spec's state order (``(h, c)`` for the LSTMs,
where Flax's own LSTMCell uses ``(c, h)``). Parameters are ``nnx.Param`` under canonical
names, so ``nnx.state(cell)`` saves with ``flax.serialization`` (msgpack) or Orbax and
restores into the same class. Importing this module imports flax.

Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from novolstm.flax import NovoLSTMCell
    >>> nnx.RNN(NovoLSTMCell(3, 4, rngs=nnx.Rngs(0)))(jnp.ones((2, 5, 3))).shape
    (2, 5, 4)
"""

import flax.nnx  # noqa: F401 - importing novolstm.flax imports flax, as documented

from novolstm.generated import builtin_classes, public_class

_CLASSES = builtin_classes("jax", ("NNXCell",))
__all__ = sorted(_CLASSES)


def __getattr__(name):
    return public_class("jax", _CLASSES, name, globals())


def __dir__():
    return sorted(set(globals()) | set(__all__))
